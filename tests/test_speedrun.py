"""The speedrun end to end at `--preset test --scale tiny`: every stage writes its output,
the report has every section, and a second call skips every finished stage."""
from __future__ import annotations

import hashlib
import json
import time

import pytest

from gptlab.speedrun import HEADLINE, PRESETS, headline_table, speedrun

STAGES = ["miniworld data", "curate", "tokenizer", "pretrain", "SFT", "feedback", "reward model", "PPO",
          "DPO", "eval base", "eval SFT", "eval PPO", "eval DPO", "win rates", "moderation",
          "red team", "final", "report"]
REPORT_SECTIONS = ["# Report card", "## Wall time", "## Data curation", "## Checkpoints", "## Training", "## Evals",
                   "## Alignment", "## Red team", "## Commands"]
BASE_KEYS = ["fact_accuracy", "bpb"]
CHAT_KEYS = [k for k, _ in HEADLINE if k != "fact_accuracy"]


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("speedrun")
    t0 = time.time()
    timings = speedrun(out=out, preset="test", scale="tiny")
    return out, timings, time.time() - t0


def test_every_stage_writes_its_output(run):
    out, timings, _ = run
    assert (out / "world" / "manifest.json").is_file()
    assert (out / "tokenizer" / "tokenizer.json").is_file()
    for stage in ("pretrain", "sft"):
        final = out / stage / "final"
        for name in ("config.json", "model.safetensors", "tokenizer.json", "gptlab.json"):
            assert (final / name).is_file(), final / name
    assert json.loads((out / "sft" / "final" / "gptlab.json").read_text())["stage"] == "sft"
    for stage in ("ppo", "dpo", "final"):
        assert (out / stage / "final" / "model.safetensors").is_file() if stage != "final" \
            else (out / "final" / "model.safetensors").is_file()
    from gptlab.feedback import FeedbackStore
    counts = FeedbackStore(out / "feedback.db").counts()
    assert counts["rankings"] == 6 and counts["responses"] == 12      # 6 prompts x K=2
    assert (out / "rm" / "reward.json").is_file()
    wr = json.loads((out / "align" / "winrate.json").read_text())
    for method in ("PPO", "DPO", "best-of-2"):
        assert 0 <= wr[method]["win_rate"] <= 1 and wr[method]["n"] == wr["n_prompts"] > 0
    assert (out / "moderator" / "moderator.json").is_file()
    rt = json.loads((out / "redteam" / "redteam.json").read_text())
    assert 0 <= rt["model"]["asr"]["rate"] <= 1 and "model+guard" in rt
    chosen = json.loads((out / "final" / "speedrun_choice.json").read_text())["chosen"]
    assert chosen in ("sft/final", "ppo/final", "dpo/final")
    assert list(timings) == STAGES
    assert json.loads((out / "timings.json").read_text()) == timings
    assert all(isinstance(v, (int, float)) and v >= 0 for v in timings.values())


def test_evals_have_the_headline_metrics(run):
    out, _, _ = run
    base = json.loads((out / "pretrain" / "final" / "eval.json").read_text())
    chat = json.loads((out / "sft" / "final" / "eval.json").read_text())
    assert base["model_kind"] == "base" and chat["model_kind"] == "chat"
    for key in BASE_KEYS:
        assert key in base["metrics"], key
    for key in CHAT_KEYS:
        assert key in chat["metrics"], key
    table = headline_table(out)
    for _, label in HEADLINE:
        assert f"| {label} |" in table


def test_report_has_every_section(run):
    out, _, _ = run
    text = (out / "REPORT.md").read_text()
    for heading in REPORT_SECTIONS:
        assert heading in text, heading
    # the wall-time table lists the stages that ran before the report
    for stage in STAGES[:-1]:
        assert f"| {stage} |" in text, stage


def test_second_call_skips_finished_stages(run, capsys):
    out, first, _ = run
    weights = [out / s / "final" / "model.safetensors" for s in ("pretrain", "sft", "ppo", "dpo")]
    evals = [out / s / "final" / "eval.json" for s in ("pretrain", "sft", "ppo", "dpo")]
    before = {p: (p.stat().st_mtime_ns, _sha(p)) for p in weights + evals}
    t0 = time.time()
    again = speedrun(out=out, preset="test", scale="tiny")
    elapsed = time.time() - t0
    log = capsys.readouterr().out
    for i, stage in enumerate(STAGES[:-1], 1):
        assert f"[{i}/{len(STAGES)}] {stage}: done already" in log, stage
    assert {p: (p.stat().st_mtime_ns, _sha(p)) for p in weights + evals} == before
    # skipped stages keep their first timings; only the (cheap) report reruns
    assert {k: again[k] for k in STAGES[:-1]} == {k: first[k] for k in STAGES[:-1]}
    assert elapsed < 30 and (out / "REPORT.md").is_file()


