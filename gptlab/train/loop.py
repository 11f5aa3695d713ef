"""Shared training machinery: the toolkit every stage (pretrain, SFT, reward, DPO, RL) reuses.

Small pieces, each usable alone:

- distributed set-up from ``torchrun`` environment variables (gloo on CPU, nccl on CUDA),
  rank-0-only printing (:func:`setup_dist`, :func:`print0`, :func:`all_reduce_mean`);
- precision and wrapping: bf16 autocast (on CUDA by default, on CPU when asked), DDP, optional ``torch.compile``;
- optimizers: AdamW with weight decay on matrices only (nanoGPT), or Muon for the 2-D
  hidden matrices (Keller Jordan, "Muon: an optimizer for hidden layers", 2024) with AdamW
  for embeddings, head and norms (:func:`build_optimizer`);
- the LR schedule: linear warmup, then cosine / linear decay or a late linear warmdown
  (WSD, Hu et al. 2024, "MiniCPM") to a floor (:func:`lr_multiplier`);
- one optimizer step with gradient accumulation, DDP ``no_sync`` and clipping
  (:func:`train_step`);
- validation loss and bits per byte (:func:`evaluate_loss`, :func:`tokens_per_byte`);
- throughput: tokens/s and MFU against a small table of peak FLOPS (:func:`peak_flops`);
- metrics jsonl (+ optional TensorBoard / W&B), a tqdm bar on rank 0;
- checkpoints: step directories, newest-intact-checkpoint lookup for ``--resume``, RNG
  capture, and graceful SIGTERM / Ctrl-C handling (:class:`StopSignal`);
- a guard: a NaN / inf loss or gradient norm (checked every step) or weights (checked
  before every save) stop the run with :class:`NonFiniteError`, never saving them;
- :func:`run_loop`: the generic step loop a stage drives with its own callables.
"""

from __future__ import annotations

import dataclasses

import contextlib
import json
import math
import os
import random
import re
import shutil
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn

from gptlab.checkpoint import NonFiniteError

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


def autocast_context(device: torch.device, dtype: torch.dtype):
    """bf16 autocast on CUDA or CPU (weights and optimizer stay fp32); a no-op otherwise."""
    if device.type in ("cuda", "cpu") and dtype == torch.bfloat16:
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def wrap_model(model: nn.Module, env: DistEnv, *, compile: bool = False) -> nn.Module:
    """DDP-wrap (when distributed), then optionally ``torch.compile``.

    Keep a reference to the unwrapped model for saving; use :func:`unwrap` to get it back.
    """
    if env.ddp:
        ids = [env.local_rank] if env.device.type == "cuda" else None
        model = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    if compile:
        model = torch.compile(model)
    return model


def unwrap(model: nn.Module) -> nn.Module:
    """Strip ``torch.compile`` and DDP wrappers."""
    model = getattr(model, "_orig_mod", model)
    return getattr(model, "module", model) if isinstance(
        model, nn.parallel.DistributedDataParallel) else model


def _ddp_of(model: nn.Module) -> nn.parallel.DistributedDataParallel | None:
    inner = getattr(model, "_orig_mod", model)
    return inner if isinstance(inner, nn.parallel.DistributedDataParallel) else None


# --------------------------------------------------------------------------- optimizer


class OptimizerGroup:
    """Several optimizers stepped together (Muon + AdamW), with one state_dict.

    Every param group remembers its peak learning rate in ``base_lr`` so that a schedule
    multiplier can be applied with :meth:`set_lr_multiplier`.
    """

    def __init__(self, optimizers: list[torch.optim.Optimizer]):
        self.optimizers = optimizers
        for g in self.param_groups:
            g.setdefault("base_lr", g["lr"])

    @property
    def param_groups(self) -> list[dict]:
        return [g for o in self.optimizers for g in o.param_groups]

    def set_lr_multiplier(self, mult: float) -> None:
        for g in self.param_groups:
            g["lr"] = g["base_lr"] * mult

    def step(self) -> None:
        for o in self.optimizers:
            o.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for o in self.optimizers:
            o.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return {"optimizers": [o.state_dict() for o in self.optimizers]}

    def load_state_dict(self, state: dict) -> None:
        states = state["optimizers"]
        if len(states) != len(self.optimizers):
            raise ValueError("optimizer state does not match (adamw vs muon?)")
        for o, s in zip(self.optimizers, states):
            o.load_state_dict(s)


