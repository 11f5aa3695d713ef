"""Predictable scaling: predict a bigger run's final loss (and a capability) from small runs.

Four steps, one function each (CLI: ``gptlab scaling sweep|fit|predict|check``):

- :func:`sweep` trains a grid of small models -- IsoFLOP curves: for each compute budget C,
  several model sizes, each trained for ``tokens = C / flops_per_token`` (the model's own
  FLOPs counter: 6N + attention, Kaplan et al. 2020) -- and writes each run's final
  validation loss, bits per byte and fact-completion accuracy (miniworld's
  ``eval/fact_completion.jsonl``, greedy continuation judged by the gold judge) to one CSV.
  One tokenizer and one set of token shards serve all runs. Finished runs are skipped, so
  a killed sweep resumes; ``workers=`` runs several side by side on CPU, ``gpus=`` one per
  GPU.
- :func:`fit` fits, on runs of at most ``max_flops``:
  the compute-optimal frontier ``L(C) = a * C^b + c`` (IsoFLOP minima from a parabola in
  log N, Hoffmann et al. 2022 "approach 2"); the parametric law
  ``L(N, D) = E + A / N^alpha + B / D^beta`` ("approach 3") with a Huber loss (delta 1e-3)
  on log-loss *summed* over runs, in the log-sum-exp parametrisation
  ``log L = LSE(a - alpha log N, b - beta log D, e)``, L-BFGS from a grid of
  initialisations, as the Epoch AI replication of Chinchilla does (Besiroglu et al. 2024,
  arXiv:2404.10102); bootstrap intervals (runs resampled with replacement); and the
  capability as ``-log(accuracy) = k * C^-gamma`` on the frontier runs, the form the
  GPT-4 report (OpenAI 2023, arXiv:2303.08774) used for HumanEval pass rates.
- :func:`predict` gives, for a budget, the predicted loss with a bootstrap interval (from
  the frontier L(C), and from L(N, D) at the chosen size), the compute-optimal size
  (continuous, and the best size of the ladder) and tokens, the predicted capability, and
  a plot of the fits with the prediction.
- :func:`check` trains the predicted configuration at that budget and writes the actual
  result beside the prediction (``check.json``).

Model sizes: depth (the project's one dial, ``gptlab.model.preset``) is too coarse for CPU
sweeps, so a size is ``DEPTHxWIDTH`` (``2x96``): ``preset(depth)``'s recipe at that width
(``PretrainConfig.width``). N is the non-embedding parameter count (the untied output head
included: it does matmul work), D the training tokens. Every run uses the same batch (in
tokens), context length, AdamW settings and a cosine schedule over its own length; the LR
follows the width (``lr_mult * 6e-4 * sqrt(768 / width)``). docs/SCALING.md has the
measured result on miniworld.

Layout of ``out``::

    world/ tokenizer/ shards/    miniworld, the shared tokenizer and token shards
    runs/<name>/final/           each sweep run's model (name: C<budget>_<size>)
    sweep.csv                    one row per finished run
    fit.json  predict.json  scaling.png  check.json  check/<name>/
"""

from __future__ import annotations

import csv
import dataclasses
import fcntl
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from gptlab.checkpoint import load_checkpoint
from gptlab.data.loaders import build_shards
from gptlab.data.world import generate_world
from gptlab.engine import Engine
from gptlab.judge import Judge
from gptlab.model import GPT, preset, training_defaults
from gptlab.scaling_fit import capability, chinchilla_loss, fit, fpt_curve, power_law
from gptlab.scaling_plot import plot
from gptlab.settings import cli_field as _f  # one definition of a --flag field for every stage
from gptlab.tokenizer import Tokenizer, train_tokenizer_from_source
from gptlab.train.dist import resolve_device
from gptlab.train.pretrain import PretrainConfig, pretrain, with_width


