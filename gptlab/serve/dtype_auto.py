"""`gptlab serve --dtype auto` on a CPU: serve the dtype whose decode step is faster *here*.

Whether bfloat16 beats float32 depends on the CPU, not on its flags: on a Xeon with
AVX512-BF16 a one-row bf16 matmul was slower than float32 (bench/matmul_batch.py, issue 19),
so a rule like "bf16 when the CPU has it" served the slower dtype. Instead the first start-up
on a CPU times a few decode steps of a probe model in each candidate dtype and keeps the
faster; the result is cached per CPU model, model shape and thread count in
``$GPTLAB_HOME/dtype_auto.json`` (default ``~/.cache/gptlab``), so later starts cost nothing.

The probe has the served model's shapes (width, heads, MLP, vocabulary) but at most
``PROBE_LAYERS`` blocks with random weights: speed does not depend on the values, and a
full copy of a big model would double its memory at start-up. Each dtype runs
``PROBE_STEPS`` greedy steps over ``PROBE_ROWS`` rows, alternating, ``PROBE_ROUNDS`` times; the medians decide, and
float32 wins ties (it is exact).
"""

from __future__ import annotations

import copy
import json
import platform
import statistics
from dataclasses import replace
from pathlib import Path

import torch

from gptlab.engine import Engine
from gptlab.fileio import atomic_write_text
from gptlab.interop import models_home
from gptlab.model import GPT

PROBE_LAYERS = 4
PROBE_STEPS = 8
PROBE_ROUNDS = 3
# rows per probe step: a server decodes several at once, and where float32 and bfloat16 were
# within 10% at one row, bfloat16's step grew far less with the batch (bench/matmul_batch.py)
PROBE_ROWS = 4
CANDIDATES = (torch.float32, torch.bfloat16)


def cache_path() -> Path:
    """$GPTLAB_HOME/dtype_auto.json, else ~/.cache/gptlab/dtype_auto.json (beside the models)."""
    return models_home().parent / "dtype_auto.json"


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo; the platform's processor elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _key(model: GPT, threads: int, fuse: dict) -> str:
    c = model.config
    shape = (f"d{c.hidden_size}-i{c.intermediate_size}-h{c.num_attention_heads}-kv{c.num_key_value_heads}"
             f"-v{c.vocab_size}-l{c.num_hidden_layers}")
    fused = ",".join(_name(d) for d in CANDIDATES if fuse.get(d))
    return (f"{cpu_model()} | torch {torch.__version__} | {threads} threads | {shape} | "
            f"{PROBE_ROWS} rows | fused={fused or 'none'}")


def choose(model: GPT, threads: int, fuse: dict) -> tuple[torch.dtype, str]:
    """(dtype, why) for ``model`` on this CPU, from the cache or a new measurement.
    ``fuse``: dtype -> whether the server's worker would decode the model in that dtype
    through FusedDecoder (the probe then does too)."""
    path, key = cache_path(), _key(model, threads, fuse)
    try:
        cached = json.loads(path.read_text())
    except (OSError, ValueError):
        cached = {}
    entry = cached.get(key)
    source = "cached calibration"
    if entry is None:
        entry, source = measure(model, threads, fuse), "measured at start-up"
        cached[key] = entry
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(cached, indent=1))
    ms = {getattr(torch, name): v for name, v in entry.items()}
    best = min(ms, key=lambda d: (ms[d], d != torch.float32))
    why = " vs ".join(f"{str(d).removeprefix('torch.')} {ms[d]:.1f} ms" for d in sorted(ms, key=ms.get))
    return best, f"{why} per probe step, {source}: {path}"


def measure(model: GPT, threads: int, fuse: bool) -> dict[str, float]:
    """Median ms per decode step of the probe model in each candidate dtype."""
    cfg = replace(model.config, num_hidden_layers=min(PROBE_LAYERS, model.config.num_hidden_layers))
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.manual_seed(0)
        probe = GPT(cfg).eval()
        engines = {d: Engine(probe if d == torch.float32 else copy.deepcopy(probe).to(d),
                             fuse=bool(fuse.get(d))) for d in CANDIDATES}
        times = {d: [] for d in CANDIDATES}
        prompts = [list(range(1 + r, 17 + r)) for r in range(PROBE_ROWS)]
        for r in range(PROBE_ROUNDS + 1):  # the first round warms up
            for d in CANDIDATES if r % 2 else reversed(CANDIDATES):
                eng = engines[d]
                eng.generate(prompts, max_new_tokens=PROBE_STEPS + 1, stop_token_ids=[])
                if r:
                    times[d].append(1e3 * eng.last_decode_s / PROBE_STEPS)
    finally:
        torch.set_num_threads(before)
    return {_name(d): statistics.median(v) for d, v in times.items()}
