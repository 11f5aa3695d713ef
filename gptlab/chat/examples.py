"""Rendered conversations as training examples and batches.

Batches (``collate``): every row holds exactly one whole conversation, right-padded.
With causal attention a real token only sees earlier tokens of its own row, so no
attention or loss can cross conversations, position ids start at 0 for every
conversation as they do at generation time, and no attention mask is needed.
``length_grouped_batches`` puts conversations of similar length together, so the padding
costs little (measured in docs/CHAT.md). Conversations longer than the context are
dropped (default) or truncated, and counted (``fit_examples``).
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np
import torch

from gptlab.chat.render import IGNORE_INDEX


# --------------------------------------------------------------------------- examples


@dataclass
class Example:
    """One training sequence: token ids and a 0/1 loss mask of the same length."""

    ids: np.ndarray
    mask: np.ndarray

    @classmethod
    def make(cls, ids, mask) -> "Example":
        return cls(np.asarray(ids, dtype=np.int32), np.asarray(mask, dtype=bool))

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def n_targets(self) -> int:
        """Tokens in the loss (the first token is never a target: nothing predicts it)."""
        return int(self.mask[1:].sum())


@dataclass
class FitStats:
    """What ``fit_examples`` did, for the log and data.json. Only the events are counted;
    every example is kept (its length in ``lengths``) or dropped (too long, or no target),
    and a too-long one is either truncated or dropped, so the totals follow."""

    truncated: int = 0
    dropped_too_long: int = 0
    dropped_no_targets: int = 0
    max_len: int = 0
    lengths: list = field(default_factory=list, repr=False)   # of the kept examples

    @property
    def kept(self) -> int:
        return len(self.lengths)

    @property
    def too_long(self) -> int:
        return self.truncated + self.dropped_too_long

    @property
    def total(self) -> int:
        return self.kept + self.dropped_too_long + self.dropped_no_targets

    def as_dict(self) -> dict:
        d = {"total": self.total, "kept": self.kept, "too_long": self.too_long,
             "truncated": self.truncated, "dropped_too_long": self.dropped_too_long,
             "dropped_no_targets": self.dropped_no_targets, "max_len": self.max_len}
        if self.lengths:
            arr = np.asarray(self.lengths)
            d.update(mean_len=round(float(arr.mean()), 1), p50_len=int(np.median(arr)),
                     p99_len=int(np.percentile(arr, 99)))
        return d

    def summary(self, seq_len: int, policy: str) -> str:
        s = f"{self.kept}/{self.total} kept"
        if self.too_long:
            what = (f"{self.truncated} truncated" if policy == "truncate"
                    else f"{self.dropped_too_long} dropped")
            s += f"; {self.too_long} longer than {seq_len + 1} tokens ({what}; longest {self.max_len})"
        if self.dropped_no_targets:
            s += f"; {self.dropped_no_targets} dropped with no assistant tokens to learn"
        return s


TOO_LONG_POLICIES = ("drop", "truncate")


def fit_examples(examples: Iterable[Example], seq_len: int, policy: str = "drop"
                 ) -> tuple[list[Example], FitStats]:
    """Keep the examples that fit a context of ``seq_len`` (a row is ``len - 1`` tokens).

    Longer ones are dropped (``policy="drop"``), or cut to their first ``seq_len + 1``
    tokens (``"truncate"``; the cut turn then lacks its end-of-turn token). Examples with
    no target token left are always dropped.
    """
    if policy not in TOO_LONG_POLICIES:
        raise ValueError(f"too-long policy must be one of {TOO_LONG_POLICIES}, got {policy!r}")
    kept, st = [], FitStats()
    for ex in examples:
        st.max_len = max(st.max_len, len(ex))
        if len(ex) > seq_len + 1:
            if policy == "drop":
                st.dropped_too_long += 1
                continue
            ex = Example(ex.ids[:seq_len + 1], ex.mask[:seq_len + 1])
            st.truncated += 1
        if ex.n_targets == 0:
            st.dropped_no_targets += 1
            continue
        kept.append(ex)
        st.lengths.append(len(ex))
    return kept, st


def text_examples(token_docs: Iterable[Sequence[int]], seq_len: int) -> list[Example]:
    """Pretraining text as examples: each document (ids ending with eos) is cut into
    pieces of at most ``seq_len + 1`` tokens, every token a target."""
    out = []
    for ids in token_docs:
        for i in range(0, max(len(ids) - 1, 1), seq_len):
            piece = ids[i:i + seq_len + 1]
            if len(piece) >= 2:
                out.append(Example.make(piece, np.ones(len(piece), dtype=bool)))
    return out


# --------------------------------------------------------------------------- batches


def collate(examples: Sequence[Example], pad_id: int, *, pad_multiple: int = 16,
            seq_len: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of one conversation each, right-padded: ``(x, y)`` int64 ``(B, T)``.

    ``x[i, t]`` is token t, ``y[i, t]`` the next token when the mask trains it, else
    ``IGNORE_INDEX`` (also on padding). T is the longest row rounded up to
    ``pad_multiple`` (fewer distinct shapes for compiled / CUDA kernels), at most ``seq_len``.
    """
    T = max(len(e) - 1 for e in examples)
    if pad_multiple > 1:
        T = -(-T // pad_multiple) * pad_multiple
    if seq_len is not None:
        T = min(T, max(seq_len, max(len(e) - 1 for e in examples)))
    x = np.full((len(examples), T), pad_id, dtype=np.int64)
    y = np.full((len(examples), T), IGNORE_INDEX, dtype=np.int64)
    for i, e in enumerate(examples):
        n = len(e) - 1
        x[i, :n] = e.ids[:-1]
        y[i, :n] = np.where(e.mask[1:], e.ids[1:], IGNORE_INDEX)
    return torch.from_numpy(x), torch.from_numpy(y)


def length_grouped_batches(lengths: Sequence[int], rows: int, seed: int, epoch: int,
                           group: int = 64) -> list[list[int]]:
    """One epoch of micro-batches (lists of example indices), ``rows`` per batch (the last
    may be short). Examples are shuffled, sorted by length within windows of
    ``group * rows`` (so a batch holds similar lengths and little padding), and the
    batches shuffled again; the result depends only on (seed, epoch)."""
    rng = random.Random(f"sft-{seed}-{epoch}")
    order = list(range(len(lengths)))
    rng.shuffle(order)
    batches = []
    window = max(rows * group, rows)
    for w in range(0, len(order), window):
        chunk = sorted(order[w:w + window], key=lambda i: lengths[i])
        batches += [chunk[i:i + rows] for i in range(0, len(chunk), rows)]
    rng.shuffle(batches)
    return batches