# The size ladder, N increasing: depth >= 2 (one layer cannot form induction heads), width
# ~32-64 x depth. The sweep uses a few (--sizes); predict picks the best size for a budget
# from the whole ladder plus the sweep's own sizes.
LADDER = ("2x32", "2x64", "2x96", "2x128", "3x128", "3x160", "3x192", "4x192", "4x256", "5x256",
          "5x320", "6x320", "6x384", "8x512", "10x640", "12x768")
DEFAULT_SIZES = "2x32,2x64,2x96,2x128"
DEFAULT_BUDGETS = "6.25e11,1.25e12,2.5e12"
CSV_FIELDS = ("name", "budget", "size", "depth", "width", "params", "params_total",
              "flops_per_token", "batch_tokens", "steps", "tokens", "flops", "val_loss",
              "val_bpb", "fact_acc", "fact_n", "train_s", "eval_s")
QUICK = dict(scale="tiny", vocab_size=384, sizes="2x32,3x32,2x64", budgets="3e9,6e9", seq_len=64,
             device_batch_size=8, batch_tokens=512, min_steps=4, eval_batches=2, val_docs=60,
             fact_limit=12, min_tokens_per_param=0.0, max_tokens_per_param=1e9)


@dataclass
class SweepConfig:
    """Everything `gptlab scaling sweep` accepts (fields map 1:1 to CLI flags)."""

    out: str = _f("runs/scaling", "output directory (shared data, runs, sweep.csv, fits, plot)")
    data: str | None = _f(None, "pretraining text (file, dir, hf:org/name); unset: the miniworld corpus")
    world: str | None = _f(None, "miniworld directory (fact-completion eval); unset: OUT/world, generated")
    scale: str = _f("full", "miniworld scale when OUT/world is generated (tiny, small, full)")
    vocab_size: int = _f(2048, "vocabulary of the one tokenizer all runs share")
    budgets: str = _f(DEFAULT_BUDGETS, "comma-separated compute budgets in FLOPs (IsoFLOP curves)")
    sizes: str = _f(DEFAULT_SIZES, "comma-separated model sizes DEPTHxWIDTH (or DEPTH: width 64 x depth)")
    seq_len: int = _f(128, "context length of every run")
    device_batch_size: int = _f(8, "sequences per micro-batch")
    batch_tokens: int = _f(1024, "tokens per optimizer step, the same for every run")
    lr_mult: float = _f(2.0, "multiplier on pretrain's default AdamW LR (6e-4 x sqrt(768 / width)) for every run")
    min_steps: int = _f(100, "skip grid points with fewer optimizer steps")
    min_tokens_per_param: float = _f(0.5, "skip grid points with fewer training tokens per parameter")
    max_tokens_per_param: float = _f(400.0, "skip grid points with more training tokens per parameter")
    eval_batches: int = _f(16, "validation batches for the final val loss / bpb")
    val_docs: int = _f(1000, "documents held out for validation")
    fact_limit: int | None = _f(None, "at most this many fact-completion prompts per run; unset: all")
    seed: int = _f(0, "seed of every run (init and data order)")
    device: str = _f("auto", "auto, cpu, cuda, cuda:N or mps")
    threads: int | None = _f(1, "torch CPU threads per run (tiny models: 1 is fastest, and 1 per core when sharing)")
    workers: int = _f(1, "worker processes running runs side by side (CPU: one per core)")
    gpus: str | None = _f(None, "comma-separated GPU ids: one worker process per GPU (CUDA_VISIBLE_DEVICES)")
    quick: bool = _f(False, "a few tiny runs on miniworld 'tiny' (seconds; for tests and smoke checks)")
    worker: str | None = _f(None, "internal: I/N = run only every N-th pending run, from the I-th")


def resolved(cfg: SweepConfig) -> SweepConfig:
    """--quick replaces the defaults with a seconds-long configuration."""
    return dataclasses.replace(cfg, **QUICK) if cfg.quick else cfg


# --------------------------------------------------------------------------- sizes and grid


def parse_size(spec: str) -> tuple[int, int]:
    """'2x96' -> (2, 96); '3' -> (3, 192) (the depth dial's own width)."""
    depth, _, width = spec.strip().lower().partition("x")
    d = int(depth)
    return d, int(width) if width else 64 * d


