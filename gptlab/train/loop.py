"""The training loop every stage (pretrain, SFT, reward, DPO) drives with its own callables.

- one optimizer step with gradient accumulation, DDP ``no_sync`` and clipping
  (:func:`train_step`);
- validation loss and bits per byte (:func:`evaluate_loss`, :func:`tokens_per_byte`);
- a guard: a NaN / inf loss or gradient norm (checked every step) or weights (checked
  before every save) stop the run with :class:`NonFiniteError`, never saving them;
- :func:`run_loop`: the generic step loop (schedule, logging, eval, save, signals).

The pieces it is built from live beside it: `gptlab.train.dist` (processes, precision),
`gptlab.train.optim` (optimizers, schedules), `gptlab.train.metrics` (logging, progress),
`gptlab.train.checkpoints` (step folders, resume, signals).
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
import torch.nn as nn

from gptlab.checkpoint import NonFiniteError
from gptlab.train.checkpoints import StopSignal
from gptlab.train.dist import (
    DistEnv, all_reduce_mean, all_reduce_sum, ddp_of, is_compiled, is_sharded, local_tensor, print0,
    unwrap,
)
from gptlab.train.metrics import MetricsLogger, Progress, model_flops_utilization, peak_flops
from gptlab.train.optim import OptimizerGroup, lr_multiplier

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
    DDP all-reduces gradients only on the last micro-step (``no_sync`` before it); FSDP
    reduce-scatters them only then too (``set_requires_gradient_sync``).
    Returns ``{"loss": mean loss over ranks and micro-steps, "grad_norm": float | None}``.
    """
    ddp = ddp_of(model)
    fsdp = unwrap(model) if is_sharded(model) else None
    total = None  # summed on the device: no host sync per micro-step
    it = iter(micro_batches)
    for i in range(accum_steps):
        batch = next(it)
        sync = ddp is None or i == accum_steps - 1
        if fsdp is not None:
            fsdp.set_requires_gradient_sync(i == accum_steps - 1)
        with (contextlib.nullcontext() if sync else ddp.no_sync()), autocast():
            loss = loss_fn(model, batch)
        (loss / accum_steps).backward()
        total = loss.detach().double() if total is None else total + loss.detach().double()
    grad_norm = None
    if grad_clip and grad_clip > 0:
        params = [p for g in optimizer.param_groups for p in g["params"]]
        norm = torch.nn.utils.clip_grad_norm_(params, grad_clip)
        # under FSDP the norm is a DTensor over the shards: its full value is the same on every rank
        grad_norm = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
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
            if step == start_step and is_compiled(model):
                rec["compile_s"] = dt  # the first step traces and compiles the graph
                bar.write(f"step {done}: {dt:.1f} s, torch.compile included")
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
           if p.is_floating_point() and not bool(torch.isfinite(local_tensor(p.detach())).all())]
    # FSDP: each rank sees its own shards, so every rank must learn that one of them is bad
    if all_reduce_sum(len(bad)) and not bad:
        bad = ["a shard on another rank"]
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
