"""Where a training process runs: distributed set-up and numeric precision.

- the process group from ``torchrun`` environment variables (gloo on CPU, nccl on CUDA),
  rank-0-only printing and scalar all-reduces (:func:`setup_dist`, :func:`print0`,
  :func:`all_reduce_mean`), seeding;
- precision and wrapping: bf16 autocast (on CUDA by default, on CPU when asked), DDP or
  FSDP2 (:func:`shard_model`), optional ``torch.compile`` (:func:`wrap_model`, :func:`unwrap`);
- state dicts that work either way: full weights and optimizer state gathered from FSDP's
  shards to save, scattered back to resume (:func:`full_model_state`, :func:`load_model_state`,
  ...), so a checkpoint is the same HF directory however it was trained.
"""

from __future__ import annotations

import contextlib
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn

# --------------------------------------------------------------------------- distributed


@dataclass
class DistEnv:
    """Where this process runs: its rank among ``world_size`` processes and its device."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def ddp(self) -> bool:
        return self.world_size > 1


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` -> cuda if available, else mps, else cpu; anything else is passed through."""
    if device != "auto":
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def setup_dist(device: str = "auto") -> DistEnv:
    """Initialise the process group when launched by ``torchrun`` (``RANK``/``WORLD_SIZE`` set).

    Single process otherwise. On CUDA each rank takes ``cuda:LOCAL_RANK`` and uses nccl;
    on CPU gloo, which is how the tests check distributed correctness.
    """
    dev = resolve_device(device)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if "RANK" not in os.environ or world <= 1:
        return DistEnv(device=dev)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if dev.type == "cuda":
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return DistEnv(rank=rank, local_rank=local_rank, world_size=world, device=dev)


def run_distributed(fn: Callable[[Any, DistEnv], Any], cfg: Any) -> Any:
    """``fn(cfg, env)`` inside a process group set up for ``cfg.device`` (see
    :func:`setup_dist`), torn down afterwards whatever happens."""
    env = setup_dist(cfg.device)
    try:
        return fn(cfg, env)
    finally:
        cleanup_dist()