def model_config(size: str, vocab_size: int, seq_len: int):
    """The ModelConfig pretrain builds for a size (preset(depth) at the size's width)."""
    depth, width = parse_size(size)
    return with_width(preset(depth, vocab_size, max_seq_len=seq_len), width)


def size_stats(size: str, vocab_size: int, seq_len: int) -> dict:
    """Non-embedding and total parameters and training FLOPs per token of a size
    (the model is built on the meta device: no memory, no time)."""
    with torch.device("meta"):
        model = GPT(model_config(size, vocab_size, seq_len))
    return {"params": model.num_params(non_embedding=True), "params_total": model.num_params(),
            "flops_per_token": model.flops_per_token(seq_len)}


def _floats(spec: str) -> list[float]:
    return [float(x) for x in str(spec).split(",") if x.strip()]


def run_name(budget: float, size: str) -> str:
    return f"C{budget:.3g}_{size}".replace("+", "")


def plan_run(budget: float, size: str, cfg: SweepConfig, vocab_size: int) -> dict:
    """One grid point: steps = round(budget / (flops_per_token x batch_tokens))."""
    st = size_stats(size, vocab_size, cfg.seq_len)
    steps = max(1, round(budget / (st["flops_per_token"] * cfg.batch_tokens)))
    tokens = steps * cfg.batch_tokens
    depth, width = parse_size(size)
    return {"name": run_name(budget, size), "budget": budget, "size": size, "depth": depth,
            "width": width, **st, "batch_tokens": cfg.batch_tokens, "steps": steps,
            "tokens": tokens, "flops": tokens * st["flops_per_token"]}


def plan_grid(cfg: SweepConfig, vocab_size: int) -> list[dict]:
    """The sweep's runs: budgets x sizes, minus points with too few steps or a
    tokens-per-parameter ratio outside [min, max] (far from any IsoFLOP minimum)."""
    plans = []
    for budget in _floats(cfg.budgets):
        for size in cfg.sizes.split(","):
            p = plan_run(budget, size.strip(), cfg, vocab_size)
            tpp = p["tokens"] / p["params"]
            if p["steps"] >= cfg.min_steps and cfg.min_tokens_per_param <= tpp <= cfg.max_tokens_per_param:
                plans.append(p)
    return plans


# --------------------------------------------------------------------------- shared data


def prepare_data(cfg: SweepConfig) -> dict:
    """miniworld (if needed), one tokenizer and one set of token shards for every run."""
    out = Path(cfg.out)
    world = Path(cfg.world) if cfg.world else out / "world"
    if not (world / "manifest.json").is_file():
        if cfg.world:
            raise FileNotFoundError(f"--world {world} has no manifest.json (gptlab data world)")
        print(f"generating miniworld ({cfg.scale}) -> {world}", flush=True)
        generate_world(world, seed=0, scale=cfg.scale)
    source = cfg.data or str(world / "corpus")
    tok_dir, shard_dir = out / "tokenizer", out / "shards"
    if not (tok_dir / "tokenizer.json").is_file():
        print(f"training a {cfg.vocab_size}-token tokenizer on {source} -> {tok_dir}", flush=True)
        train_tokenizer_from_source(source, tok_dir, vocab_size=cfg.vocab_size)
    tok = Tokenizer.load(tok_dir)
    if not (shard_dir / "shards.json").is_file():
        build_shards(source, tok, shard_dir, val_docs=cfg.val_docs, progress=False)
    return {"world": world, "tokenizer": tok_dir, "shards": shard_dir, "vocab_size": tok.vocab_size}


# --------------------------------------------------------------------------- one run