def test_presets_name_every_key_the_stages_read():
    required = {"vocab_size", "depth", "seq_len", "pretrain_steps", "device_batch_size",
                "total_batch_tokens", "sft_epochs", "sft_mix", "eval_limit", "val_docs"}
    for name, p in PRESETS.items():
        assert required <= set(p), (name, required - set(p))


def test_refuses_to_resume_a_run_made_with_another_preset(run):
    out, _, _ = run
    with pytest.raises(ValueError, match="other speedrun settings"):
        speedrun(out=out, preset="test", scale="small")


def test_refuses_a_run_directory_of_unknown_settings(tmp_path):
    (tmp_path / "tokenizer").mkdir()   # left by a speedrun that predates speedrun.json
    with pytest.raises(ValueError, match="without speedrun.json"):
        speedrun(out=tmp_path, preset="test", scale="tiny")


# ---- GPU presets, torchrun launch and hub fallback (CPU-checkable parts) ----------------

def test_config_argv_round_trips_through_the_cli():
    from gptlab.cli import build_parser, dataclass_from_args
    from gptlab.speedrun import config_argv
    from gptlab.train.pretrain import PretrainConfig
    cfg = PretrainConfig(data="hf:org/x:train", out="runs/x", depth=12, max_steps=7, lr=3e-4,
                         compile=True, progress=False, dtype="bfloat16", data_tokens=1000)
    args = build_parser().parse_args(["pretrain", *config_argv(cfg)])
    assert dataclass_from_args(PretrainConfig, args) == cfg


def test_offline_hub_falls_back_to_miniworld(monkeypatch, capsys, tmp_path):
    from gptlab.speedrun import PRESETS, data_sources, hub_reachable
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub_reachable() is False
    src = data_sources(PRESETS["gpu-small"], tmp_path / "world")
    assert src["pretrain"] == str(tmp_path / "world" / "corpus") and src["sft"] == str(tmp_path / "world")
    assert "falling back to the embedded miniworld" in capsys.readouterr().out


def test_gpu_presets_use_bf16_and_compile():
    for name in ("gpu-small", "gpu-d20"):
        p = PRESETS[name]
        assert p["dtype"] == "bfloat16" and p["compile"] is True and p["hub_data"] is True


def test_unknown_preset_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="unknown preset"):
        speedrun(out=tmp_path, preset="gpu-huge")


def test_training_stage_under_torchrun(tmp_path, tiny_corpus):
    """The launcher the GPU presets use, on 2 CPU processes (gloo): both ranks train and
    rank 0 writes the final checkpoint."""
    from gptlab.speedrun import run_distributed
    from gptlab.train.pretrain import PretrainConfig
    cfg = PretrainConfig(data=str(tiny_corpus), vocab_size=300, out=str(tmp_path / "pre"), depth=1,
                         seq_len=32, max_steps=2, device_batch_size=2, total_batch_tokens=128,
                         val_docs=2, eval_every=0, progress=False)
    run_distributed("pretrain", cfg, nproc=2)
    assert (tmp_path / "pre" / "final" / "model.safetensors").is_file()
    import torch
    states = sorted((tmp_path / "pre" / "ckpt").glob("*/train_state.pt"))
    assert states, "no step checkpoint"
    assert torch.load(states[-1], weights_only=False)["world_size"] == 2


def test_feedback_stage_imports_a_preference_data_set(run, tmp_path):
    """GPU presets add a preference data set (UltraFeedback by hub id) to the simulated
    feedback; the same code path on a local `hf:` data dir."""
    from gptlab.feedback import FeedbackStore
    from gptlab.speedrun import ALIGN_PRESETS, _align_stages
    out, _, _ = run
    data = tmp_path / "prefs"
    data.mkdir()
    (data / "train.jsonl").write_text("".join(json.dumps(
        {"prompt": f"q{i}?", "chosen": f"a{i}.", "rejected": "no."}) + "\n" for i in range(4)))
    p = {**PRESETS["test"], "align": {**ALIGN_PRESETS["test"], "hub_prefs": 3}}
    stage = _align_stages(tmp_path / "run", p, out / "world", out / "sft" / "final",
                          prefs=f"hf:{data}:train")[0]
    assert stage.name == "feedback"
    stage.run()
    stats = json.loads(stage.output.read_text())
    assert stats["imported_pairs"] == 3
    counts = FeedbackStore(tmp_path / "run" / "feedback.db").counts()
    assert counts["comparisons"] == 3 and counts["rankings"] == 6
