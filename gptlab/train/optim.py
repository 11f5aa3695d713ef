"""Optimizers and learning-rate schedules.

- AdamW with weight decay on matrices only (nanoGPT), or Muon for the 2-D hidden matrices
  (Keller Jordan, "Muon: an optimizer for hidden layers", 2024) with AdamW for embeddings,
  head and norms (:func:`build_optimizer`), stepped together as one :class:`OptimizerGroup`;
- the LR schedule: linear warmup, then cosine / linear decay or a late linear warmdown
  (WSD, Hu et al. 2024, "MiniCPM") to a floor (:func:`lr_multiplier`).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

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

    def state_dict(self, get=None) -> dict:
        """``get(optimizer) -> its state`` (default ``optimizer.state_dict()``; FSDP gathers
        the shards instead, gptlab.train.dist.full_optimizer_state)."""
        get = get or (lambda o: o.state_dict())
        return {"optimizers": [get(o) for o in self.optimizers]}

    def load_state_dict(self, state: dict, put=None) -> None:
        """``put(optimizer, its state)`` (default ``optimizer.load_state_dict``)."""
        put = put or (lambda o, s: o.load_state_dict(s))
        states = state["optimizers"]
        if len(states) != len(self.optimizers):
            raise ValueError("optimizer state does not match (adamw vs muon?)")
        for o, s in zip(self.optimizers, states):
            put(o, s)


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
    # The fused kernel is the fastest AdamW on CUDA and on CPU too: one pass over each tensor
    # instead of a dozen foreach ops (bench/adamw.py, 2 CPU threads: 4.1 against 16.0 ms a
    # step at depth 4, 38.5 against 168 ms for SmolLM2's top 16 blocks). Other devices keep
    # the default implementation.
    fused = {"fused": True} if named and all(p.device.type in ("cpu", "cuda") for _, p in named) else {}
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