def _is_embedding_or_head(name: str) -> bool:
    return "embed" in name or "lm_head" in name or "wte" in name


def build_optimizer(model: nn.Module, *, kind: str = "adamw", lr: float = 3e-3,
                    matrix_lr: float = 0.02, weight_decay: float = 0.1,
                    betas: tuple[float, float] = (0.9, 0.95), eps: float = 1e-8,
                    ) -> OptimizerGroup:
    """AdamW (decay on >=2-D tensors only), or Muon on hidden matrices + AdamW on the rest.

    ``lr`` is AdamW's peak LR (embeddings, head, norms, and all matrices when
    ``kind="adamw"``); ``matrix_lr`` is Muon's peak LR for the 2-D hidden matrices.
    """
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    # The fused CUDA kernel is the fastest AdamW; CPU keeps the default implementation.
    fused = {"fused": True} if all(p.is_cuda for _, p in named) else {}
    if kind == "adamw":
        decay = [p for n, p in named if p.dim() >= 2]
        no_decay = [p for n, p in named if p.dim() < 2]
        groups = [{"params": decay, "weight_decay": weight_decay},
                  {"params": no_decay, "weight_decay": 0.0}]
        return OptimizerGroup([torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, **fused)])
    if kind != "muon":
        raise ValueError(f"optimizer must be adamw or muon, got {kind!r}")
    hidden = [p for n, p in named if p.dim() == 2 and not _is_embedding_or_head(n)]
    emb = [p for n, p in named if p.dim() >= 2 and _is_embedding_or_head(n)]
    rest = [p for n, p in named if p.dim() < 2]
    muon = torch.optim.Muon(hidden, lr=matrix_lr, weight_decay=weight_decay, momentum=0.95)
    adam_groups = [{"params": emb, "weight_decay": weight_decay},
                   {"params": rest, "weight_decay": 0.0}]
    adam = torch.optim.AdamW([g for g in adam_groups if g["params"]], lr=lr, betas=betas,
                             eps=eps, **fused)
    return OptimizerGroup([muon, adam])


# --------------------------------------------------------------------------- schedule

SCHEDULES = ("cosine", "linear", "wsd", "constant")


def lr_multiplier(step: int, total_steps: int, *, warmup_steps: int = 0,
                  schedule: str = "cosine", final_lr_frac: float = 0.1,
                  warmdown_frac: float = 0.2) -> float:
    """Multiplier on the peak LR for optimizer step ``step`` (0-based) of ``total_steps``.

    Linear warmup from ~0 to 1 over ``warmup_steps``, then:
    ``cosine``/``linear`` decay from 1 to ``final_lr_frac`` at the last step;
    ``wsd`` holds 1 and decays linearly over the last ``warmdown_frac`` of the steps;
    ``constant`` stays at 1.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    last = max(total_steps - 1, 1)
    if schedule == "wsd":
        start = max(warmup_steps, int(round(total_steps * (1 - warmdown_frac))))
        if step < start:
            return 1.0
        progress = (step - start) / max(last - start, 1)
    else:
        progress = (step - warmup_steps) / max(last - warmup_steps, 1)
    progress = min(max(progress, 0.0), 1.0)
    if schedule == "cosine":
        shape = 0.5 * (1.0 + math.cos(math.pi * progress))
    else:
        shape = 1.0 - progress
    return final_lr_frac + (1.0 - final_lr_frac) * shape


# --------------------------------------------------------------------------- one step


def grad_accum_steps(total_batch_tokens: int, device_batch_size: int, seq_len: int,
                     world_size: int = 1) -> int:
    """Micro-steps per optimizer step: micro_batch x seq_len x accum x world = target tokens."""
    per_micro = device_batch_size * seq_len * world_size
    if total_batch_tokens % per_micro:
        raise ValueError(
            f"total_batch_tokens={total_batch_tokens} is not a multiple of device_batch_size x "
            f"seq_len x world_size = {device_batch_size}x{seq_len}x{world_size} = {per_micro}")
    return total_batch_tokens // per_micro


def lm_loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Default loss: mean next-token cross-entropy of ``model(x, targets=y)``."""
    x, y = batch
    return model(x, targets=y)


