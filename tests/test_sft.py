"""gptlab.train.sft: data, token-weighted loss, learning, LoRA, exact resume, the CLI.

Tiny models (depth 2, the 384-token test tokenizer) and tiny data keep every test to a
few seconds: the model learns a memorizable set of conversations and answers one of them
greedily; LoRA leaves the base weights bitwise alone and its merge reproduces the adapter
model's logits; a run stopped mid-way and resumed reproduces the uninterrupted one.
"""

from __future__ import annotations

import json
import random

import pytest
import torch

from gptlab.chat import render_prompt, stop_token_ids
from gptlab.train.metrics import read_metrics
from gptlab.train.lora import apply_lora, plain_model
from gptlab.train.sft import SFTConfig, make_loss_fn, prepare_data, sft
from gptlab.train.sft_data import SFTBatches, load_chat_records, parse_mix

NAMES = ["alice", "bruno", "chen", "dara", "emil", "fatou", "goran", "hana", "ivan",
         "julia", "kenji", "lena", "mateo", "nadia", "omar", "priya"]
CITIES = ["paris", "lima", "oslo", "cairo", "delhi", "quito", "tokyo", "rome"]


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _conversations():
    """Each person's city is asked twice (with and without a system message), so a
    held-out conversation has a twin in the training set."""
    rng = random.Random(0)
    home = {name: rng.choice(CITIES) for name in NAMES}
    out = []
    for i in range(2 * len(NAMES)):
        name = NAMES[i % len(NAMES)]
        msgs = [{"role": "user", "content": f"where does {name} live?"},
                {"role": "assistant", "content": f"{name} lives in {home[name]}."}]
        if i >= len(NAMES):
            msgs.insert(0, {"role": "system", "content": "answer briefly."})
        out.append({"messages": msgs, "meta": {"kind": "qa"}})
    return out


@pytest.fixture(scope="module")
def chat_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("chat") / "chat.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in _conversations()))
    return path


@pytest.fixture(scope="module")
def base_ckpt(tiny_tokenizer, tmp_path_factory):
    """A random depth-2 model with the test tokenizer, 128-token context."""
    from gptlab.checkpoint import save_checkpoint
    from gptlab.model import GPT, preset
    from gptlab.tokenizer import Tokenizer

    tok = Tokenizer.load(tiny_tokenizer)
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("base") / "base"
    save_checkpoint(out, GPT(preset(2, tok.vocab_size, 128)), tok, meta={"stage": "pretrain"})
    return out


def _cfg(base, data, out, **kw) -> SFTConfig:
    d = dict(init=str(base), data=str(data), out=str(out), batch_size=8, device_batch_size=4,
             eval_every=0, save_every=0, progress=False, device="cpu", lr=3e-3, val_records=2)
    d.update(kw)
    return SFTConfig(**d)


def _weights(path):
    from safetensors.torch import load_file
    return load_file(str(path / "model.safetensors"))


# --------------------------------------------------------------------------- data


