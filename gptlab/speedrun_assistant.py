"""The assistant track of the speedrun: a real pretrained chat model through the same stages.

The from-scratch track (`gptlab.speedrun`, preset cpu-tiny) is the pretraining and scaling
demonstration: a 2 M-parameter model cannot generalize to held-out wordings. The model a
person talks to after `make demo` comes from this track instead: SmolLM2-135M-Instruct (the
embedded real model) -> SFT on miniworld's chat data -> judge-ranked feedback -> DPO ->
held-out evals (unchanged SmolLM2 as the baseline column) -> win rate over its own SFT.
Every stage is an ordinary stage function (sft, evaluate, simulate_feedback, run_dpo); this
module only says which, with what settings, and where their outputs go (OUT/assistant/...).

Budget (docs/RESULTS.md has the measurements): on 2 CPU cores a full fine-tuning step of
SmolLM2 is compute bound, so the SFT trains only the top blocks (`train_layers`: backward
stops there) in bf16 autocast, and the loss head runs only on assistant tokens.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import torch

from gptlab.align.common import heldout_records, win_rate_tiebroken
from gptlab.align.dpo import DPOConfig, run_dpo
from gptlab.align.simulate import simulate_feedback
from gptlab.chat import load_chat_model
from gptlab.evals import evaluate
from gptlab.evals.tools_eval import WITH_TOOLS
from gptlab.fileio import atomic_write_text, read_package_toml
from gptlab.interop import ensure_model
from gptlab.judge import Judge
from gptlab.train.dist import fast_bf16, resolve_dtype
from gptlab.train.sft import SFTConfig, sft

# init: the model to align (an alias or a checkpoint dir; the test preset gets a tiny one
# from its caller). sft_*: steps x rows of conversations; train_layers: top blocks trained
# (None: all). eval_limit: held-out items per category for the models this track trains
# (>= 100 for the one that may become runs/demo/final), baseline_limit for unchanged init.
# tools_mix: share of SFT rows drawn from WORLD/tools/sft.jsonl (tool calling; 0: none);
# tools_limit: held-out items per case for the final model's `tools` eval (lookups: twice);
# chat_tools_limit: held-out items per chat category for its `chat_tools` eval (the chat
# records with lookup and calculator offered; about 4x slower per item than `chat`).
# code_mix: share of SFT rows from WORLD/code/sft.jsonl (programming help; 0: none);
# code_samples: samples per held-out code request for the final model's pass@k (unchanged
# init gets greedy pass@1 only); code_limit: held-out code tasks (unset: all).
# mid_steps: steps x sft_batch rows of the midtraining stage before SFT: the world's corpus
# (mid_corpus of the rows; the rest chat records, so the chat format stays), which is where
# the facts of held-out entities are written (0: no midtraining; SFT starts from init).
# dtype: "bf16-if-native" is bfloat16 where the CPU multiplies it natively (AVX512-BF16 or
# AMX), float32 elsewhere (`track_dtype`): on an AVX512-BF16 EPYC a bf16 training step of
# SmolLM2 was 1.9x float32's, on a Xeon without it 3.5x *slower* (emulated; docs/PERFORMANCE.md).
# dpo_anchors: anchor pairs of each kind added to the feedback pairs (gptlab.align.anchors;
# 0: none); dpo_nll: weight of the chosen answers' NLL in the DPO loss (RPO; 0: plain DPO).
ASSISTANT_PRESETS = {
    # 300 x 16 conversations (~40% of miniworld small's SFT set) on the top 16 of 30 blocks
    # at 3e-4: val loss 0.38 and judge score 0.589, against 0.98 / 0.528 for 200 steps on 12
    # blocks at 1e-4 (docs/RESULTS.md, "The assistant track"). tools_mix 0.3: the tools set
    # carries the chat categories held with tools offered (its `chat` case) and, since
    # 2026-12-07, a quarter more rows: system-note questions; 0.3 keeps the other tools rows
    # at what 0.25 gave them (at 0.3 with more `chat` rows instead, the no-tools hold and
    # "I don't know" rates fell: docs/RESULTS.md, "Chat with the tools offered").
    # DPO: the judge-ranked pairs plus 15 anchor pairs of each kind (45 harmful) from the
    # world's train records, with the chosen answers' NLL (weight 1), 2 epochs at 5e-5: on the
    # 2026-12-07 demo's SFT model, seeds 0 and 1, over-refusal 36 -> 21/24, premise correction
    # 13 -> 36/33, system compliance 69 -> 73/70, and no target more than 2 points down; the
    # judge pairs alone at 1e-5 moved nothing (win rate 0.505, 174 of 220 ties;
    # docs/RESULTS.md, "Anchor pairs on every side"). Midtraining, 300 x 16 rows (90% corpus)
    # before SFT: SmolLM2 named the capitals of 12 of the 35 held-out countries, the SFT model
    # 14, the midtrained SFT model 25; SFT judge score 0.577 -> 0.640, and after DPO premise
    # correction 33-36 -> 42, admit 8-13 -> 22, QA 16-19 -> 24 (docs/RESULTS.md,
    # "Midtraining on the world's corpus")
    "cpu-smol": dict(init="smollm2", dtype="bf16-if-native", mid_steps=300, mid_corpus=0.9,
                     sft_steps=300, sft_batch=16,
                     sft_lr=3e-4, train_layers=16, eval_limit=100, baseline_limit=30,
                     eval_batch=32, k=4, prompts=120, noise=0.0, max_new_tokens=64,
                     dpo_pairs=400, dpo_epochs=2.0, dpo_beta=0.1, dpo_lr=5e-5, dpo_anchors=15,
                     dpo_nll=1.0,
                     winrate_per_category=20, tiebreak_samples=4, tools_mix=0.3, tools_limit=50,
                     chat_tools_limit=25, code_mix=0.05, code_samples=5),
    "test": dict(init=None, dtype="float32", mid_steps=1, mid_corpus=0.5, sft_steps=2,
                 sft_batch=4, sft_lr=1e-3,
                 train_layers=None, eval_limit=2, baseline_limit=1, eval_batch=8, k=3,
                 prompts=10, noise=0.25, max_new_tokens=8, dpo_pairs=8, dpo_epochs=1.0,
                 dpo_beta=0.1, dpo_lr=1e-4, dpo_anchors=1, dpo_nll=1.0, winrate_per_category=1,
                 tiebreak_samples=1,
                 tools_mix=0.2, tools_limit=1, chat_tools_limit=1, code_mix=0.1, code_samples=1,
                 code_limit=2),
}

TOOLS_EVAL = "tools.eval.json"   # beside a model's eval.json: the `tools` suite's results
CHAT_TOOLS_EVAL = "chat_tools.eval.json"   # and the `chat_tools` suite's
CODE_EVAL = "code.eval.json"               # and the `code` suite's
BASELINE_CODE_EVAL = "baseline.code.eval.json"   # unchanged init's, under OUT/assistant

# (label, folder under OUT/assistant) of the models this track trains, in order
MODELS = [("assistant SFT", Path("sft")), ("assistant DPO", Path("dpo"))]


def resolve_init(init: str) -> Path:
    """An alias (smollm2) imported on first use, or a checkpoint directory."""
    path = ensure_model(init)
    if not (Path(path) / "config.json").is_file():
        raise FileNotFoundError(f"assistant track: {init} is not a checkpoint directory or a known alias")
    return Path(path)


def track_dtype(requested: str, cpuinfo: str | None = None) -> str:
    """The preset's dtype as a training / eval dtype: "bf16-if-native" is "bfloat16" on a CPU
    with native bf16 matrix multiplication, else "float32" (and says why); any other
    value is returned as it is. ``cpuinfo``: /proc/cpuinfo's text (read when None)."""
    if requested != "bf16-if-native":
        return requested
    native = fast_bf16("cpu", cpuinfo)
    if not native:
        print("assistant track: this CPU has no native bf16 (AVX512-BF16 / AMX), so it trains and "
              "evaluates in float32 (emulated bf16 was 3.5x slower)", flush=True)
    return "bfloat16" if native else "float32"