def train_step(model: nn.Module, optimizer: OptimizerGroup,
               micro_batches: Iterable[Any], *, accum_steps: int,
               loss_fn: Callable[[nn.Module, Any], torch.Tensor] = lm_loss,
               grad_clip: float = 1.0, autocast=contextlib.nullcontext) -> dict:
    """Forward/backward ``accum_steps`` micro-batches, clip, then one optimizer step.

    Each micro loss is divided by ``accum_steps`` so the gradient is the mean over the
    whole batch; with equal-size micro-batches (pretraining) this equals one big batch.
    DDP all-reduces gradients only on the last micro-step (``no_sync`` before it).
    Returns ``{"loss": mean loss over ranks and micro-steps, "grad_norm": float | None}``.
    """
    ddp = _ddp_of(model)
    total = None  # summed on the device: no host sync per micro-step
    it = iter(micro_batches)
    for i in range(accum_steps):
        batch = next(it)
        sync = ddp is None or i == accum_steps - 1
        with (contextlib.nullcontext() if sync else ddp.no_sync()), autocast():
            loss = loss_fn(model, batch)
        (loss / accum_steps).backward()
        total = loss.detach().double() if total is None else total + loss.detach().double()
    grad_norm = None
    if grad_clip and grad_clip > 0:
        params = [p for g in optimizer.param_groups for p in g["params"]]
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, grad_clip))
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return {"loss": all_reduce_mean(total / accum_steps), "grad_norm": grad_norm}


# --------------------------------------------------------------------------- evaluation


@torch.no_grad()
def evaluate_loss(model: nn.Module, batches: Iterable[Any], *,
                  loss_fn: Callable[[nn.Module, Any], torch.Tensor] = lm_loss,
                  autocast=contextlib.nullcontext) -> float:
    """Mean loss over ``batches`` (equal-size batches), averaged over ranks; eval mode inside."""
    was_training = model.training
    model.eval()
    total, n = 0.0, 0
    for batch in batches:
        with autocast():
            total += float(loss_fn(model, batch).float())
        n += 1
    model.train(was_training)
    return all_reduce_mean(total / max(n, 1))


def tokens_per_byte(token_rows: Iterable[torch.Tensor], tokenizer: Any) -> float:
    """Tokens per UTF-8 byte of the decoded rows, summed over ranks (compute once per val set).

    Rows are decoded one by one; a multi-byte character cut at a row edge costs at most a
    few bytes of error, negligible over a validation set. Special tokens (the eos between
    documents) count as tokens but decode to zero bytes.
    """
    n_tokens, n_bytes = 0, 0
    for rows in token_rows:
        for row in rows.reshape(-1, rows.shape[-1]).tolist():
            n_tokens += len(row)
            n_bytes += len(tokenizer.decode(row, skip_special_tokens=True).encode("utf-8"))
    n_tokens, n_bytes = all_reduce_sum(n_tokens), all_reduce_sum(n_bytes)
    return n_tokens / max(n_bytes, 1)


def bits_per_byte(loss_nats: float, tokens_per_byte_ratio: float) -> float:
    """bits/byte = loss (nats/token) x tokens/byte / ln 2 -- comparable across tokenizers."""
    return loss_nats * tokens_per_byte_ratio / math.log(2)


# --------------------------------------------------------------------------- throughput

# Dense bf16 peak FLOPS per device (no sparsity), matched against the CUDA device name.
PEAK_FLOPS = {
    "H200": 989e12, "H100": 989e12, "H800": 989e12, "GH200": 989e12,
    "B200": 2250e12, "B100": 1750e12,
    "A100": 312e12, "A800": 312e12, "A10G": 70e12, "A10": 125e12, "A6000": 155e12,
    "L40S": 362e12, "L40": 181e12, "L4": 121e12, "4090": 165e12, "3090": 71e12,
    "V100": 125e12, "T4": 65e12,
}