def cleanup_dist() -> None:
    """Destroy the process group if one was created."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_main_process() -> bool:
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def print0(*args: Any, **kwargs: Any) -> None:
    """``print`` on rank 0 only."""
    if is_main_process():
        print(*args, **kwargs, flush=True)


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_reduce_sum(x: torch.Tensor | float) -> float:
    """Sum of a scalar over all ranks (the value itself in a single process)."""
    t = torch.as_tensor(x).detach().to(torch.float64).clone()
    if dist.is_available() and dist.is_initialized():
        # nccl reduces CUDA tensors only, gloo CPU tensors only.
        t = t.cuda() if dist.get_backend() == "nccl" else t.cpu()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return float(t.item())


def all_reduce_mean(x: torch.Tensor | float) -> float:
    """Mean of a scalar over all ranks."""
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    return all_reduce_sum(x) / world


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# --------------------------------------------------------------------------- precision


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """Compute dtype for autocast: ``auto`` is bf16 on CUDA (if supported) and fp32 elsewhere.

    ``auto`` keeps CPU training in float32 so that the CPU tests are exact; an explicit
    ``bfloat16`` is honoured on CPU too (1.9x the fp32 step of SmolLM2-135M on an AVX512-BF16
    EPYC, docs/PERFORMANCE.md), where a big model's speed matters more than exactness.
    """
    if dtype in ("auto", None):
        ok = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if ok else torch.float32
    table = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float32": torch.float32, "fp32": torch.float32}
    if dtype not in table:
        raise ValueError(f"dtype must be auto, bfloat16 or float32, got {dtype!r}")
    return table[dtype]


def fast_bf16(device: str, cpuinfo: str | None = None) -> bool:
    """Whether ``device`` has native bf16 matrix multiplication (on a CPU: the AVX512-BF16 or
    AMX flag of ``cpuinfo``, /proc/cpuinfo's text, read when None)."""
    if str(device).startswith("cuda"):
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    try:  # Linux: the CPU flags; elsewhere assume not (float32 is the safe choice)
        flags = (Path("/proc/cpuinfo").read_text() if cpuinfo is None else cpuinfo).split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def autocast_context(device: torch.device, dtype: torch.dtype):
    """bf16 autocast on CUDA or CPU (weights and optimizer stay fp32); a no-op otherwise."""
    if device.type in ("cuda", "cpu") and dtype == torch.bfloat16:
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def wrap_model(model: nn.Module, env: DistEnv, *, compile: bool = False) -> nn.Module:
    """DDP-wrap (when distributed and not already sharded by :func:`shard_model`), then
    optionally ``torch.compile``.

    Keep a reference to the unwrapped model for saving; use :func:`unwrap` to get it back.
    """
    if env.ddp and not is_sharded(model):
        ids = [env.local_rank] if env.device.type == "cuda" else None
        model = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    if compile:
        model = torch.compile(model)
    return model


def is_compiled(model: nn.Module) -> bool:
    """Whether ``model`` is a torch.compile module (`wrap_model` compiles outside DDP)."""
    return hasattr(model, "_orig_mod")


def unwrap(model: nn.Module) -> nn.Module:
    """Strip ``torch.compile`` and DDP wrappers."""
    model = getattr(model, "_orig_mod", model)
    return getattr(model, "module", model) if isinstance(
        model, nn.parallel.DistributedDataParallel) else model


def ddp_of(model: nn.Module) -> nn.parallel.DistributedDataParallel | None:
    inner = getattr(model, "_orig_mod", model)
    return inner if isinstance(inner, nn.parallel.DistributedDataParallel) else None


# --------------------------------------------------------------------------- FSDP2


def shard_model(model: nn.Module, env: DistEnv) -> nn.Module:
    """FSDP2 (``fully_shard``): every transformer block, then the rest (embeddings, final
    norm, head) as the root, sharded over all ranks; in place, and before the optimizer is
    built (its parameters become DTensors). Each rank then holds 1/world of the weights,
    gradients and optimizer state; a block's weights are gathered just for its forward and
    backward. DDP keeps a full copy per rank instead: it is the faster choice whenever the
    model and its AdamW state (16 bytes per parameter) fit one device.
    A no-op in a single process."""
    if not env.ddp:
        return model
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(env.device.type, (env.world_size,))
    for block in model.model.layers:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)   # the root: tied embeddings and head stay one parameter
    return model


def is_sharded(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule
    return isinstance(getattr(model, "_orig_mod", model), FSDPModule)


def local_tensor(t: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a DTensor (FSDP), the tensor itself otherwise."""
    return t.to_local() if hasattr(t, "to_local") else t


def _full_options(**kw):
    from torch.distributed.checkpoint.state_dict import StateDictOptions
    return StateDictOptions(full_state_dict=True, **kw)


def full_model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole model's weights. Under FSDP a collective (call it on every rank): the shards
    are gathered to CPU on rank 0, the other ranks get an empty dict."""
    if not is_sharded(model):
        return model.state_dict()
    from torch.distributed.checkpoint.state_dict import get_model_state_dict
    return get_model_state_dict(model, options=_full_options(cpu_offload=True))


def load_model_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Put full weights back (every rank passes them; FSDP keeps its own shard of each)."""
    if not is_sharded(model):
        model.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import set_model_state_dict
    set_model_state_dict(model, state, options=_full_options())


def full_optimizer_state(model: nn.Module, optimizer) -> dict:
    """``optimizer.state_dict()`` (an :class:`OptimizerGroup`); under FSDP gathered like
    :func:`full_model_state` (a collective; rank 0 gets it, keyed by parameter name)."""
    if not is_sharded(model):
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict
    return optimizer.state_dict(
        lambda o: get_optimizer_state_dict(model, o, options=_full_options(cpu_offload=True)))


def load_optimizer_state(model: nn.Module, optimizer, state: dict) -> None:
    if not is_sharded(model):
        optimizer.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict
    optimizer.load_state_dict(state, lambda o, s: set_optimizer_state_dict(model, o, s, options=_full_options()))
