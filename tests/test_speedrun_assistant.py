"""The assistant track (gptlab.speedrun_assistant) at its `test` preset, on a tiny chat model:
every stage writes its output, the two-track table shows rates with intervals, the final
choice sees the track; and the pieces that make SmolLM2 SFT affordable on a CPU
(training only the top blocks, bf16 autocast on CPU when asked for)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from gptlab.speedrun_assistant import (ASSISTANT_PRESETS, assistant_stages, track_dtype,
                                       tracks_table, wilson)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def long_chat_ckpt(tiny_tokenizer, tmp_path_factory):
    """conftest's tiny chat model with a context long enough for tool definitions."""
    from gptlab.checkpoint import save_checkpoint
    from gptlab.model import GPT, preset
    from gptlab.tokenizer import Tokenizer

    tok = Tokenizer.load(tiny_tokenizer)
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("chat_long") / "sft"
    save_checkpoint(out, GPT(preset(1, tok.vocab_size, 2048)), tok, meta={"stage": "sft"})
    return out


@pytest.fixture(scope="module")
def track(tiny_world, long_chat_ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("assistant_run")
    a = {**ASSISTANT_PRESETS["test"], "init": str(long_chat_ckpt)}
    names = []
    for name, done, run in assistant_stages(out, tiny_world, a, a["init"]):
        run()
        assert done.exists(), f"stage {name} did not write {done}"
        names.append(name)
    return out, names


def test_every_stage_writes_its_output(track):
    out, names = track
    assert names == ["assistant midtraining", "assistant SFT", "eval unchanged init", "eval assistant SFT",
                     "assistant feedback", "assistant DPO", "eval assistant DPO",
                     "eval assistant tools", "eval assistant chat with tools",
                     "eval unchanged init code", "eval assistant code", "assistant win rate"]
    data = json.loads((out / "assistant" / "sft" / "data.json").read_text())
    # the tools and code conversations were mixed into the SFT
    assert {Path(m["source"]).parent.name for m in data["mix"]} == {"tools", "code"}
    # midtraining read the world's corpus, and SFT started from what it wrote
    mid = json.loads((out / "assistant" / "mid" / "data.json").read_text())
    assert [Path(m["source"]).name for m in mid["mix"]] == ["corpus"] and mid["mix"][0]["kind"] == "text"
    sft_meta = json.loads((out / "assistant" / "sft" / "final" / "gptlab.json").read_text())
    assert Path(sft_meta["parent"]).resolve() == (out / "assistant" / "mid" / "final").resolve()
    for sub in ("sft", "dpo"):
        meta = json.loads((out / "assistant" / sub / "final" / "gptlab.json").read_text())
        assert meta["stage"] == sub
    wr = json.loads((out / "assistant" / "winrate.json").read_text())["DPO"]
    assert wr["wins"] + wr["ties"] + wr["losses"] == wr["n"] > 0
    decided = wr["wins"] + wr["losses"]
    assert wr["win_rate_no_ties"] == (wr["wins"] / decided if decided else None)


def test_tracks_table_has_intervals_and_the_baseline(track):
    out, _ = track
    table = tracks_table(out)
    header = table.splitlines()[0]
    assert "unchanged SmolLM2" in header and "assistant SFT" in header and "assistant DPO" in header
    assert "assistant DPO, tools offered" in header       # the chat_tools eval's column
    row = next(line for line in table.splitlines() if line.startswith("| harmful refusal |"))
    assert row.count("[") == 4 and "n=" in row and row.rstrip().endswith(">= 95% |")
    assert "DPO over its own SFT" in table
    tool_row = next(line for line in table.splitlines() if line.startswith("| tool choice"))
    assert ">= 90%" in tool_row and "n=" in tool_row
    assert "malformed tool calls (decoded under the server's call grammar)" in table   # the demo's default
    code_row = next(line for line in table.splitlines() if line.startswith("| pass@1 (greedy), easy"))
    assert code_row.count("n=") == 2 and code_row.rstrip().endswith(">= 50% |")   # baseline, DPO


def test_final_choice_sees_the_assistant_track(track):
    from gptlab.speedrun import best_model
    out, _ = track
    # only the assistant track's models are evaluated in this run directory
    assert best_model(out).parent.parent.name == "assistant"


def test_wilson_interval():
    lo, hi = wilson(0.0, 100)
    assert lo == 0.0 and 0.03 < hi < 0.04       # 0 of 100 still allows ~3.7%
    lo, hi = wilson(0.5, 100)
    assert 0.40 < lo < 0.41 and 0.59 < hi < 0.60
    assert wilson(0.9, 10)[1] < 1.0 and wilson(0.3, 0) == (0.0, 1.0)


def test_speedrun_refuses_an_assistant_track_without_a_model(tmp_path):
    from gptlab.speedrun import speedrun
    with pytest.raises(ValueError, match="needs a model to start from"):
        speedrun(tmp_path / "run", preset="test", scale="tiny", assistant="test")
    with pytest.raises(ValueError, match="unknown assistant preset"):
        speedrun(tmp_path / "run2", preset="test", scale="tiny", assistant="nope")


def test_train_layers_trains_only_the_top_blocks(tiny_chat_ckpt):
    from gptlab.model import GPT, preset
    from gptlab.train.lora import freeze_below

    torch.manual_seed(0)
    model = GPT(preset(3, 300, 32))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    freeze_below(model, 1)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    x = torch.randint(0, 300, (2, 16))
    model(x, targets=x).backward()
    opt.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all(n.startswith(("model.layers.2.", "model.norm.")) for n in changed)
    assert any(n.startswith("model.layers.2.") for n in changed)
    with pytest.raises(ValueError, match="> the model's 3 blocks"):
        freeze_below(model, 4)


def test_bf16_autocast_on_cpu_only_when_asked():
    from gptlab.train.dist import autocast_context, resolve_dtype

    cpu = torch.device("cpu")
    assert resolve_dtype("auto", cpu) == torch.float32          # the tests stay exact
    with autocast_context(cpu, resolve_dtype("auto", cpu)):
        assert not torch.is_autocast_enabled("cpu")
    with autocast_context(cpu, resolve_dtype("bfloat16", cpu)):
        assert torch.is_autocast_enabled("cpu")
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16


def test_loss_skips_the_head_on_ignored_rows_without_changing_it():
    """Only target rows go through the vocabulary head; loss and gradients are those of
    plain cross-entropy over the same rows."""
    from gptlab.model import GPT, preset

    torch.manual_seed(0)
    model = GPT(preset(1, 300, 32))
    x = torch.randint(0, 300, (2, 12))
    y = x.clone()
    y[:, :7] = -100
    loss = model(x, targets=y)
    loss.backward()
    got = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    logits = model(x)
    ref = torch.nn.functional.cross_entropy(logits.reshape(-1, 300), y.reshape(-1), ignore_index=-100)
    ref.backward()
    assert torch.allclose(loss, ref, atol=1e-5)
    for n, p in model.named_parameters():
        assert torch.allclose(got[n], p.grad, atol=1e-5), n


def test_track_dtype_is_bf16_only_where_the_cpu_multiplies_it_natively(capsys):
    """cpu-smol's "bf16-if-native": bf16 on an AVX512-BF16 or AMX CPU, float32 (said) on one
    that would emulate it; an explicit dtype is kept whatever the CPU."""
    ice_lake = "flags : fpu sse avx2 avx512f avx512bw avx512_vnni"
    assert track_dtype("bf16-if-native", ice_lake + " avx512_bf16") == "bfloat16"
    assert track_dtype("bf16-if-native", ice_lake + " amx_bf16 amx_tile") == "bfloat16"
    assert track_dtype("bf16-if-native", ice_lake) == "float32"
    assert "no native bf16" in capsys.readouterr().out
    assert track_dtype("bfloat16", ice_lake) == "bfloat16"
    assert ASSISTANT_PRESETS["cpu-smol"]["dtype"] == "bf16-if-native"
