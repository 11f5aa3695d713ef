"""Evaluation suites judged by the gold judge, and their metric math.

    from gptlab.evals import evaluate, compare
    result = evaluate("runs/demo/sft/final", "runs/demo/world", ["chat", "calibration"])
    print(compare("runs/demo/pretrain/final", "runs/demo/sft/final"))

`runner.py` runs suites and writes eval.json (`bpb.py` and `calibration.py` are the two
suites that read logits), `tasks.py` defines what each held-out task counts, `metrics.py`
holds the math (ECE, tail percentiles, bits per byte), `table.py` formats and compares
eval.json, `plots.py` draws the PNGs, `tools_eval.py` is the tool-calling suite.
Definitions: docs/EVALS.md.
"""
from gptlab.evals.runner import SUITES, ModelResponder, detect_kind, evaluate, resolve_suites
from gptlab.evals.table import EVAL_FILE, compare, format_table, load_eval
from gptlab.evals.tasks import METRICS, aggregate

__all__ = ["EVAL_FILE", "METRICS", "SUITES", "ModelResponder", "aggregate", "compare",
           "detect_kind", "evaluate", "format_table", "load_eval", "resolve_suites"]