def fact_accuracy(model, tokenizer, world: Path, limit: int | None = None,
                  batch_size: int = 64, max_new_tokens: int = 16) -> tuple[float, int]:
    """Share of eval/fact_completion.jsonl prompts whose greedy continuation (first sentence,
    up to a newline) states the fact, judged by the gold judge (as `gptlab eval --suite fact`)."""
    recs = [json.loads(x) for x in (world / "eval" / "fact_completion.jsonl").read_text().splitlines() if x.strip()]
    recs = recs[:limit] if limit else recs
    judge = Judge(json.loads((world / "kb.json").read_text()))
    engine, start = Engine(model, tokenizer), tokenizer.bos_id if tokenizer.bos_id is not None else tokenizer.eos_id
    model.eval()
    right = 0
    for i in range(0, len(recs), batch_size):
        chunk = recs[i:i + batch_size]
        outs = engine.generate([[start] + tokenizer.encode(r["prompt"]) for r in chunk],
                               max_new_tokens=max_new_tokens, stop_strings=["\n"])
        for r, ids in zip(chunk, outs):
            text = _first_sentence(tokenizer.decode(ids, skip_special_tokens=True))
            right += not judge.score_record(r, text).hard_failed
    return right / max(len(recs), 1), len(recs)


def _first_sentence(text: str) -> str:
    m = re.search(r"(?<=[.!?。])\s|\n", text)
    return text[:m.start()] if m else text


def train_run(plan: dict, cfg: SweepConfig, data: dict, run_dir: Path) -> dict:
    """Pretrain one planned run (skipped when run_dir/final holds it), then evaluate it."""
    final = run_dir / "final"
    t0 = time.perf_counter()
    if _final_step(final) != plan["steps"]:
        pcfg = PretrainConfig(
            data=str(data["shards"]), tokenizer=str(data["tokenizer"]), out=str(run_dir),
            depth=plan["depth"], width=plan["width"], seq_len=cfg.seq_len,
            device_batch_size=cfg.device_batch_size, total_batch_tokens=cfg.batch_tokens,
            max_steps=plan["steps"], lr=_lr(plan, cfg.lr_mult), eval_every=0,
            eval_batches=cfg.eval_batches, save_every=0, keep_checkpoints=1, seed=cfg.seed,
            device=cfg.device, progress=False,
            compile=False)  # eager: train_s is compared across runs, and a compile is no step
        pretrain(pcfg)
        train_s = time.perf_counter() - t0
    else:  # trained before: its step times are in metrics.jsonl
        train_s = _logged_train_time(run_dir / "metrics.jsonl")
        t0 = time.perf_counter() - train_s
    ckpt = load_checkpoint(final, device=_device(cfg.device))
    metrics = ckpt.meta.get("metrics", {})
    acc, n = fact_accuracy(ckpt.model, ckpt.tokenizer, data["world"], cfg.fact_limit)
    shutil.rmtree(run_dir / "ckpt", ignore_errors=True)  # optimizer state: not needed any more
    return {**plan, "val_loss": metrics["val_loss"], "val_bpb": metrics["val_bpb"],
            "fact_acc": acc, "fact_n": n, "train_s": round(train_s, 1),
            "eval_s": round(time.perf_counter() - t0 - train_s, 1)}


def _lr(plan: dict, mult: float) -> float | None:
    """pretrain's default LR for the size (None: let pretrain derive it), times ``mult``."""
    if mult == 1.0:
        return None
    return mult * training_defaults(plan["depth"])["lr"] * math.sqrt(64 * plan["depth"] / plan["width"])


def _logged_train_time(path: Path) -> float:
    if not path.is_file():
        return 0.0
    return sum(json.loads(x).get("dt", 0.0) for x in path.read_text().splitlines() if x.strip())


def _final_step(final: Path) -> int | None:
    p = final / "gptlab.json"
    return json.loads(p.read_text()).get("step") if p.is_file() else None


def _device(device: str) -> str:
    return str(resolve_device(device))


# --------------------------------------------------------------------------- the CSV


def read_rows(path: str | Path) -> list[dict]:
    """Rows of a sweep CSV, numbers parsed (an absent file: no rows)."""
    path = Path(path)
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return [{k: v if k in ("name", "size") else _num(v) for k, v in row.items()}
                for row in csv.DictReader(f)]