def assistant_stages(out: Path, world: Path, a: dict, init: str
                     ) -> list[tuple[str, Path, Callable[[], None]]]:
    """(name, output that marks it done, run) for each stage of the assistant track."""
    a = {**a, "dtype": track_dtype(a["dtype"])}
    root = out / "assistant"
    mid_dir, sft_dir, dpo_dir, db = root / "mid", root / "sft", root / "dpo", root / "feedback.db"
    midtrain = bool(a.get("mid_steps"))

    def fine_tune(start: str, parts: list, dest: Path, steps: int):
        """`gptlab sft` from `start` on the world's chat records plus `parts` ((source, share))."""
        mix = ",".join(f"{path}:{share}" for path, share in parts if share and path.exists()) or None
        sft(SFTConfig(init=start, data=str(world), mix=mix, out=str(dest), max_steps=steps,
                      batch_size=a["sft_batch"], device_batch_size=a["sft_batch"], lr=a["sft_lr"],
                      train_layers=a["train_layers"], dtype=a["dtype"],
                      eval_every=max(steps // 4, 1), save_every=max(steps // 2, 1),
                      val_records=100, resume=True))

    def make_mid():
        fine_tune(str(resolve_init(init)), [(world / "corpus", a["mid_corpus"])], mid_dir, a["mid_steps"])

    def make_sft():
        ensure_code(world)
        start = mid_dir / "final" if midtrain else resolve_init(init)
        fine_tune(str(start), [(world / "tools" / "sft.jsonl", a.get("tools_mix")),
                               (world / "code" / "sft.jsonl", a.get("code_mix"))], sft_dir, a["sft_steps"])

    def make_eval(model: Callable[[], Path], limit: int | None, dest: Path | None = None,
                  suite: str = "chat", code_samples: int = 0):
        def run():
            if suite == "code":
                ensure_code(world)
            evaluate(model(), world, [suite], limit=limit, out=dest, batch_size=a["eval_batch"],
                     dtype=a["dtype"], code_samples=code_samples)
        return run

    def make_feedback():
        stats = simulate_feedback(sft_dir / "final", world, str(db), k=a["k"], n=a["prompts"],
                                  noise=a["noise"], max_new_tokens=a["max_new_tokens"],
                                  dtype=a["dtype"])
        atomic_write_text(root / "feedback.json", json.dumps(stats, indent=2, default=str) + "\n")

    def make_dpo():
        run_dpo(DPOConfig(init=str(sft_dir / "final"), db=str(db), out=str(dpo_dir),
                          max_pairs=a["dpo_pairs"], epochs=a["dpo_epochs"], beta=a["dpo_beta"],
                          lr=a["dpo_lr"], batch_size=16, device_batch_size=8,
                          nll_weight=a.get("dpo_nll", 0.0), anchors=a.get("dpo_anchors", 0),
                          world=str(world), train_layers=a["train_layers"], dtype=a["dtype"],
                          resume=True))

    def make_winrate():
        result = winrate_over_sft(root, world, a)
        atomic_write_text(root / "winrate.json", json.dumps(result, indent=2) + "\n")

    mid = [("assistant midtraining", mid_dir / "final" / "config.json", make_mid)] if midtrain else []
    return mid + [
        ("assistant SFT", sft_dir / "final" / "config.json", make_sft),
        ("eval unchanged init", root / "baseline.eval.json",
         make_eval(lambda: resolve_init(init), a["baseline_limit"], root / "baseline.eval.json")),
        ("eval assistant SFT", sft_dir / "final" / "eval.json",
         make_eval(lambda: sft_dir / "final", a["eval_limit"])),
        ("assistant feedback", root / "feedback.json", make_feedback),
        ("assistant DPO", dpo_dir / "final" / "config.json", make_dpo),
        ("eval assistant DPO", dpo_dir / "final" / "eval.json",
         make_eval(lambda: dpo_dir / "final", a["eval_limit"])),
        ("eval assistant tools", dpo_dir / "final" / TOOLS_EVAL,
         make_eval(lambda: dpo_dir / "final", a["tools_limit"], dpo_dir / "final" / TOOLS_EVAL, "tools")),
        ("eval assistant chat with tools", dpo_dir / "final" / CHAT_TOOLS_EVAL,
         make_eval(lambda: dpo_dir / "final", a["chat_tools_limit"], dpo_dir / "final" / CHAT_TOOLS_EVAL,
                   "chat_tools")),
        ("eval unchanged init code", root / BASELINE_CODE_EVAL,
         make_eval(lambda: resolve_init(init), a.get("code_limit"), root / BASELINE_CODE_EVAL, "code")),
        ("eval assistant code", dpo_dir / "final" / CODE_EVAL,
         make_eval(lambda: dpo_dir / "final", a.get("code_limit"), dpo_dir / "final" / CODE_EVAL, "code",
                   a.get("code_samples", 0))),
        ("assistant win rate", root / "winrate.json", make_winrate),
    ]


def ensure_code(world: Path) -> None:
    """A world made before miniworld had code tasks gets them (from its kb.json and seed)."""
    if not (world / "code" / "eval.jsonl").is_file():
        from gptlab.data.world_code import generate_code
        seed = json.loads((world / "manifest.json").read_text()).get("seed", 0) \
            if (world / "manifest.json").is_file() else 0
        generate_code(world, seed=seed)


def winrate_over_sft(root: Path, world: Path, a: dict) -> dict:
    """Gold-judge win rate of the DPO model over its own SFT on held-out prompts: greedy
    against greedy, each greedy tie decided by `tiebreak_samples` sampled answers of both
    (`common.win_rate_tiebroken`); wins / ties / losses, with and without ties."""
    judge = Judge.from_dir(world)
    records = heldout_records(world, n_per_category=a["winrate_per_category"], seed=1)
    dtype = resolve_dtype(a["dtype"], torch.device("cpu"))
    sft, dpo = (load_chat_model(root / name / "final", dtype=dtype) for name in ("sft", "dpo"))
    result = win_rate_tiebroken(dpo, sft, records, judge, samples=a["tiebreak_samples"],
                                max_new_tokens=a["max_new_tokens"], batch_size=a["eval_batch"])
    return {"reference": "assistant SFT (greedy; greedy ties decided by sampling)",
            "n_prompts": len(records), "DPO": result}


def assistant_models(out: Path) -> list[tuple[str, Path]]:
    """(label, final checkpoint dir) of the assistant models that exist under out."""
    return [(label, out / "assistant" / sub / "final") for label, sub in MODELS
            if (out / "assistant" / sub / "final" / "config.json").is_file()]


# ----------------------------------------------------------------------------- the report

# (metric, label, target) rows of REPORT.md's tables: the chat evals' and the tools eval's
_TARGETS = read_package_toml("gptlab", "targets.toml")
TARGETS = [tuple(row) for row in _TARGETS["chat"]]
TOOL_TARGETS = [tuple(row) for row in _TARGETS["tools"]]
CODE_TARGETS = [tuple(row) for row in _TARGETS["code"]]


def tools_table(out: Path) -> str:
    """Markdown: the assistant DPO model's tool use (its `tools` eval), "" when not run."""
    path = out / "assistant" / "dpo" / "final" / TOOLS_EVAL
    if not path.is_file():
        return ""
    ev = json.loads(path.read_text())
    lines = ["| tool use (assistant DPO) | value | target |", "| --- | --- | --- |"]
    lines += [f"| {label} | {_cell(ev, key)} | {target} |" for key, label, target in TOOL_TARGETS
              if key in ev["metrics"]]
    if "tool_malformed_calls" in ev["metrics"]:
        how = {"grammar": " (decoded under the server's call grammar)",
               "free": " (decoded freely)"}.get(ev.get("settings", {}).get("tool_calls"), "")
        lines.append(f"| malformed tool calls{how} | {ev['metrics']['tool_malformed_calls']:.0f} in "
                     f"{ev['counts'].get('tool_malformed_calls', 0)} replies | 0 |")
    return "\n".join(lines)


def code_table(out: Path) -> str:
    """Markdown: held-out code pass rates of unchanged init and the assistant DPO model (their
    `code` evals), "" when neither was run."""
    root = out / "assistant"
    cols = [(name, json.loads(p.read_text())) for name, p in
            (("unchanged SmolLM2", root / BASELINE_CODE_EVAL),
             ("assistant DPO", root / "dpo" / "final" / CODE_EVAL)) if p.is_file()]
    if not cols:
        return ""
    lines = ["| code (held-out tasks, hidden tests) | " + " | ".join(n for n, _ in cols) + " | target |",
             "| --- |" + " --- |" * (len(cols) + 1)]
    lines += [f"| {label} | " + " | ".join(_cell(ev, key) for _, ev in cols) + f" | {target} |"
              for key, label, target in CODE_TARGETS if any(key in ev["metrics"] for _, ev in cols)]
    return "\n".join(lines)


def _greedy_note(r: dict) -> str:
    """How many of the counts came from greedy answers alone (before sampling broke ties)."""
    g, tb = r.get("greedy"), r.get("tiebreak")
    if not g or not tb:
        return ""
    return (f"; greedy alone {g['wins']} / {g['ties']} / {g['losses']}, then each greedy tie "
            f"decided by {tb['samples']} sampled answers at T={tb['temperature']}")


def wilson(p: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a rate p measured on n items (better than p +- 1.96 se
    near 0 and 1, where most of these rates live)."""
    if n <= 0:
        return 0.0, 1.0
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * (p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5
    return max(0.0, centre - half), min(1.0, centre + half)


def _cell(ev: dict | None, key: str) -> str:
    if not ev or ev["metrics"].get(key) is None:
        return "-"
    p, n = ev["metrics"][key], ev["counts"].get(key, 0)
    lo, hi = wilson(p, n)
    return f"{100 * p:.0f}% [{100 * lo:.0f}-{100 * hi:.0f}] n={n}"


def _unprefixed(ev: dict) -> dict:
    """A chat_tools eval.json with its with_tools/ metrics under the chat suite's names."""
    strip = {k[len(WITH_TOOLS):]: v for k, v in ev["metrics"].items() if k.startswith(WITH_TOOLS)}
    counts = {k[len(WITH_TOOLS):]: v for k, v in ev["counts"].items() if k.startswith(WITH_TOOLS)}
    return {**ev, "metrics": strip, "counts": counts}


def tracks_table(out: Path) -> str:
    """Markdown: the from-scratch track's best chat model (by mean judge score), unchanged
    init (the baseline) and the assistant track's models side by side, each rate with its
    95% interval; "" when the run has no assistant track."""
    def read(p: Path):
        return json.loads(p.read_text()) if p.is_file() else None

    if not (out / "assistant").is_dir():
        return ""
    scratch = [ev for ev in (read(out / d / "final" / "eval.json") for d in ("sft", "ppo", "dpo")) if ev]
    best = max(scratch, key=lambda ev: ev["metrics"].get("judge_score", 0)) if scratch else None
    cols = [(f"from scratch ({best['stage']})" if best else "from scratch", best),
            ("unchanged SmolLM2", read(out / "assistant" / "baseline.eval.json"))]
    cols += [(label, read(d / "eval.json")) for label, d in assistant_models(out)]
    with_tools = read(out / "assistant" / "dpo" / "final" / CHAT_TOOLS_EVAL)
    if with_tools:     # the same records with lookup and calculator offered (docs/EVALS.md)
        cols.append(("assistant DPO, tools offered", _unprefixed(with_tools)))
    cols = [(name, ev) for name, ev in cols if ev]
    if not cols:
        return ""
    lines = ["| metric | " + " | ".join(n for n, _ in cols) + " | target |",
             "| --- |" + " --- |" * (len(cols) + 1)]
    for key, label, target in TARGETS:
        if any(key in ev["metrics"] for _, ev in cols):
            lines.append(f"| {label} | " + " | ".join(_cell(ev, key) for _, ev in cols) + f" | {target} |")
    wr = read(out / "assistant" / "winrate.json")
    if wr and "DPO" in wr:
        r = wr["DPO"]
        no_ties = "-" if r.get("win_rate_no_ties") is None else f"{r['win_rate_no_ties']:.3f}"
        lines.append(f"\nDPO over its own SFT (gold judge, {r['n']} held-out prompts): win rate "
                     f"{r['win_rate']:.3f} with ties as 1/2, {no_ties} without ties "
                     f"({r['wins']} wins / {r['ties']} ties / {r['losses']} losses"
                     f"{_greedy_note(r)}); target >= 0.65")
    for table in (tools_table(out), code_table(out)):
        if table:
            lines += ["", table]
    return "\n".join(lines)