def peak_flops(device: torch.device) -> float | None:
    """Peak bf16 FLOPS of ``device`` from :data:`PEAK_FLOPS`; None on CPU/MPS or unknown GPUs."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device).upper()
    for key in sorted(PEAK_FLOPS, key=len, reverse=True):  # "L40S" before "L40" before "L4"
        if key in name:
            return PEAK_FLOPS[key]
    return None


def model_flops_utilization(flops_per_token: float, tokens_per_s: float,
                            peak: float | None, world_size: int = 1) -> float | None:
    """MFU = flops/token x tokens/s / (peak x devices); None when the peak is unknown."""
    if not peak:
        return None
    return flops_per_token * tokens_per_s / (peak * world_size)


# --------------------------------------------------------------------------- logging


class MetricsLogger:
    """Rank-0 metrics sink: one json line per call, plus TensorBoard / W&B when asked.

    Optional backends are used only if requested *and* installed (a warning otherwise).
    ``resume_step`` drops lines past that step so that a resumed run's file reads like an
    uninterrupted one (the killed run may have logged steps it never checkpointed).
    Every line is strict JSON: a NaN or inf value is written as null.
    """

    def __init__(self, path: str | Path | None, *, enabled: bool = True,
                 tensorboard_dir: str | Path | None = None, wandb_project: str | None = None,
                 wandb_config: dict | None = None, resume_step: int | None = None):
        self.enabled = enabled and is_main_process()
        self._file = self._tb = self._wandb = None
        if not self.enabled:
            return
        if path is not None:
            path = Path(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            if resume_step is not None:
                truncate_metrics(path, resume_step)
            elif path.exists():
                path.unlink()
            self._file = open(path, "a", encoding="utf-8")
        if tensorboard_dir:
            self._tb = _open_tensorboard(tensorboard_dir)
        if wandb_project:
            self._wandb = _open_wandb(wandb_project, wandb_config or {})

    def log(self, record: dict) -> None:
        if not self.enabled:
            return
        if self._file is not None:
            self._file.write(json.dumps(_json_safe(record), allow_nan=False) + "\n")
            self._file.flush()
        step = record.get("step", 0)
        scalars = {k: v for k, v in record.items()
                   if k != "step" and isinstance(v, (int, float)) and v is not None}
        if self._tb is not None:
            for k, v in scalars.items():
                self._tb.add_scalar(k, v, step)
        if self._wandb is not None:
            self._wandb.log(scalars, step=step)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()
        self._file = self._tb = self._wandb = None


def _json_safe(record: dict) -> dict:
    """NaN and inf become null: bare NaN / Infinity are not JSON (strict parsers refuse
    the whole file), and null says "no valid value at this step"."""
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v
            for k, v in record.items()}


def truncate_metrics(path: Path, last_step: int) -> None:
    """Keep only the jsonl lines with ``step <= last_step``."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line).get("step", 0) <= last_step:
                keep.append(line)
        except json.JSONDecodeError:  # a line cut by SIGKILL
            continue
    path.write_text("".join(k + "\n" for k in keep), encoding="utf-8")


def _open_tensorboard(log_dir):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        print0("warning: tensorboard is not installed; --tensorboard ignored")
        return None
    return SummaryWriter(log_dir=str(log_dir))


def _open_wandb(project: str, config: dict):
    try:
        import wandb
    except ImportError:
        print0("warning: wandb is not installed; --wandb ignored")
        return None
    return wandb.init(project=project, config=config)


