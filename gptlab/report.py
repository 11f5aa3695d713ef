"""The report card: `report(run_dir)` writes RUN_DIR/REPORT.md from what the run left on disk.

It reads, anywhere under the run directory:
- `timings.json` at the top (the speedrun writes {stage: seconds}) -> the wall-time table;
- every checkpoint directory (a folder with gptlab.json) -> stage, step, parameters, the
  metrics in its gptlab.json, and the command that produced it (`command` / `argv` /
  `config` in gptlab.json, when the stage recorded one);
- every `metrics.jsonl` of a training stage -> a summary row and a loss-curve PNG;
- every `eval.json` (written by `gptlab eval`) -> one column per model in a side-by-side
  table, bar charts, the reliability plot, and a few judged replies.
PNGs go to RUN_DIR/report/. Whatever is missing, the section says so (and how to make
it), so the report can be built at any point of a run.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from gptlab.data.curate import curation_table
from gptlab.evals import runner as R
from gptlab.evals import table as eval_table
from gptlab.evals import tasks as T
from gptlab.evals.plots import bar_chart, curves_plot
from gptlab.fileio import read_jsonl
from gptlab.safety.redteam import format_report
from gptlab.speedrun_assistant import tracks_table

REPORT_FILE = "REPORT.md"
FIG_DIR = "report"
_SKIP_DIRS = {"shards", "tb", "__pycache__", FIG_DIR}
_LOOP_KEYS = {"step", "loss", "lr", "lr_mult", "tokens", "tokens_per_s", "grad_norm", "mfu",
              "dt", "val_loss", "val_bpb", "epoch"}
RATE_CHART = ["fact_accuracy", "qa_accuracy", "multiturn_accuracy", "system_compliance",
              "conflict_system_wins", "harmful_refusal", "over_refusal", "premise_correction",
              "pushback_hold", "pushback_admit", "idk_rate", "arithmetic_accuracy", "mc_accuracy"]
SCORE_CHART = ["judge_score", "tail_median", "tail_p5", "ece", "bpb"]


def report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write REPORT.md (and report/*.png) for a run directory; returns the REPORT.md path."""
    run = Path(run_dir)
    if not run.is_dir():
        raise FileNotFoundError(f"run directory {run} does not exist")
    path = Path(out) if out is not None else run / REPORT_FILE
    figs = path.parent / FIG_DIR
    if figs.is_dir():
        shutil.rmtree(figs)     # plots of a previous report may describe stages now gone
    ckpts, metric_files, evals = _scan(run)
    ctx = _Ctx(run, path.parent, figs)
    parts = [f"# Report card: {run.resolve().name}", "",
             f"_Generated {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} from `{run}` "
             f"by `gptlab report`._", ""]
    parts += _wall_time(run)
    parts += _curation(ctx)
    parts += _checkpoints(ctx, ckpts)
    parts += _training(ctx, metric_files)
    parts += _tracks(ctx)
    parts += _evals(ctx, evals)
    parts += _alignment(ctx)
    parts += _redteam(ctx)
    parts += _commands(ctx, ckpts, evals)
    text = "\n".join(parts).rstrip() + "\n"
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


def _tracks(ctx) -> list[str]:
    """The from-scratch and assistant tracks side by side (when the run has both)."""
    table = tracks_table(ctx.run)
    if not table:
        return []
    return ["## Two tracks", "",
            "Held-out miniworld sets; each rate with its 95% Wilson interval and item count. "
            "The from-scratch column is that track's best chat model; the assistant track "
            "starts from unchanged SmolLM2-135M-Instruct.", "", table, ""]


class _Ctx:
    def __init__(self, run: Path, base: Path, figs: Path):
        self.run, self.base, self.figs = run, base, figs

    def rel(self, p: Path) -> str:
        """A path as the report shows it: relative to the run directory."""
        try:
            return str(Path(p).resolve().relative_to(self.run.resolve())) or "."
        except ValueError:
            return str(p)

    def link(self, p: Path) -> str:
        """A path relative to REPORT.md, for markdown links and images."""
        return os.path.relpath(Path(p).resolve(), self.base.resolve())


# ----------------------------------------------------------------------------- scanning

