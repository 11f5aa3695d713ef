"""gptlab.report: REPORT.md from a synthetic run directory (metrics.jsonl, gptlab.json,
eval.json, timings.json written here), its PNGs, and what it says when pieces are missing."""
from __future__ import annotations

import json
import math

from gptlab.report import report

PNG = b"\x89PNG"


def _metrics(path, steps, extra=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [{"step": 0, "val_loss": 8.3, "val_bpb": 3.1}]
    for s in range(1, steps + 1):
        r = {"step": s, "loss": 8.0 * math.exp(-s / 10) + 1.0, "lr": 1e-3, "tokens": 1024 * s,
             "tokens_per_s": 5000.0 + s, "dt": 0.2}
        if extra:
            r.update(extra(s))
        if s % 10 == 0:
            r.update(val_loss=r["loss"] + 0.1, val_bpb=(r["loss"] + 0.1) * 0.37)
        lines.append(r)
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n{\"step\": 99, \"lo")  # cut line


def _ckpt(d, meta, eval_metrics=None, examples=None):
    d.mkdir(parents=True, exist_ok=True)
    (d / "gptlab.json").write_text(json.dumps(meta))
    if eval_metrics is not None:
        (d / "eval.json").write_text(json.dumps({
            "model": str(d), "model_kind": "chat" if meta["stage"] != "pretrain" else "base",
            "metrics": eval_metrics, "counts": {k: 10 for k in eval_metrics},
            "suites": {"chat": {}} if meta["stage"] != "pretrain" else {"fact": {}, "bpb": {}},
            "skipped": {}, "examples": examples or {},
            "command": f"gptlab eval --model {d} --world w"}))


def make_run(root):
    run = root / "run"
    (run).mkdir()
    (run / "timings.json").write_text(json.dumps({"miniworld data": 3.2, "pretrain": 410.5,
                                                  "sft": 120.0}))
    _metrics(run / "pretrain" / "metrics.jsonl", 30)
    _metrics(run / "sft" / "metrics.jsonl", 20, extra=lambda s: {"mask_frac": 0.4})
    _ckpt(run / "pretrain" / "final",
          {"stage": "pretrain", "step": 30, "metrics": {"val_bpb": 1.23},
           "command": ["gptlab", "pretrain", "--depth", "4"]},
          {"bpb": 1.25, "fact_accuracy": 0.40, "ece": 0.2, "mc_accuracy": 0.3})
    _ckpt(run / "sft" / "final",
          {"stage": "sft", "parent": "run/pretrain/final", "config": {"lr": 1e-4, "epochs": 2}},
          {"bpb": 1.31, "qa_accuracy": 0.8, "harmful_refusal": 0.95, "over_refusal": 0.05,
           "judge_score": 0.81, "tail_median": 0.9, "tail_p5": 0.3, "ece": 0.1,
           "system_compliance/json": 0.5},
          examples={"qa": [{"prompt": "Capital of Norway?", "response": "Oslo | yes",
                            "score": 1.0, "passed": True, "reasons": []}]})
    _ckpt(run / "pretrain" / "ckpt" / "step_000030", {"stage": "pretrain", "step": 30})
    return run


def test_report_from_a_synthetic_run(tmp_path):
    run = make_run(tmp_path)
    path = report(run)
    assert path == run / "REPORT.md"
    text = path.read_text()
    for section in ("# Report card", "## Wall time", "## Checkpoints", "## Training", "## Evals",
                    "## Commands"):
        assert section in text, section
    # wall time: every stage and the total
    assert "| pretrain | 410.5 | 6.8 |" in text and "**533.7**" in text
    # checkpoints: stage, step, parent, gptlab.json metrics
    assert "| `sft/final` | sft |" in text and "val_bpb 1.23" in text
    # training summary rows for both stages, and their curves
    assert "| pretrain | 30 | 30,720 |" in text and "| sft | 20 |" in text
    figs = run / "report"
    for name in ("curves_pretrain.png", "curves_sft.png", "evals_rates.png", "evals_scores.png"):
        assert (figs / name).read_bytes()[:4] == PNG, name
        assert f"(report/{name})" in text
    # evals side by side: both models, the difference, lower-is-better marked
    header = next(line for line in text.splitlines() if line.startswith("| metric |"))
    assert "pretrain/final (base)" in header and "sft/final (chat)" in header
    assert "difference" in header
    assert "| bpb (lower is better) | 1.2500 | 1.3100 | +0.0600 - |" in text
    assert "| ece (lower is better) | 20.0% | 10.0% | -10.0 pp + |" in text
    assert "system_compliance/json" in text           # the detail table
    assert "Oslo \\| yes" in text                       # sample replies, pipes escaped
    # commands: recorded, reconstructed from config, eval commands, and the missing one
    assert "gptlab pretrain --depth 4" in text
    assert "gptlab sft --lr 0.0001 --epochs 2" in text
    assert "gptlab eval --model" in text
    assert "`pretrain/ckpt/step_000030` (pretrain)" in text
    # a second build replaces the first
    assert report(run).read_text().count("## Evals") == 1


def test_report_says_what_is_missing(tmp_path):
    run = tmp_path / "empty"
    run.mkdir()
    text = report(run).read_text()
    assert "No timings.json" in text
    assert "No checkpoint directories" in text
    assert "No metrics.jsonl" in text
    assert "No eval.json found" in text and "gptlab eval --model" in text


def test_report_survives_broken_files(tmp_path):
    run = tmp_path / "r"
    (run / "a").mkdir(parents=True)
    (run / "a" / "gptlab.json").write_text("{not json")
    (run / "a" / "eval.json").write_text("[1, 2")
    (run / "a" / "model.safetensors").write_bytes(b"garbage")
    (run / "a" / "metrics.jsonl").write_text("garbage\n")
    (run / "timings.json").write_text("{}")
    text = report(run).read_text()
    assert "## Checkpoints" in text and "No eval.json found" in text


def test_report_cli(tmp_path, capsys):
    from gptlab.cli import main
    run = make_run(tmp_path)
    assert main(["report", str(run)]) == 0
    assert "REPORT.md" in capsys.readouterr().out
    assert (run / "REPORT.md").is_file()