def read_metrics(path: str | Path) -> list[dict]:
    """All records of a metrics jsonl file."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


class Progress:
    """tqdm bar on rank 0 (silent elsewhere) showing loss, tokens/s and MFU when known."""

    def __init__(self, total: int, initial: int = 0, desc: str = "train",
                 enabled: bool = True):
        self.bar = None
        if enabled and is_main_process():
            from tqdm.auto import tqdm
            self.bar = tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True)

    def update(self, loss: float, tokens_per_s: float, mfu: float | None = None,
               **extra: Any) -> None:
        if self.bar is None:
            return
        post = {"loss": f"{loss:.4f}", "tok/s": f"{tokens_per_s:,.0f}"}
        if mfu is not None:
            post["mfu"] = f"{100 * mfu:.1f}%"
        post.update({k: f"{v:.4g}" if isinstance(v, float) else v for k, v in extra.items()})
        self.bar.set_postfix(post, refresh=False)
        self.bar.update(1)

    def write(self, msg: str) -> None:
        if self.bar is not None:
            self.bar.write(msg)
        else:
            print0(msg)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# --------------------------------------------------------------------------- checkpoints

_STEP_DIR = re.compile(r"^step_(\d+)$")


def checkpoint_path(root: str | Path, step: int) -> Path:
    """``root/step_000123``."""
    return Path(root) / f"step_{step:06d}"


def list_checkpoints(root: str | Path) -> list[tuple[int, Path]]:
    """Complete step checkpoints under ``root``, oldest first.

    Saving is atomic (temp dir + rename), so only exact ``step_N`` names count; temporary
    or half-written siblings left by a SIGKILL are ignored.
    """
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _STEP_DIR.match(p.name)
        if m and p.is_dir():
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest_checkpoint(root: str | Path) -> Path | None:
    """The newest complete ``step_N`` checkpoint under ``root``, or None."""
    found = list_checkpoints(root)
    return found[-1][1] if found else None


def prune_checkpoints(root: str | Path, keep: int) -> None:
    """Delete all but the newest ``keep`` step checkpoints (``keep <= 0`` keeps all)."""
    if keep <= 0:
        return
    for _, p in list_checkpoints(root)[:-keep]:
        shutil.rmtree(p, ignore_errors=True)


def remove_stale_temp_dirs(root: str | Path) -> None:
    """Delete ``.step_N.tmp-*`` directories that a killed checkpoint write left behind.

    Only ``.tmp-`` ones: a ``.step_N.old-*`` backup may still be needed to recover
    ``step_N`` (see ``gptlab.checkpoint.recover_dir``).
    """
    root = Path(root)
    if root.is_dir():
        for p in root.glob(".step_*.tmp-*"):
            shutil.rmtree(p, ignore_errors=True)


def resume_checkpoint(out: str | Path, resume: bool, is_main: bool = True) -> Path | None:
    """The checkpoint a run continues from: the newest complete ``out/ckpt/step_N`` when
    ``resume``, else None; damaged ones are skipped, saying why
    (:func:`newest_intact_checkpoint`). Cleans up on the way: temp dirs of a killed save,
    and on a fresh run the step checkpoints of an earlier one (a later --resume must not
    pick them up)."""
    root = Path(out) / "ckpt"
    if is_main:
        remove_stale_temp_dirs(root)
    latest = newest_intact_checkpoint(root) if resume else None
    if latest is None:
        if resume:
            print0(f"--resume: no checkpoint in {root}; starting fresh")
        elif is_main and list_checkpoints(root):
            print0(f"removing checkpoints of an earlier run in {root} (use --resume to continue)")
            shutil.rmtree(root)
        barrier()
    return latest


def newest_intact_checkpoint(root: str | Path) -> Path | None:
    """The newest ``step_N`` under ``root`` that passes ``verify_checkpoint`` (recorded
    sha256, weights that load and are finite, a loadable train_state.pt); each newer one
    is skipped with a line saying why. None when there are none; an error when there are
    some but none is intact (starting over silently would throw the run away)."""
    from gptlab.checkpoint import verify_checkpoint

    found = list_checkpoints(root)
    skipped = []
    for _, path in reversed(found):
        try:
            verify_checkpoint(path)
        except (ValueError, OSError) as e:  # CheckpointError, NonFiniteError, missing files
            print0(f"--resume: skipping {path.name}: {e}")
            skipped.append(path.name)
            continue
        if skipped:
            print0(f"--resume: continuing from {path.name}, the newest intact checkpoint "
                   f"(skipped {', '.join(skipped)})")
        return path
    if found:
        raise ValueError(f"--resume: none of the {len(found)} checkpoints in {root} is intact "
                         f"(see above); delete them to start over")
    return None


def check_resume(latest: Path, old: dict, fixed: dict) -> None:
    """Refuse to resume when a setting that shapes the model or the data stream changed
    (``old``: the saved config; ``fixed``: those settings now; keys the old run did not
    record are not compared)."""
    for key, value in fixed.items():
        if key in old and old[key] != value:
            raise ValueError(f"cannot resume {latest}: {key} was {old[key]!r}, now {value!r}")


def rng_state() -> dict:
    """Python, numpy and torch (CPU and CUDA) RNG states, for exact resume."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Inverse of :func:`rng_state`."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class StopSignal:
    """Turns SIGTERM and the first Ctrl-C into a flag the loop checks between steps.

    The loop then saves a checkpoint and exits (:meth:`raise_if_stopping`); a second
    Ctrl-C interrupts immediately. SIGKILL cannot be caught: atomic checkpoints plus
    ``--resume`` cover it. Use as a context manager (main thread only).
    """

    def __init__(self):
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> "StopSignal":
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave the handlers alone
                pass
        return self

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()

    def _handle(self, signum, frame) -> None:
        if self.signum == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt  # second Ctrl-C: stop now
        self.signum = signum

    def should_stop(self) -> bool:
        """True on every rank as soon as any rank got a signal (one tiny all-reduce)."""
        return all_reduce_sum(1.0 if self.signum is not None else 0.0) > 0

    def raise_if_stopping(self) -> None:
        """After the final save: re-raise as KeyboardInterrupt or exit 143 for SIGTERM."""
        if self.signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise SystemExit(128 + (self.signum or signal.SIGTERM))


