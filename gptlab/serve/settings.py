"""What ``gptlab serve`` can set (``ServeSettings``, one field per flag) and the choices made
from it at start-up: whether auth is on, what is moderated, which dtype a model is served in.
"""

from __future__ import annotations

import ipaddress
import sys
from dataclasses import dataclass, field

import torch

from gptlab.interop import TORCH_DTYPES
from gptlab.serve import dtype_auto
from gptlab.serve.worker import Worker
from gptlab.train.dist import fast_bf16  # used by serving_dtype (tests patch it here)

MODERATE_MODES = ("none", "input", "output", "both")
ACTIONS = ("refuse", "flag")


@dataclass
class ServeSettings:
    """Everything `gptlab serve` can set (flags of the same names)."""

    models: list = field(default_factory=list)  # "DIR" or "NAME=DIR"
    host: str = "127.0.0.1"
    port: int = 8000
    db: str = "runs/serve/serve.db"
    auth: str = "auto"               # auto: on unless the server binds to loopback only
    max_batch: int = 16              # rows decoded together per model (a request takes n rows)
    max_queue: int = 64              # requests waiting per model before 429
    request_timeout_s: float = 300.0
    max_body_bytes: int = 2_000_000
    max_tokens_cap: int = 4096       # default max_tokens: min(this, context - prompt)
    device: str = "cpu"
    dtype: str = "auto"              # auto | float32 | bfloat16 | float16 (see serving_dtype)
    threads: int | None = None       # torch CPU threads of each model's worker (None: see Worker)
    prefix_cache_mb: float = 256     # keys/values of finished sequences kept for reuse, per model (0: off)
    moderation: str | None = None    # a gptlab.safety Moderator directory
    moderate: str | None = None      # none | input | output | both (default: input with --moderation)
    moderation_action: str = "refuse"  # refuse | flag
    max_concurrent_per_key: int = 8  # a key's requests in flight at once; more get 429 (auth on)
    schema_workers: int = 2          # threads that compile response_format schemas, per model
    schema_timeout_s: float = 10.0   # a schema not compiled by then is a 400
    # Built-in tools the *server* may run for the web chat (gptlab.serve.web_tools): off unless
    # the operator names them ("lookup,calculator,python"); the lookup reads WORLD/kb.json.
    enable_tools: str | list | None = None
    world: str | None = None
    # Not a flag: keep what is loaded at start-up out of the cyclic collector's sight
    # (gc.freeze). Off in tests that start many servers in one process, where it would keep
    # every earlier test's garbage alive.
    freeze_gc: bool = True

    def auth_enabled(self) -> bool:
        if self.auth not in ("auto", "on", "off"):
            raise ValueError(f"auth must be auto, on or off, got {self.auth!r}")
        if self.auth != "auto":
            return self.auth == "on"
        return not is_loopback(self.host)

    def moderate_mode(self) -> str:
        mode = self.moderate or ("input" if self.moderation else "none")
        if mode not in MODERATE_MODES:
            raise ValueError(f"moderate must be one of {MODERATE_MODES}, got {mode!r}")
        if mode != "none" and not self.moderation:
            raise ValueError(f"--moderate {mode} needs --moderation DIR (a gptlab.safety moderator)")
        if self.moderation_action not in ACTIONS:
            raise ValueError(f"moderation_action must be one of {ACTIONS}, got {self.moderation_action!r}")
        return mode


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# ----------------------------------------------------------------------------- dtype

DTYPES = {"auto": None, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
          **TORCH_DTYPES}  # and gptlab import's short names: f32, bf16, f16
BF16_AUTO_MIN_BYTES = 64 * 2**20  # the size above which a float32 decode step is bound by weight reads


def serving_dtype(model, requested: str, device: str, threads: int | None = None) -> torch.dtype:
    """The dtype to serve ``model`` in. ``auto`` on CUDA: bfloat16 when its weights take more
    than 64 MiB in float32 and the GPU has bf16 (above that size a step reads every weight
    once, so half the bytes is a faster step), else the dtype it was loaded in. ``auto`` on a
    CPU with native bf16 (AVX512-BF16 / AMX) and a float32 model: whichever of float32 and
    bfloat16 decodes faster on this CPU, measured once and cached (gptlab.serve.dtype_auto;
    ``threads``: the worker's); the choice and its timings go to stderr."""
    if requested not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {requested!r}")
    if requested != "auto":
        return DTYPES[requested]
    param = next(model.parameters())
    if param.dtype != torch.float32 or not fast_bf16(device):
        return param.dtype
    if str(device).startswith("cuda"):
        big = 4 * sum(p.numel() for p in model.parameters()) > BF16_AUTO_MIN_BYTES
        return torch.bfloat16 if big else param.dtype
    fuse = {d: Worker.plan(model, threads, dtype=d)[0] for d in dtype_auto.CANDIDATES}
    threads = Worker.plan(model, threads)[1]
    dtype, why = dtype_auto.choose(model, threads, fuse)
    print(f"gptlab serve: dtype auto -> {str(dtype).removeprefix('torch.')} ({why})", file=sys.stderr, flush=True)
    return dtype


def dtype_name(e) -> str:
    """The dtype a model entry is served in, as a name ("bfloat16")."""
    return str(next(e.model.parameters()).dtype).removeprefix("torch.")