def test_load_chat_records_keeps_meta_and_reads_sharegpt(tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    (d / "a.jsonl").write_text(json.dumps({"messages": [
        {"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
        "meta": {"masked_turns": [1]}}) + "\n")
    (d / "b.jsonl").write_text(json.dumps({"conversations": [
        {"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]}) + "\n")
    recs = load_chat_records(str(d))
    assert recs[0]["meta"] == {"masked_turns": [1]}
    assert recs[1] == {"messages": [{"role": "user", "content": "hi"},
                                    {"role": "assistant", "content": "hello"}], "meta": {}}
    (d / "c.jsonl").write_text('{"messages": [{"role": "wizard", "content": "x"}]}\n')
    with pytest.raises(ValueError, match=r"c\.jsonl: line 1: field 'messages\[0\]\.role'"):
        load_chat_records(str(d))


def test_parse_mix():
    assert parse_mix("a/b:0.2, hf:org/x:train:0.1") == [("a/b", 0.2), ("hf:org/x:train", 0.1)]
    assert parse_mix(None) == []
    for bad in ("a/b", "a:1.5", "a:0.6,b:0.5", ":0.2"):
        with pytest.raises(ValueError):
            parse_mix(bad)


def test_step_loss_is_token_weighted_over_micro_batches_and_ranks(base_ckpt, chat_file,
                                                                 tiny_corpus, tmp_path):
    """The accumulated loss (and gradient) of a step equals one big batch's token-weighted
    mean, and W ranks x A micro-batches cover exactly what one process would."""
    from gptlab.checkpoint import load_checkpoint
    from gptlab.train.loop import lm_loss

    ck = load_checkpoint(base_ckpt)
    cfg = _cfg(base_ckpt, chat_file, tmp_path, mix=f"{tiny_corpus}:0.3", device_batch_size=2)
    data = prepare_data(cfg, ck.tokenizer, 128)
    assert data.mixes[0].kind == "text" and data.mixes[0].per_epoch == round(0.3 / 0.7 * 30)
    one = SFTBatches(data, 2, ck.tokenizer.pad_id, 128, seed=0, accum=4)
    ranks = [SFTBatches(data, 2, ck.tokenizer.pad_id, 128, seed=0, accum=2, rank=r, world_size=2)
             for r in range(2)]
    model, loss_fn = ck.model.train(), make_loss_fn()
    for _ in range(3):
        micro = [one.next_batch() for _ in range(4)]
        split = [[s.next_batch() for _ in range(2)] for s in ranks]
        assert {tuple(m[0].flatten().tolist()) for m in micro} == \
            {tuple(m[0].flatten().tolist()) for r in split for m in r}
        assert all(m[3] == micro[0][3] for r in split for m in r)  # same normalizer
        model.zero_grad()
        total = sum(loss_fn(model, m) / 4 for m in micro)
        total.backward()
        g_acc = model.lm_head.weight.grad.clone()
        # the same rows as one batch: mean over all target tokens
        rows_x = [row for m in micro for row in m[0]]
        rows_y = [row for m in micro for row in m[1]]
        T = max(r.shape[0] for r in rows_x)
        x = torch.stack([torch.nn.functional.pad(r, (0, T - r.shape[0])) for r in rows_x])
        y = torch.stack([torch.nn.functional.pad(r, (0, T - r.shape[0]), value=-100) for r in rows_y])
        model.zero_grad()
        big = lm_loss(model, (x, y))
        big.backward()
        assert float(total.detach()) == pytest.approx(float(big.detach()), rel=1e-5)
        assert torch.allclose(g_acc, model.lm_head.weight.grad, atol=1e-6)


# --------------------------------------------------------------------------- training


def test_sft_learns_and_answers_a_trained_question(base_ckpt, chat_file, tmp_path):
    from gptlab.checkpoint import load_checkpoint
    from gptlab.engine import Engine

    final = sft(_cfg(base_ckpt, chat_file, tmp_path / "run", max_steps=120, eval_every=40))
    metrics = read_metrics(tmp_path / "run" / "metrics.jsonl")
    val = [m["val_loss"] for m in metrics if "val_loss" in m]
    train = [m["loss"] for m in metrics if "loss" in m]
    assert val[-1] < 0.5 * val[0] and train[-1] < 0.05 * train[0]
    ck = load_checkpoint(final)
    assert ck.meta["stage"] == "sft" and ck.meta["parent"] == str(base_ckpt)
    assert ck.meta["data"]["train"]["kept"] == 30 and ck.meta["metrics"]["val_loss"] == val[-1]
    recs = _conversations()
    data = json.loads((tmp_path / "run" / "data.json").read_text())
    assert data["records"] == 32
    hits = 0
    engine = Engine(ck.model, ck.tokenizer)
    for rec in recs[::5]:
        prompt = render_prompt(ck.tokenizer, rec["messages"][:-1])
        out = engine.generate([prompt], max_new_tokens=16, stop_token_ids=stop_token_ids(ck.tokenizer))
        hits += ck.tokenizer.decode(out[0]) == rec["messages"][-1]["content"]
        assert engine.last_finish_reasons == ["stop"]  # it learned to end its turn
    assert hits >= len(recs[::5]) - 1


def test_lora_trains_only_adapters_and_merge_matches(base_ckpt, chat_file, tmp_path):
    from gptlab.chat import load_chat_model
    from gptlab.checkpoint import load_checkpoint

    cfg = _cfg(base_ckpt, chat_file, tmp_path / "lora", max_steps=6, lora_r=4, merge=False, lr=1e-2)
    final = sft(cfg)
    base_w, final_w = _weights(base_ckpt), _weights(final)
    assert base_w.keys() == final_w.keys()
    assert all(torch.equal(base_w[k], final_w[k]) for k in base_w)  # bitwise: base untouched
    assert (final / "adapter_config.json").is_file() and (final / "adapter_model.safetensors").is_file()
    # the adapter model (unmerged) and its merge give the same logits
    from peft import PeftModel
    peft_model = PeftModel.from_pretrained(load_checkpoint(final).model, str(final)).eval()
    merged = load_chat_model(final).model
    x = torch.randint(0, merged.config.vocab_size, (2, 24))
    with torch.no_grad():
        a, b, base = peft_model(x), merged(x), load_checkpoint(base_ckpt).model(x)
    assert torch.allclose(a, b, atol=1e-5) and not torch.allclose(a, base, atol=1e-3)
    # the step checkpoint holds the merged weights
    step = load_checkpoint(tmp_path / "lora" / "ckpt" / "step_000006").model
    with torch.no_grad():
        assert torch.allclose(step(x), a, atol=1e-5)


@pytest.mark.parametrize("token_ids", [None, [1, 2]])
def test_lora_gradients_reach_adapters_only(base_ckpt, token_ids):
    from gptlab.checkpoint import load_checkpoint
    from gptlab.train.loop import train_step
    from gptlab.train.optim import build_optimizer

    model = load_checkpoint(base_ckpt).model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pm = apply_lora(model, SFTConfig(lora_r=2), token_ids)
    opt = build_optimizer(pm, lr=1e-2)
    x = torch.randint(0, 300, (2, 16))
    x[:, 4], x[:, 9] = 1, 2  # the chat tokens occur
    for _ in range(3):
        train_step(pm, opt, [(x, x)], accum_steps=1)
    base = plain_model(pm, merged=False).state_dict()
    assert all(torch.equal(before[k], base[k]) for k in before)  # bitwise
    trained = {n: p for n, p in pm.named_parameters() if p.requires_grad}
    assert trained and all("lora_" in n or "trainable_tokens" in n for n in trained)
    assert any("trainable_tokens" in n for n in trained) == bool(token_ids)
    assert all(float(p.detach().abs().sum()) > 0 for n, p in trained.items() if "lora_A" not in n)
    merged = plain_model(pm, merged=True)
    with torch.no_grad():
        assert torch.allclose(pm(x), merged(x), atol=1e-5)
        if token_ids:  # only the chat tokens' embedding rows moved
            moved = (merged.model.embed_tokens.weight != before["model.embed_tokens.weight"]).any(1)
            assert moved.nonzero().flatten().tolist() == token_ids


@pytest.mark.parametrize("lora_r", [0, 4])
def test_resume_reproduces_the_uninterrupted_run(base_ckpt, chat_file, tiny_corpus, tmp_path,
                                                 monkeypatch, lora_r):
    from gptlab.train import checkpoints

    kw = dict(max_steps=6, save_every=2, eval_every=3, lora_r=lora_r, mix=f"{tiny_corpus}:0.2")
    full = sft(_cfg(base_ckpt, chat_file, tmp_path / "full", **kw))

    calls = {"n": 0}

    def stop_at_three(self):
        calls["n"] += 1
        return calls["n"] == 3

    monkeypatch.setattr(checkpoints.StopSignal, "should_stop", stop_at_three)
    with pytest.raises(SystemExit):
        sft(_cfg(base_ckpt, chat_file, tmp_path / "cut", **kw))
    monkeypatch.undo()
    assert (tmp_path / "cut" / "ckpt" / "step_000003").is_dir()
    resumed = sft(_cfg(base_ckpt, chat_file, tmp_path / "cut", resume=True, **kw))
    a, b = _weights(full), _weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    ma = read_metrics(tmp_path / "full" / "metrics.jsonl")
    mb = read_metrics(tmp_path / "cut" / "metrics.jsonl")
    assert [(m["step"], m.get("loss"), m.get("val_loss")) for m in ma] == \
        [(m["step"], m.get("loss"), m.get("val_loss")) for m in mb]
    with pytest.raises(ValueError, match="cannot resume"):
        sft(_cfg(base_ckpt, chat_file, tmp_path / "cut", resume=True, **{**kw, "seed": 5}))


def test_cli_sft_and_too_long_policy(base_ckpt, chat_file, tmp_path, capsys):
    from gptlab.cli import main

    long = {"messages": [{"role": "user", "content": "where does alice live?"},
                         {"role": "assistant", "content": "alice lives in paris. " * 40}]}
    data = tmp_path / "data.jsonl"
    data.write_text(chat_file.read_text() + json.dumps(long) + "\n")
    rc = main(["sft", "--init", str(base_ckpt), "--data", str(data), "--out", str(tmp_path / "o"),
               "--max-steps", "2", "--batch-size", "4", "--device-batch-size", "4",
               "--val-records", "0", "--no-progress", "--device", "cpu"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "1 longer than 129 tokens (1 dropped" in out and "final checkpoint" in out
    info = json.loads((tmp_path / "o" / "data.json").read_text())
    assert info["train"]["dropped_too_long"] == 1 and info["val"]["total"] == 0
    rc = main(["sft", "--init", str(base_ckpt), "--data", str(data), "--out", str(tmp_path / "o2"),
               "--max-steps", "1", "--batch-size", "4", "--device-batch-size", "4",
               "--too-long", "truncate", "--val-records", "0", "--no-progress", "--device", "cpu"])
    assert rc == 0
    assert json.loads((tmp_path / "o2" / "data.json").read_text())["train"]["truncated"] == 1
    assert main(["sft", "--init", str(base_ckpt), "--data", str(data), "--batch-size", "6",
                 "--device-batch-size", "4", "--out", str(tmp_path / "o3")]) == 2


def test_a_mix_file_trains_the_same_wherever_it_lies(base_ckpt, chat_file, tmp_path):
    """The --mix shuffle follows the seed and the part's place, not the path: the same chat
    file in another directory gives the same weights; another seed does not."""
    import shutil

    elsewhere = tmp_path / "copy" / "elsewhere.jsonl"
    elsewhere.parent.mkdir()
    shutil.copy(chat_file, elsewhere)
    kw = dict(max_steps=3, save_every=3, eval_every=3)
    a = _weights(sft(_cfg(base_ckpt, chat_file, tmp_path / "a", mix=f"{chat_file}:0.5", **kw)))
    b = _weights(sft(_cfg(base_ckpt, chat_file, tmp_path / "b", mix=f"{elsewhere}:0.5", **kw)))
    c = _weights(sft(_cfg(base_ckpt, chat_file, tmp_path / "c", mix=f"{elsewhere}:0.5", seed=7, **kw)))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