def _num(v: str):
    try:
        x = float(v)
    except (TypeError, ValueError):
        return v
    return int(x) if x.is_integer() and "e" not in v.lower() and "." not in v else x


def append_row(path: Path, row: dict) -> None:
    """Append one row (header first if new); an exclusive lock keeps workers' rows whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", newline="") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        if f.tell() == 0:
            w.writeheader()
        w.writerow({k: row.get(k) for k in CSV_FIELDS})
        f.flush()
        fcntl.flock(f, fcntl.LOCK_UN)


# --------------------------------------------------------------------------- sweep


def sweep(cfg: SweepConfig) -> Path:
    """Train every planned run not yet in OUT/sweep.csv; returns the CSV path."""
    cfg = resolved(cfg)
    out = Path(cfg.out)
    data = prepare_data(cfg)
    csv_path = out / "sweep.csv"
    if not cfg.worker:
        _write_json(out / "sweep.json", {**dataclasses.asdict(cfg), "vocab_size": data["vocab_size"]})
    done = {r["name"] for r in read_rows(csv_path)}
    plans = plan_grid(cfg, data["vocab_size"])
    todo = [p for p in plans if p["name"] not in done]
    if (cfg.gpus or cfg.workers > 1) and not cfg.worker:
        _spawn_workers(cfg)
    else:
        if cfg.worker:
            i, n = (int(x) for x in cfg.worker.split("/"))
            todo = todo[i::n]
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        print(f"sweep{' worker ' + cfg.worker if cfg.worker else ''}: {len(plans)} runs planned, "
              f"{len(done & {p['name'] for p in plans})} already done, {len(todo)} to run here", flush=True)
        for k, plan in enumerate(todo):
            row = train_run(plan, cfg, data, out / "runs" / plan["name"])
            append_row(csv_path, row)
            print(f"[{k + 1}/{len(todo)}] {row['name']}: N={row['params']:,} D={row['tokens']:,} "
                  f"loss {row['val_loss']:.4f} bpb {row['val_bpb']:.4f} fact {row['fact_acc']:.3f} "
                  f"({row['train_s']:.0f}+{row['eval_s']:.0f} s)", flush=True)
    if not cfg.worker:
        rows = read_rows(csv_path)
        if len({r["budget"] for r in rows}) >= 2:
            plot(rows, None, out / "scaling.png")
    return csv_path


def _spawn_workers(cfg: SweepConfig) -> None:
    """One `gptlab scaling sweep --worker i/n` process per GPU (or --workers on CPU); waits."""
    gpus = [g.strip() for g in cfg.gpus.split(",") if g.strip()] if cfg.gpus else [None] * cfg.workers
    procs = []
    for i, gpu in enumerate(gpus):
        args = [sys.executable, "-m", "gptlab", "scaling", "sweep", "--worker", f"{i}/{len(gpus)}"]
        for f in dataclasses.fields(SweepConfig):
            v = getattr(cfg, f.name)
            if f.name in ("gpus", "workers", "worker", "quick") or v is None:
                continue
            args += [f"--{f.name.replace('_', '-')}", str(v)] if not isinstance(v, bool) else \
                [f"--{'' if v else 'no-'}{f.name.replace('_', '-')}"]
        env = {**os.environ, **({"CUDA_VISIBLE_DEVICES": gpu} if gpu is not None else {})}
        procs.append(subprocess.Popen(args, env=env))
    codes = [p.wait() for p in procs]
    if any(codes):
        raise RuntimeError(f"sweep workers failed with exit codes {codes}")



# --------------------------------------------------------------------------- predict


def ladder_options(flops: float, spec: dict, sizes=LADDER) -> list[dict]:
    """Every size trained for ``flops``: its N, tokens, steps, by increasing N (spec:
    vocab_size, seq_len, batch_tokens of the sweep)."""
    out = []
    for size in sizes:
        st = size_stats(size, spec["vocab_size"], spec["seq_len"])
        steps = round(flops / (st["flops_per_token"] * spec["batch_tokens"]))
        if steps >= 1:
            depth, width = parse_size(size)
            tokens = steps * spec["batch_tokens"]
            out.append({"size": size, "depth": depth, "width": width, **st, "steps": steps,
                        "tokens": tokens, "flops": tokens * st["flops_per_token"]})
    return sorted(out, key=lambda o: o["params"])


def _interval(values, ci: float) -> dict:
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    lo, hi = np.percentile(v, [50 * (1 - ci), 50 * (1 + ci)]) if len(v) else (float("nan"),) * 2
    return {"lo": float(lo), "hi": float(hi)}


def continuous_optimum(p: dict, flops: float, options: list[dict]) -> dict:
    """argmin over N of L(N, C / fpt(N)) (fpt from :func:`fpt_curve` along the ladder)."""
    n = np.geomspace(options[0]["params"] / 10, options[-1]["params"], 4000)
    tokens = flops / fpt_curve(n, options)
    loss = chinchilla_loss(p, n, tokens)
    i = int(np.argmin(loss))
    return {"params": float(n[i]), "tokens": float(tokens[i]), "loss": float(loss[i])}


def predict(fit_result: dict, flops: float, spec: dict, ci: float = 0.95) -> dict:
    """Predictions for a run of ``flops``: the loss of the compute-optimal run, from the
    frontier L(C) (``loss``, the headline) and from L(N, D) at the best ladder size
    (``loss_nd``), each with a bootstrap interval; that size and its tokens (``config``),
    the continuous optimum, and the fact-completion accuracy."""
    ch, boot = fit_result["chinchilla"], fit_result["bootstrap"]
    options = ladder_options(flops, spec, sorted(set(LADDER) | set(spec.get("sizes", ()))))
    for o in options:
        o["pred_loss"] = float(chinchilla_loss(ch, o["params"], o["tokens"]))
    cfg = min(options, key=lambda o: o["pred_loss"])
    cfg["tokens_per_param"] = cfg["tokens"] / cfg["params"]
    at_cfg = [float(chinchilla_loss(b["chinchilla"], cfg["params"], cfg["tokens"])) for b in boot]
    front = [float(power_law(b["frontier"], flops)) for b in boot]
    caps = [float(capability(b["capability"], flops)) for b in boot]
    opt = continuous_optimum(ch, flops, options)
    law = fit_result["n_opt_law"]
    return {
        "flops": flops, "ci": ci, "fit_max_flops": fit_result["max_flops"],
        "fit_runs": fit_result["n_runs"], "config": cfg,
        "loss": {"value": float(power_law(fit_result["frontier"], flops)), **_interval(front, ci)},
        "loss_nd": {"value": cfg["pred_loss"], **_interval(at_cfg, ci)},
        "val_bpb": {k: v * (fit_result.get("bpb_per_nat") or float("nan")) for k, v in
                    {"value": float(power_law(fit_result["frontier"], flops)), **_interval(front, ci)}.items()},
        "optimum": {**opt, "params_isoflop": float(law["G"] * flops ** law["a"])},
        "fact_acc": {"value": float(capability(fit_result["capability"], flops)), **_interval(caps, ci)},
    }


def format_prediction(pred: dict, actual: dict | None = None) -> str:
    """A few lines for the terminal."""
    c, lo, nd = pred["config"], pred["loss"], pred["loss_nd"]
    lines = [
        f"budget {pred['flops']:.3g} FLOPs (fit on {pred['fit_runs']} runs"
        + (f" of <= {pred['fit_max_flops']:.3g} FLOPs)" if pred["fit_max_flops"] else ")"),
        f"compute-optimal: N ~ {pred['optimum']['params']:,.0f} params, D ~ {pred['optimum']['tokens']:,.0f} tokens "
        f"(IsoFLOP minima law: N ~ {pred['optimum']['params_isoflop']:,.0f})",
        f"ladder choice: {c['size']} (N {c['params']:,}, D {c['tokens']:,} tokens = {c['steps']} steps, "
        f"{c['tokens_per_param']:.1f} tokens/param)",
        f"val loss, frontier L(C): {lo['value']:.4f}  [{lo['lo']:.4f}, {lo['hi']:.4f}] "
        f"({100 * pred['ci']:.0f}% bootstrap interval)",
        f"val loss, L(N, D) at {c['size']}: {nd['value']:.4f}  [{nd['lo']:.4f}, {nd['hi']:.4f}]",
        f"val bits per byte (from L(C)): {pred['val_bpb']['value']:.4f}",
        f"fact-completion accuracy: {pred['fact_acc']['value']:.3f}  "
        f"[{pred['fact_acc']['lo']:.3f}, {pred['fact_acc']['hi']:.3f}]",
    ]
    if actual:
        lines += [f"actual: val loss {actual['val_loss']:.4f} (L(C) {_rel(lo['value'], actual['val_loss'])}, "
                  f"L(N, D) {_rel(nd['value'], actual['val_loss'])}), bpb {actual['val_bpb']:.4f}, "
                  f"fact accuracy {actual['fact_acc']:.3f}"]
    return "\n".join(lines)


def format_fit(r: dict, ci: float = 0.95) -> str:
    """The fitted laws with bootstrap intervals, one per line."""
    def iv(law, key):
        lo, hi = _interval([b[law][key] for b in r["bootstrap"]], ci).values()
        return f"{r[law][key]:.4g} [{lo:.4g}, {hi:.4g}]"

    ch = r["chinchilla"]
    lines = [f"{r['n_runs']} runs, budgets {', '.join(f'{b:.3g}' for b in r['budgets'])} FLOPs"
             + (f" (runs of <= {r['max_flops']:.3g} FLOPs)" if r["max_flops"] else ""),
             f"L(N, D) = E + A/N^alpha + B/D^beta: E {iv('chinchilla', 'E')}, A {iv('chinchilla', 'A')}, "
             f"alpha {iv('chinchilla', 'alpha')}, B {iv('chinchilla', 'B')}, beta {iv('chinchilla', 'beta')}",
             f"L(C) = a C^b + c: a {iv('frontier', 'a')}, b {iv('frontier', 'b')}, c {iv('frontier', 'c')}",
             f"-log(fact accuracy) = k C^-gamma: k {iv('capability', 'k')}, gamma {iv('capability', 'gamma')}",
             f"N_opt(C) = G C^a (IsoFLOP minima): G {r['n_opt_law']['G']:.4g}, a {r['n_opt_law']['a']:.3f}; "
             f"L(N, D) gives N_opt ~ C^{ch['beta'] / (ch['alpha'] + ch['beta']):.3f}"]
    for m in r["isoflop"]:
        lines.append(f"  C={m['budget']:.3g}: N_opt {m['n_opt']:,.0f} ({'parabola' if m['vertex'] else 'best run'}), "
                     f"L_opt {m['l_opt']:.4f}, best run {m['best']} fact {m['best_acc']:.3f}")
    return "\n".join(lines)


def _rel(pred: float, actual: float) -> str:
    return f"{100 * (pred - actual) / actual:+.2f}%"


# --------------------------------------------------------------------------- commands


def load_sweep_config(out: str | Path) -> SweepConfig:
    """The configuration the sweep in ``out`` ran with (OUT/sweep.json)."""
    p = Path(out) / "sweep.json"
    if not p.is_file():
        raise FileNotFoundError(f"{p} not found: run `gptlab scaling sweep --out {out}` first")
    d = json.loads(p.read_text())
    return SweepConfig(**{f.name: d[f.name] for f in dataclasses.fields(SweepConfig) if f.name in d})


def _spec(out: Path) -> dict:
    cfg = load_sweep_config(out)
    return {"vocab_size": Tokenizer.load(out / "tokenizer").vocab_size, "seq_len": cfg.seq_len,
            "batch_tokens": cfg.batch_tokens, "sizes": [x.strip() for x in cfg.sizes.split(",")]}


def default_target(rows: list[dict]) -> float:
    """10x the compute of the largest sweep run."""
    if not rows:
        raise ValueError("no sweep runs yet: run `gptlab scaling sweep` first")
    return 10 * max(r["flops"] for r in rows)


def _slim(fit_result: dict) -> dict:
    """fit.json content: the bootstrap keeps only the law parameters."""
    keep = ("chinchilla", "frontier", "capability", "n_opt_law")
    return {**fit_result, "bootstrap": [{k: b[k] for k in keep} for b in fit_result["bootstrap"]]}


def run_fit(out: str | Path, max_flops: float | None = None, n_boot: int = 200) -> dict:
    """Fit the sweep in ``out`` (runs of <= max_flops) -> OUT/fit.json; returns the fit."""
    out = Path(out)
    result = fit(read_rows(out / "sweep.csv"), max_flops=max_flops, n_boot=n_boot)
    _write_json(out / "fit.json", _slim(result))
    return result


def run_predict(out: str | Path, flops: float | None = None, max_fit_frac: float = 0.1,
                n_boot: int = 200, plot_path: str | Path | None = None) -> dict:
    """Fit on the runs of <= max_fit_frac x flops, predict a run of ``flops`` (default: 10x
    the largest sweep run) -> OUT/predict.json and the plot OUT/scaling.png."""
    out = Path(out)
    rows = read_rows(out / "sweep.csv")
    flops = float(flops or default_target(rows))
    result = fit(rows, max_flops=max_fit_frac * flops, n_boot=n_boot)
    pred = predict(result, flops, _spec(out))
    _write_json(out / "predict.json", {"prediction": pred, "fit": _slim(result)})
    plot(rows, result, plot_path or out / "scaling.png", prediction=pred)
    return {**pred, "_fit": result}


def check(out: str | Path, flops: float | None = None, max_fit_frac: float = 0.1,
          n_boot: int = 200, device: str | None = None, threads: int | None = None) -> dict:
    """Predict a run of ``flops``, train the predicted configuration, and put the actual
    final val loss, bpb and fact accuracy beside the prediction -> OUT/check.json."""
    out = Path(out)
    cfg = load_sweep_config(out)
    cfg = dataclasses.replace(cfg, device=device or cfg.device, threads=threads or cfg.threads)
    pred = run_predict(out, flops, max_fit_frac, n_boot)
    result = pred.pop("_fit")
    data = prepare_data(cfg)
    c = pred["config"]
    plan = {**plan_run(pred["flops"], c["size"], cfg, data["vocab_size"]),
            "name": "check_" + run_name(pred["flops"], c["size"])}
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    print(format_prediction(pred), flush=True)
    print(f"training {plan['name']}: {plan['steps']} steps", flush=True)
    actual = train_run(plan, cfg, data, out / "check" / plan["name"])
    if actual["name"] not in {r["name"] for r in read_rows(out / "check.csv")}:
        append_row(out / "check.csv", actual)
    err = {k: (pred[k]["value"] - actual["val_loss"]) / actual["val_loss"] for k in ("loss", "loss_nd")}
    report = {
        "prediction": pred, "actual": actual,
        "loss_rel_error": err["loss"], "within_2pct": abs(err["loss"]) <= 0.02,
        "loss_nd_rel_error": err["loss_nd"], "within_2pct_nd": abs(err["loss_nd"]) <= 0.02,
        "fact_acc_error": pred["fact_acc"]["value"] - actual["fact_acc"],
        "fit_max_flops_ratio": max(r["flops"] for r in read_rows(out / "sweep.csv")
                                   if r["name"] in set(result["runs"])) / pred["flops"],
    }
    _write_json(out / "check.json", report)
    plot(read_rows(out / "sweep.csv"), result, out / "scaling.png", prediction=pred, actual=actual)
    print(format_prediction(pred, actual), flush=True)
    return report


def _write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=_jsonable) + "\n")
    os.replace(tmp, path)


def _jsonable(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")