# --------------------------------------------------------------------------- the loop


@dataclass
class LoopConfig:
    """What :func:`run_loop` needs to know; every stage fills one from its own config."""

    max_steps: int
    accum_steps: int = 1
    tokens_per_step: int = 0          # global tokens per optimizer step, for tokens/s
    warmup_steps: int = 0
    schedule: str = "cosine"
    final_lr_frac: float = 0.1
    warmdown_frac: float = 0.2
    grad_clip: float = 1.0
    eval_every: int = 0               # 0: only at the end
    save_every: int = 0               # 0: only at the end
    flops_per_token: float | None = None
    progress: bool = True
    desc: str = "train"


@dataclass
class LoopHooks:
    """The stage-specific parts of a loop.

    next_batch: () -> micro-batch (called ``accum_steps`` times per step);
    loss_fn: (model, micro-batch) -> scalar loss;
    evaluate: () -> dict of val metrics (e.g. ``val_loss``, ``val_bpb``), or None;
    save: (step, final) -> checkpoint path (called on every rank; write on rank 0 only).
    """

    next_batch: Callable[[], Any]
    save: Callable[[int, bool], Path | None]
    loss_fn: Callable[[nn.Module, Any], torch.Tensor] = lm_loss
    evaluate: Callable[[], dict] | None = None


