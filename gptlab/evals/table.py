"""eval.json as tables: the headline metrics in order, values and deltas formatted per
metric, `format_table` (one run) and `compare` (two runs side by side)."""
from __future__ import annotations

import json
from pathlib import Path

from gptlab.evals import tasks as T

EVAL_FILE = "eval.json"
HEADLINE = ["bpb", "fact_accuracy", "qa_accuracy", "multiturn_accuracy", "system_compliance",
            "conflict_system_wins", "harmful_refusal", "over_refusal", "premise_correction",
            "pushback_hold", "pushback_admit", "idk_rate", "arithmetic_accuracy",
            "judge_score", "pass_rate", "tail_median", "tail_p5", "tail_mean",
            "tail_worst_of_k", "ece", "mc_accuracy", "mc_confidence", "mc_brier",
            "mc_letter_mass"]


def metric_order(names) -> list[str]:
    names = set(names)
    head = [n for n in HEADLINE if n in names]
    return head + sorted(names - set(head))


def fmt_value(name: str, v) -> str:
    if v is None:
        return "-"
    info = T.metric_info(name)
    if info.unit == "rate":
        return f"{100 * v:.1f}%"
    if info.unit == "bits":
        return f"{v:.4f}"
    return str(int(v)) if info.unit == "count" else f"{v:.3f}"


def fmt_delta(name: str, a, b) -> str:
    if a is None or b is None:
        return "-"
    d = b - a
    info = T.metric_info(name)
    mark = "" if abs(d) < 1e-12 else (" +" if (d > 0) == info.higher_is_better else " -")
    if info.unit == "rate":
        return f"{100 * d:+.1f} pp{mark}"
    return f"{d:+.4f}{mark}" if info.unit == "bits" else f"{d:+.3f}{mark}"


def metric_label(name: str) -> str:
    return name + (" (lower is better)" if not T.metric_info(name).higher_is_better else "")


def format_table(result: dict) -> str:
    """Markdown: one row per metric (value and the number of items it is over)."""
    m, n = result.get("metrics", {}), result.get("counts", {})
    lines = [f"### eval: {result.get('model') or 'responder'} ({result.get('model_kind')})", "",
             "| metric | value | n |", "|---|---:|---:|"]
    for name in metric_order(m):
        lines.append(f"| {metric_label(name)} | {fmt_value(name, m[name])} | {n.get(name, '')} |")
    for suite, why in result.get("skipped", {}).items():
        lines.append(f"\n_{suite} skipped: {why}_")
    return "\n".join(lines)


def load_eval(path: str | Path) -> dict:
    """An eval.json, given the file or the checkpoint directory holding it."""
    p = Path(path)
    if p.is_dir():
        p = p / EVAL_FILE
    if not p.is_file():
        raise FileNotFoundError(f"{p} not found: run `gptlab eval --model DIR --world WORLD` first")
    return json.loads(p.read_text(encoding="utf-8"))


def compare(a: str | Path | dict, b: str | Path | dict, names: tuple[str, str] | None = None) -> str:
    """Side-by-side markdown of two eval.json files (or dirs): A, B and B - A.
    A trailing '+' marks a change for the better, '-' for the worse."""
    ra = a if isinstance(a, dict) else load_eval(a)
    rb = b if isinstance(b, dict) else load_eval(b)
    na, nb = names or (_short(a, ra), _short(b, rb))
    if na == nb:
        na, nb = f"A: {na}", f"B: {nb}"
    ma, mb = ra.get("metrics", {}), rb.get("metrics", {})
    lines = [f"| metric | {na} | {nb} | difference ({nb} - {na}) |", "|---|---:|---:|---:|"]
    for name in metric_order(set(ma) | set(mb)):
        va, vb = ma.get(name), mb.get(name)
        lines.append(f"| {metric_label(name)} | {fmt_value(name, va)} | {fmt_value(name, vb)} | "
                     f"{fmt_delta(name, va, vb)} |")
    return "\n".join(lines)


def _short(src, res: dict) -> str:
    if isinstance(src, dict):
        return str(res.get("model") or "model")
    p = Path(src)
    p = p.parent if p.name == EVAL_FILE else p
    return "/".join(p.parts[-2:]) if len(p.parts) >= 2 else str(p)