def _scan(run: Path) -> tuple[list[Path], list[Path], list[Path]]:
    ckpts, metrics, evals = [], [], []
    for dirpath, dirnames, filenames in os.walk(run):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d not in _SKIP_DIRS)
        d = Path(dirpath)
        if "gptlab.json" in filenames:
            ckpts.append(d)
        if "metrics.jsonl" in filenames:
            metrics.append(d / "metrics.jsonl")
        evals += [d / f for f in sorted(filenames) if f == eval_table.EVAL_FILE or
                  (f.endswith(".eval.json"))]
    return ckpts, metrics, evals


def _read_json(p: Path) -> dict | None:
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _num_params(ckpt: Path) -> int | None:
    """Parameter count from the safetensors headers (no weights are read)."""
    try:
        from safetensors import safe_open
        files = sorted(ckpt.glob("*.safetensors"))
        if not files:
            return None
        n = 0
        for f in files:
            with safe_open(str(f), framework="pt") as st:
                for k in st.keys():
                    shape = st.get_slice(k).get_shape()
                    size = 1
                    for s in shape:
                        size *= s
                    n += size
        return n
    except Exception:  # a broken or foreign file must not stop the report
        return None


# ----------------------------------------------------------------------------- sections

def _wall_time(run: Path) -> list[str]:
    out = ["## Wall time", ""]
    t = _read_json(run / "timings.json")
    if not t:
        return out + ["_No timings.json in the run directory (the speedrun writes one)._", ""]
    rows, total = [], 0.0
    for stage, v in t.items():
        sec = v.get("seconds") if isinstance(v, dict) else v
        if isinstance(sec, (int, float)):
            total += sec
            rows.append(f"| {stage} | {sec:,.1f} | {sec / 60:.1f} |")
    return out + ["| stage | seconds | minutes |", "|---|---:|---:|", *rows,
                  f"| **total** | **{total:,.1f}** | **{total / 60:.1f}** |", ""]


def _curation(ctx: _Ctx) -> list[str]:
    """The data curation table (gptlab/data/curate.py), when the run curated its corpus."""
    rep = _read_json(ctx.run / "curated" / "report.json")
    if not rep:
        return []
    pii = rep["pii"]
    return ["## Data curation", "", *curation_table(rep), "",
            f"PII replaced in {pii['docs']} kept documents ({pii['email']} e-mail, {pii['phone']} "
            f"phone, {pii['ip']} IP); {rep['eval_sets']['items_checked']} eval items checked for "
            f"{rep['eval_sets']['ngram']}-gram overlap; {rep['mb_per_s']} MB/s. Examples: "
            f"[curated/report.md]({ctx.link(ctx.run / 'curated' / 'report.md')}).", ""]


def _checkpoints(ctx: _Ctx, ckpts: list[Path]) -> list[str]:
    out = ["## Checkpoints", ""]
    if not ckpts:
        return out + ["_No checkpoint directories (folders with gptlab.json) found._", ""]
    out += ["| checkpoint | stage | step | parameters | parent | metrics in gptlab.json |",
            "|---|---|---:|---:|---|---|"]
    for c in ckpts:
        meta = _read_json(c / "gptlab.json") or {}
        n = _num_params(c)
        ms = meta.get("metrics") or {}
        mtxt = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                         for k, v in ms.items()) or "-"
        parent = meta.get("parent")
        out.append(f"| `{ctx.rel(c)}` | {meta.get('stage') or '-'} | {meta.get('step', '-')} | "
                   f"{f'{n / 1e6:.2f} M' if n else '-'} | {f'`{parent}`' if parent else '-'} | {mtxt} |")
    return out + [""]


def _ema(xs: list[float], beta: float | None = None) -> list[float]:
    """Exponential moving average started at the first value; by default its window is
    ~2% of the run (no smoothing for runs under 50 steps, ~30 steps at 1500)."""
    if beta is None:
        beta = 1 - 1 / max(1.0, len(xs) / 50)
    out, m = [], None
    for x in xs:
        m = x if m is None else beta * m + (1 - beta) * x
        out.append(m)
    return out


def _series(recs: list[dict], key: str) -> tuple[list[float], list[float]]:
    pts = [(r["step"], r[key]) for r in recs
           if isinstance(r.get(key), (int, float)) and isinstance(r.get("step"), (int, float))]
    return [p[0] for p in pts], [float(p[1]) for p in pts]


