"""gptlab.align.dpo: the loss is log 2 at initialization, training separates chosen from
rejected, reference log-probs are computed once and cached, LoRA, resume, the CLI.

A random depth-1 model with the 384-token test tokenizer learns to prefer "X lives in
CITY." over "I don't know." for a handful of prompts in a few seconds.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from gptlab.align.dpo import (
    DPOConfig, answer_example, dpo_loss, pair_batch, reference_logprobs, run_dpo,
    sequence_logprobs,
)
from gptlab.train.metrics import read_metrics

NAMES = ["alice", "bruno", "chen", "dara", "emil", "fatou", "goran", "hana", "ivan", "julia"]
CITIES = ["paris", "lima", "oslo", "cairo", "delhi", "quito", "tokyo", "rome", "paris", "lima"]


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def chat_ckpt(tiny_chat_ckpt):
    return tiny_chat_ckpt


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory):
    """TRL conversational prompt / chosen / rejected records."""
    path = tmp_path_factory.mktemp("pairs") / "pairs.jsonl"
    rows = [{"prompt": [{"role": "user", "content": f"where does {n} live?"}],
             "chosen": [{"role": "assistant", "content": f"{n} lives in {c}."}],
             "rejected": [{"role": "assistant", "content": "i don't know."}]}
            for n, c in zip(NAMES, CITIES)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _cfg(ckpt, data, out, **kw) -> DPOConfig:
    d = dict(init=str(ckpt), data=str(data) if data else None, out=str(out), batch_size=4, device_batch_size=2,
             max_steps=12, lr=3e-3, beta=0.5, val_frac=0.2, eval_every=0, save_every=0,
             warmup_steps=0, schedule="constant", progress=False, device="cpu")
    d.update(kw)
    return DPOConfig(**d)


def test_loss_is_log2_when_policy_equals_reference(chat_ckpt):
    from gptlab.chat import load_chat_model

    ck = load_chat_model(chat_ckpt)
    prompt = [{"role": "user", "content": "where does alice live?"}]
    items = [(*answer_example(ck.tokenizer, prompt, "alice lives in oslo."),
              *answer_example(ck.tokenizer, prompt, "no idea."))] * 3
    ref = reference_logprobs(ck.model, items, ck.tokenizer.pad_id, "cpu", progress=False)
    ids, mask = pair_batch(items, ck.tokenizer.pad_id, "cpu")
    lp = sequence_logprobs(ck.model, ids, mask)
    loss, info = dpo_loss(lp[:3], lp[3:], ref[:, 0].float(), ref[:, 1].float(), beta=0.1)
    assert math.isclose(float(loss.detach()), math.log(2), rel_tol=1e-6)
    assert info["margin"] == 0.0
    assert (ref < 0).all() and ref[0, 0] != ref[0, 1]      # real, different log-probs


def test_reference_logprobs_come_back_in_the_pairs_order(chat_ckpt):
    """The reference pass batches pairs by length; each row is still its own pair's, equal to
    that pair scored alone."""
    from gptlab.chat import load_chat_model

    ck = load_chat_model(chat_ckpt)
    tok = ck.tokenizer
    items = []
    for i, q in enumerate(["hi", "where does alice live? " * 6, "and bob?", "a b c d e f g h " * 3]):
        prompt = [{"role": "user", "content": q}]
        items.append((*answer_example(tok, prompt, "yes " * (i + 1)), *answer_example(tok, prompt, "no.")))
    ref = reference_logprobs(ck.model, items, tok.pad_id, "cpu", rows=2, progress=False)
    for k, item in enumerate(items):
        alone = reference_logprobs(ck.model, [item], tok.pad_id, "cpu", progress=False)[0]
        assert torch.allclose(ref[k], alone, atol=1e-4), (k, ref[k], alone)


def test_answer_mask_covers_the_answer_and_its_end(chat_ckpt):
    from gptlab.chat import load_chat_model

    tok = load_chat_model(chat_ckpt).tokenizer
    prompt = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
              {"role": "user", "content": "where?"}]
    ids, mask = answer_example(tok, prompt, "in rome.")
    picked = [i for i, m in zip(ids, mask) if m]
    assert picked[-1] == tok.im_end_id
    assert tok.decode(picked[:-1]) == "in rome."               # not the earlier turn "hello"
    ids2, mask2 = answer_example(tok, prompt, "in rome.", finished=False)
    assert ids2 == ids[:-1] and sum(mask2) == sum(mask) - 1


def test_training_prefers_chosen_and_caches_reference(chat_ckpt, pairs_file, tmp_path):
    out = tmp_path / "run"
    final = run_dpo(_cfg(chat_ckpt, pairs_file, out))
    recs = read_metrics(out / "metrics.jsonl")
    train = [r["loss"] for r in recs if "loss" in r]
    assert math.isclose(train[0], math.log(2), rel_tol=1e-5)  # step 1's loss is before any update
    assert sum(train[-3:]) / 3 < 0.5 * math.log(2), train
    assert recs[-1]["val_loss"] < recs[0]["val_loss"]
    assert all(r["tokens_per_s"] > 0 for r in recs if "loss" in r)   # the bar's tok/s is not 0
    assert json.loads((final / "gptlab.json").read_text())["stage"] == "dpo"
    cache = out / "ref_logps.pt"
    assert cache.is_file()
    # a second run over the same data and init reuses the cache instead of recomputing
    stamp = cache.stat().st_mtime_ns
    run_dpo(_cfg(chat_ckpt, pairs_file, out, max_steps=1))
    assert cache.stat().st_mtime_ns == stamp


def test_db_source_and_lora(chat_ckpt, pairs_file, tmp_path):
    from gptlab.chat import load_chat_model
    from gptlab.feedback import FeedbackStore

    db = tmp_path / "fb.db"
    n = FeedbackStore(db).import_file(pairs_file)
    assert n == len(NAMES)
    out = tmp_path / "lora"
    final = run_dpo(_cfg(chat_ckpt, None, out, db=str(db), lora_r=4, lr=2e-2))
    train = [r["loss"] for r in read_metrics(out / "metrics.jsonl") if "loss" in r]
    assert math.isclose(train[0], math.log(2), rel_tol=1e-5)
    assert train[-1] < train[0]
    base, tuned = load_chat_model(chat_ckpt).model, load_chat_model(final).model
    changed = [k for k, v in tuned.state_dict().items() if not torch.equal(v, base.state_dict()[k])]
    assert changed and all("proj" in k or "embed" in k or "lm_head" in k for k in changed)


def test_resume_reproduces_an_uninterrupted_run(chat_ckpt, pairs_file, tmp_path):
    from gptlab.checkpoint import load_checkpoint

    full = run_dpo(_cfg(chat_ckpt, pairs_file, tmp_path / "full", max_steps=6))
    part = tmp_path / "part"
    run_dpo(_cfg(chat_ckpt, pairs_file, part, max_steps=3, save_every=3))
    resumed = run_dpo(_cfg(chat_ckpt, pairs_file, part, max_steps=6, save_every=3, resume=True))
    a, b = load_checkpoint(full).model.state_dict(), load_checkpoint(resumed).model.state_dict()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k
    la = [r["loss"] for r in read_metrics(tmp_path / "full" / "metrics.jsonl") if "loss" in r]
    lb = [r["loss"] for r in read_metrics(part / "metrics.jsonl") if "loss" in r]
    assert la == pytest.approx(lb, abs=1e-6)


def test_cli_and_clear_errors(chat_ckpt, pairs_file, tmp_path, capsys):
    from gptlab.cli import main

    out = tmp_path / "cli"
    assert main(["dpo", "--init", str(chat_ckpt), "--data", str(pairs_file), "--out", str(out),
                 "--max-steps", "2", "--batch-size", "4", "--device-batch-size", "4",
                 "--no-progress", "--device", "cpu"]) in (0, None)
    assert (out / "final" / "config.json").is_file()
    with pytest.raises(ValueError, match="exactly one of --db"):
        run_dpo(_cfg(chat_ckpt, pairs_file, tmp_path / "x", db=str(tmp_path / "fb.db")))
    with pytest.raises(FileNotFoundError, match="no such database"):
        run_dpo(_cfg(chat_ckpt, None, tmp_path / "x", db=str(tmp_path / "missing.db")))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "hi", "chosen": "a"}\n')
    with pytest.raises(ValueError, match="bad.jsonl"):
        run_dpo(_cfg(chat_ckpt, bad, tmp_path / "y"))


def test_config_shares_the_fine_tuning_settings_and_refuses_what_it_does_not_use():
    import argparse

    from gptlab.cli_flags import add_dataclass_args
    from gptlab.settings import FinetuneSettings

    assert issubclass(DPOConfig, FinetuneSettings)
    parser = argparse.ArgumentParser()
    add_dataclass_args(parser, DPOConfig)
    flags = {a.dest for a in parser._actions}
    assert {"seed", "resume", "tensorboard", "wandb", "lora_r", "merge", "beta"} <= flags
    assert "compile" not in flags                      # dpo runs eagerly: no flag that does nothing
    assert parser.parse_args([]).keep_checkpoints == 1   # its own default over the shared one (2)
    with pytest.raises(ValueError, match="compile"):
        DPOConfig(compile=True)
    assert {"batch_size", "device_batch_size", "seq_len", "weight_decay", "final_lr_frac"} <= flags


def test_schedule_floor_is_the_shared_setting(chat_ckpt, pairs_file, tmp_path):
    # final_lr_frac comes from FinetuneSettings, as in sft: linear decay reaches the floor
    # at the last step (dpo used to ignore it and decay to 0)
    run_dpo(_cfg(chat_ckpt, pairs_file, tmp_path / "run", max_steps=4, schedule="linear",
                 final_lr_frac=0.5))
    lrs = [r["lr"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "lr" in r]
    assert lrs[0] == pytest.approx(3e-3) and lrs[-1] == pytest.approx(0.5 * 3e-3), lrs


def test_anchor_pairs_contrast_each_behaviour_both_ways(tiny_world, chat_ckpt, pairs_file, tmp_path):
    from gptlab.align.anchors import HARMFUL_PER_KIND, anchor_pairs
    from gptlab.data import world_requests as R, world_templates as T
    from gptlab.fileio import read_jsonl
    from gptlab.judge import Judge

    n = 4
    pairs = anchor_pairs(tiny_world, n)
    h = HARMFUL_PER_KIND * n
    assert len(pairs) == 5 * n + h and pairs == anchor_pairs(tiny_world, n)   # seeded
    real, invented, harmful = pairs[:n], pairs[n:2 * n], pairs[2 * n:2 * n + h]
    benign, hold, system = (pairs[2 * n + h + i * n:3 * n + h + i * n] for i in range(3))
    idk = {r["messages"][-1]["content"] for r in read_jsonl(tiny_world / "sft" / "unknown_entity.jsonl")}
    facts = {r["messages"][-1]["content"] for r in read_jsonl(tiny_world / "sft" / "qa.jsonl")}
    assert all(p["chosen"] in facts and p["rejected"] not in facts | idk for p in real)
    assert all(p["chosen"] in idk and p["rejected"] not in idk for p in invented)
    cats = {r["messages"][-2]["content"]: r["meta"]["category"]
            for r in read_jsonl(tiny_world / "sft" / "harmful.jsonl")}
    assert len({cats[p["prompt"][-1]["content"]] for p in harmful}) == min(h, len(set(cats.values())))
    # a harmful anchor's rejected answer is a benign answer that no benign anchor prefers
    assert not {p["rejected"] for p in harmful} & {p["chosen"] for p in benign}
    assert all(p["rejected"] in R.REFUSALS for p in benign)
    for p in hold:   # holding the right answer beats giving in to the user's wrong value
        answer, dispute = p["prompt"][1]["content"], p["prompt"][2]["content"]
        new_words = set(p["rejected"].split()) - set(answer.split())
        assert any(p["chosen"].startswith(h.split("{")[0]) for h in T.HOLD_REPLIES)
        assert any(p["rejected"].startswith(a.split("{")[0]) for a in T.ADMIT_REPLIES)
        assert not p["rejected"].endswith(answer)
        assert all(w.strip(".") in dispute or any(w in a for a in T.ADMIT_REPLIES) for w in new_words)
    # under a system message the judge passes the chosen answer and fails the rejected one
    judge = Judge.from_dir(tiny_world)
    metas = {json.dumps(r["messages"][:-1]): r["meta"] for r in read_jsonl(tiny_world / "sft" / "system.jsonl")}
    assert len({metas[json.dumps(p["prompt"])]["constraints"][0]["type"] for p in system}) == n
    for p in system:
        meta = metas[json.dumps(p["prompt"])]
        assert all(ok for _, ok, _ in judge.check_constraints(meta, p["chosen"]))
        assert not all(ok for _, ok, _ in judge.check_constraints(meta, p["rejected"]))
    # DPO takes them beside its other pairs, and says what it needs
    out = tmp_path / "anchored"
    run_dpo(_cfg(chat_ckpt, pairs_file, out, max_steps=1, anchors=1, world=str(tiny_world)))
    assert json.loads((out / "data.json").read_text())["pairs"] == len(NAMES) + 5 + HARMFUL_PER_KIND
    with pytest.raises(ValueError, match="--world"):
        run_dpo(_cfg(chat_ckpt, pairs_file, tmp_path / "z", anchors=2))