def run_loop(model: nn.Module, optimizer: OptimizerGroup, cfg: LoopConfig, hooks: LoopHooks,
             *, env: DistEnv, logger: MetricsLogger, start_step: int = 0,
             autocast=contextlib.nullcontext) -> Path | None:
    """Train from ``start_step`` to ``cfg.max_steps``; returns the final checkpoint path.

    Step ``s`` (1-based: optimizer steps done) logs its training loss, then evaluates
    when ``s % eval_every == 0`` and saves when ``s % save_every == 0``. A fresh run
    also evaluates once at step 0. On SIGTERM / Ctrl-C: save, then exit. A non-finite
    loss or gradient norm, or non-finite weights at a save, raise NonFiniteError (logged as
    null first; nothing saved).
    """
    peak = peak_flops(env.device)
    bar = Progress(cfg.max_steps, start_step, cfg.desc, enabled=cfg.progress)
    if start_step == 0 and hooks.evaluate is not None:
        logger.log({"step": 0, **hooks.evaluate()})
    path, tokens = None, start_step * cfg.tokens_per_step
    with StopSignal() as stop:
        for step in range(start_step, cfg.max_steps):
            mult = lr_multiplier(step, cfg.max_steps, warmup_steps=cfg.warmup_steps,
                                 schedule=cfg.schedule, final_lr_frac=cfg.final_lr_frac,
                                 warmdown_frac=cfg.warmdown_frac)
            optimizer.set_lr_multiplier(mult)
            out, dt = _timed_step(model, optimizer, cfg, hooks, env, autocast)
            done, tokens = step + 1, tokens + cfg.tokens_per_step
            tps = cfg.tokens_per_step / max(dt, 1e-9)
            mfu = model_flops_utilization(cfg.flops_per_token or 0, tps, peak, env.world_size)
            rec = {"step": done, "loss": out["loss"], "lr": optimizer.param_groups[0]["lr"],
                   "lr_mult": mult, "tokens": tokens, "tokens_per_s": tps,
                   "grad_norm": out["grad_norm"], "mfu": mfu, "dt": dt}
            if not _finite_step(out):
                logger.log(rec)  # the bad step is on record (as null), then stop
                bar.close()
                saved = f"the last one this run saved is {path}" if path else "this run saved none"
                raise NonFiniteError(
                    f"step {done}: training loss {out['loss']}, gradient norm {out['grad_norm']}; "
                    f"stopping without saving ({saved}). Resume from an earlier checkpoint, "
                    f"e.g. with a lower learning rate")
            last = done == cfg.max_steps
            if hooks.evaluate is not None and (last or (cfg.eval_every and done % cfg.eval_every == 0)):
                rec.update(hooks.evaluate())
                bar.write(_format_eval(done, rec))
            logger.log(rec)
            bar.update(out["loss"], tps, mfu)
            stopping = stop.should_stop()
            if last or stopping or (cfg.save_every and done % cfg.save_every == 0):
                check_finite_weights(model, done)
                path = hooks.save(done, last)
            if stopping and not last:
                bar.close()
                print0(f"stopped at step {done}; checkpoint saved to {path}; rerun with --resume")
                stop.raise_if_stopping()
    bar.close()
    return path


def _finite_step(out: dict) -> bool:
    """One float test per step: the loss is already a host float (all-reduced)."""
    return math.isfinite(out["loss"]) and (out["grad_norm"] is None or math.isfinite(out["grad_norm"]))


def check_finite_weights(model: nn.Module, step: int) -> None:
    """Before a save: NonFiniteError when a parameter holds NaN or inf (one pass over the
    weights, on the device; cheap next to writing them)."""
    bad = [n for n, p in unwrap(model).named_parameters()
           if p.is_floating_point() and not bool(torch.isfinite(p.detach()).all())]
    if bad:
        raise NonFiniteError(f"step {step}: NaN or inf in {len(bad)} weight tensor(s) "
                             f"({', '.join(bad[:3])}); stopping without saving")


def _timed_step(model, optimizer, cfg: LoopConfig, hooks: LoopHooks, env: DistEnv, autocast):
    """One optimizer step and its wall time (CUDA-synchronised so the time is real)."""
    t0 = time.perf_counter()
    batches = (hooks.next_batch() for _ in range(cfg.accum_steps))
    out = train_step(model, optimizer, batches, accum_steps=cfg.accum_steps,
                     loss_fn=hooks.loss_fn, grad_clip=cfg.grad_clip, autocast=autocast)
    if env.device.type == "cuda":
        torch.cuda.synchronize(env.device)
    return out, time.perf_counter() - t0


def _format_eval(step: int, rec: dict) -> str:
    vals = ", ".join(f"{k} {v:.4f}" for k, v in rec.items()
                     if k.startswith("val_") and isinstance(v, float))
    return f"step {step}: {vals}"


def cli_field(default, help: str):
    """A dataclass field with a one-line help text; `gptlab.cli.add_dataclass_args` turns each
    such field of a stage's config into a `--flag` (shared by pretrain, sft and scaling)."""
    return dataclasses.field(default=default, metadata={"help": help})