def _training(ctx: _Ctx, files: list[Path]) -> list[str]:
    out = ["## Training", ""]
    if not files:
        return out + ["_No metrics.jsonl found (training stages write one into their output "
                      "directory)._", ""]
    table = ["| stage | steps | tokens | last loss (smoothed) | last val_loss | last val_bpb | "
             "median tokens/s | train time |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    images = []
    for f in files:
        name = ctx.rel(f.parent)
        try:   # a last line cut by a kill is dropped; any other bad line leaves the file out
            recs = read_jsonl(f, cut_tail_ok=True)
        except ValueError as exc:
            recs, images = [], images + [f"_{name}: metrics.jsonl left out ({exc})._", ""]
        table.append(_train_row(name, recs))
        panels = _train_panels(recs)
        if panels:
            png = ctx.figs / f"curves_{_slug(name)}.png"
            curves_plot(panels, png, title=name)
            images += [f"![{name} curves]({ctx.link(png)})", ""]
        else:
            images += [f"_{name}: no numeric step records to plot._", ""]
    return out + table + [""] + images


def _num(r: dict, key: str) -> bool:
    return isinstance(r.get(key), (int, float)) and not isinstance(r.get(key), bool)


def _train_row(name: str, recs: list[dict]) -> str:
    steps, loss = _series(recs, "loss")
    _, vl = _series(recs, "val_loss")
    _, vb = _series(recs, "val_bpb")
    smooth = _ema(loss)
    tps = sorted(r["tokens_per_s"] for r in recs if _num(r, "tokens_per_s"))
    secs = sum(r["dt"] for r in recs if _num(r, "dt"))
    tokens = max((r["tokens"] for r in recs if _num(r, "tokens")), default=None)
    last_step = max((r["step"] for r in recs if _num(r, "step")), default=None)
    cells = [name, f"{int(last_step)}" if last_step is not None else "-",
             f"{tokens:,}" if tokens else "-", f"{smooth[-1]:.4f}" if smooth else "-",
             f"{vl[-1]:.4f}" if vl else "-", f"{vb[-1]:.4f}" if vb else "-",
             f"{tps[len(tps) // 2]:,.0f}" if tps else "-", f"{secs / 60:.1f} min" if secs else "-"]
    return "| " + " | ".join(cells) + " |"


def _train_panels(recs: list[dict]) -> list:
    """Loss (raw, EMA, val), val bpb, and up to two stage-specific series (reward, kl, ...)."""
    steps, loss = _series(recs, "loss")
    lines = {"train (raw)": (steps, loss), "train (smoothed)": (steps, _ema(loss)),
             "val": _series(recs, "val_loss")}
    panels = [("loss (nats/token)", {k: v for k, v in lines.items() if v[0]})]
    if _series(recs, "val_bpb")[0]:
        panels.append(("val bits per byte", {"val_bpb": _series(recs, "val_bpb")}))
    extra = sorted({k for r in recs for k in r if k not in _LOOP_KEYS and _num(r, k)})
    panels += [(k, {k: _series(recs, k)}) for k in extra[:2]]
    return [p for p in panels if p[1] and any(len(xs) for xs, _ in p[1].values())]


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_") or "run"


def _model_name(ctx: _Ctx, p: Path) -> str:
    d = p.parent if p.name == eval_table.EVAL_FILE else p.with_name(p.name.removesuffix(".eval.json"))
    return ctx.rel(d)


def _evals(ctx: _Ctx, files: list[Path]) -> list[str]:
    out = ["## Evals", ""]
    loaded = [(f, _read_json(f)) for f in files]
    loaded = [(f, e) for f, e in loaded if e and isinstance(e.get("metrics"), dict)]
    if not loaded:
        return out + ["_No eval.json found. Evaluate a checkpoint with "
                      "`gptlab eval --model CKPT --world WORLD`; it writes CKPT/eval.json._", ""]
    names = [_model_name(ctx, f) for f, _ in loaded]
    kinds = [e.get("model_kind", "?") for _, e in loaded]
    out += ["Gold-judge metrics on the held-out miniworld sets (definitions: docs/EVALS.md); "
            "rates in percent. In the difference column a trailing `+` marks a change for "
            "the better, `-` for the worse.", ""]
    every = eval_table.metric_order({m for _, e in loaded for m in e["metrics"]})
    head = [m for m in every if m in eval_table.HEADLINE]
    out += _side_by_side(loaded, names, kinds, head) + [""]
    rest = [m for m in every if m not in eval_table.HEADLINE]
    if rest:
        out += ["<details><summary>Per constraint type and per category</summary>", "",
                *_side_by_side(loaded, names, kinds, rest), "", "</details>", ""]
    for chart, title, ylabel, ylim in ((RATE_CHART, "held-out rates", "rate", (0, 1)),
                                       (SCORE_CHART, "scores, calibration, bits per byte", "value", None)):
        ms = [m for m in chart if any(m in e["metrics"] for _, e in loaded)]
        if ms:
            png = ctx.figs / f"evals_{'rates' if ylim else 'scores'}.png"
            bar_chart(ms, {n: [e["metrics"].get(m) for m in ms] for n, (_, e) in zip(names, loaded)},
                      png, title=title, ylabel=ylabel, ylim=ylim)
            out += [f"![{title}]({ctx.link(png)})", ""]
    for (f, e), n in zip(loaded, names):
        plot = (e.get("suites", {}).get("calibration") or {}).get("plot")
        if plot and (f.parent / plot).is_file():
            out += [f"Reliability ({n}): ![reliability {n}]({ctx.link(f.parent / plot)})", ""]
    out += _skipped(loaded, names) + _examples(loaded[-1][1], names[-1])
    return out


def _side_by_side(loaded, names, kinds, metrics: list[str]) -> list[str]:
    diff = len(loaded) >= 2
    rows = ["| metric | " + " | ".join(f"{n} ({k})" for n, k in zip(names, kinds))
            + (" | difference (last - earliest with a value) |" if diff else " |"),
            "|---|" + "---:|" * (len(names) + diff)]
    for m in metrics:
        vals = [e["metrics"].get(m) for _, e in loaded]
        cells = [eval_table.fmt_value(m, v) for v in vals]
        if diff:
            ref = next((v for v in vals[:-1] if v is not None), None)
            cells.append(eval_table.fmt_delta(m, ref, vals[-1]))
        rows.append(f"| {eval_table.metric_label(m)} | " + " | ".join(cells) + " |")
    return rows


def _skipped(loaded, names) -> list[str]:
    out = []
    for (_, e), n in zip(loaded, names):
        for suite, why in (e.get("skipped") or {}).items():
            out.append(f"- {n}: suite `{suite}` skipped ({why})")
        missing = [s for s in R.DEFAULT_SUITES.get(e.get("model_kind"), [])
                   if s not in (e.get("suites") or {}) and s not in (e.get("skipped") or {})]
        if missing:
            flags = " ".join(f"--suite {s}" for s in missing)
            out.append(f"- {n}: not evaluated: {', '.join(missing)} (`gptlab eval --model "
                       f"{e.get('model') or n} --world {e.get('world') or 'WORLD'} {flags}`)")
    return (["Missing pieces:", ""] + out + [""]) if out else []


def _examples(e: dict, name: str, per_kind: int = 1) -> list[str]:
    ex = e.get("examples") or {}
    if not ex:
        return []
    out = [f"### Sample judged replies ({name})", "",
           "| category | prompt | reply | score | judge says |", "|---|---|---|---:|---|"]
    for kind in T.CHAT_KINDS + T.BASE_KINDS:
        for x in ex.get(kind, [])[:per_kind]:
            reasons = "; ".join(x.get("reasons") or []) or "ok"
            out.append(f"| {kind} | {_cell(x.get('prompt'))} | {_cell(x.get('response'))} | "
                       f"{x.get('score', 0):.2f} | {_cell(reasons, 80)} |")
    return out + [""]


def _cell(s, n: int = 100) -> str:
    s = " ".join(str(s or "").split()).replace("|", "\\|")
    return s if len(s) <= n else s[:n - 1] + "…"


def _command_of(meta: dict) -> str | None:
    cmd = meta.get("command") or meta.get("argv")
    if isinstance(cmd, list):
        return " ".join(str(c) for c in cmd)
    if isinstance(cmd, str):
        return cmd
    cfg = meta.get("config")
    if isinstance(cfg, dict) and meta.get("stage"):
        flags = []
        for k, v in cfg.items():
            flag = "--" + k.replace("_", "-")
            if isinstance(v, bool):
                flags.append(flag if v else "--no-" + k.replace("_", "-"))
            elif v is not None and v != "" and not isinstance(v, (dict, list)):
                flags.append(f"{flag} {v}")
        return f"gptlab {meta['stage']} {' '.join(flags)}  # reconstructed from gptlab.json config"
    return None


def _alignment(ctx: _Ctx) -> list[str]:
    """Simulated feedback, the reward model, and the win rates over SFT (speedrun layout:
    align/feedback.json, rm/reward.json, align/winrate.json)."""
    out = ["## Alignment", ""]
    fb, rm = _read_json(ctx.run / "align" / "feedback.json"), _read_json(ctx.run / "rm" / "reward.json")
    wr = _read_json(ctx.run / "align" / "winrate.json")
    if not (fb or rm or wr):
        return out + ["No alignment stage has run yet (`gptlab feedback simulate`, `gptlab reward`, "
                      "`gptlab rl`, `gptlab dpo`).", ""]
    if fb:
        out += ["Simulated feedback: " + ", ".join(f"{k} {v}" for k, v in fb.items()
                                                  if isinstance(v, (int, float, str))), ""]
    if rm:
        keys = ["train_pairs", "val_pairs", "train_accuracy", "val_accuracy", "val_rm_vs_judge",
                "val_labels_vs_judge", "val_ratio_to_ceiling", "train_seconds"]
        out += ["| reward model | value |", "| --- | ---: |"]
        out += [f"| {k} | {_cell(round(rm[k], 4) if isinstance(rm[k], float) else rm[k])} |"
                for k in keys if rm.get(k) is not None] + [""]
    if wr:
        rows = {k: v for k, v in wr.items() if isinstance(v, dict) and "win_rate" in v}
        out += [f"Gold-judge win rate over {wr.get('reference', 'SFT')} on {wr.get('n_prompts')} "
                f"held-out prompts (ties count one half):", "",
                "| method | win rate | wins | ties | losses | mean judge score | SFT's |",
                "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
        out += [f"| {k} | {v['win_rate']:.3f} | {v['wins']} | {v['ties']} | {v['losses']} | "
                f"{v['mean_policy']:.3f} | {v['mean_ref']:.3f} |" for k, v in rows.items()]
        out += [""]
        if rows:
            out += _winrate_plot(ctx, rows)
    return out


def _winrate_plot(ctx: _Ctx, rows: dict) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    ctx.figs.mkdir(parents=True, exist_ok=True)
    path = ctx.figs / "winrate.png"
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.bar(list(rows), [v["win_rate"] for v in rows.values()], color="#4c72b0")
    ax.axhline(0.5, color="gray", ls="--", lw=1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("win rate over SFT")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return [f"![win rates]({ctx.link(path)})", ""]


def _redteam(ctx: _Ctx) -> list[str]:
    """The red team's table (redteam/redteam.json, written by `gptlab redteam`)."""
    out = ["## Red team", ""]
    rt = _read_json(ctx.run / "redteam" / "redteam.json")
    if not rt:
        return out + ["No red-team run yet (`gptlab redteam --model DIR --out RUN/redteam`).", ""]
    body = format_report(rt).splitlines()
    # drop its title; demote its headings one level under this section
    body = [("#" + line if line.startswith("##") else line) for line in body
            if not line.startswith("# ")]
    return out + body + [""]


def _commands(ctx: _Ctx, ckpts: list[Path], evals: list[Path]) -> list[str]:
    out = ["## Commands", ""]
    by_cmd: dict[str, list[str]] = {}     # one entry per command: the checkpoints it made
    missing = []
    for c in ckpts:
        meta = _read_json(c / "gptlab.json") or {}
        cmd = _command_of(meta)
        if cmd:
            by_cmd.setdefault(cmd, []).append(f"{ctx.rel(c)} ({meta.get('stage') or 'checkpoint'})")
        else:
            missing.append(f"`{ctx.rel(c)}` ({meta.get('stage') or 'no stage'})")
    lines = [f"# {', '.join(where)}\n{cmd}" for cmd, where in by_cmd.items()]
    for f in evals:
        e = _read_json(f) or {}
        for cmd in e.get("commands") or ([e["command"]] if e.get("command") else []):
            lines.append(f"# {_model_name(ctx, f)} (eval)\n{cmd}")
    if lines:
        out += ["```bash", "\n\n".join(lines), "```", ""]
    if missing:
        out += ["Not recorded in gptlab.json (no `command`, `argv` or `config` key): "
                + ", ".join(missing) + ".", ""]
    if not lines and not missing:
        out += ["_No checkpoints or evals, so no commands to show._", ""]
    out += [f"Rebuild this report: `gptlab report {ctx.run}`", ""]
    return out
