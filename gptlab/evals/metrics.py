"""Metric math, independent of models: rates, tail statistics, calibration, bits per byte.

Everything here takes plain numbers (or judge `Verdict`s) and is checked in
tests/test_evals.py on hand-made inputs, so the definitions below are the definitions
the whole project reports (docs/EVALS.md repeats them).

- rate(flags): the fraction of True among the items a predicate applies to (None if none).
- tail_stats(scores): median and 5th percentile of sampled judge scores (numpy's linear
  interpolation between order statistics), the "worst output people screenshot" view.
- expected_calibration_error(conf, correct, n_bins=10): ECE of Guo et al. 2017 ("On
  Calibration of Modern Neural Networks", arXiv:1706.04599): equal-width confidence bins,
  sum over bins of (bin size / N) * |accuracy(bin) - mean confidence(bin)|.
- bits_per_byte(total_nats, total_bytes): total nats / (ln 2 * UTF-8 bytes), the
  tokenizer-independent language-modelling loss (nats summed over every scored token,
  bytes of the text those tokens spell).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Sequence


def rate(flags: Iterable[bool | None]) -> float | None:
    """Fraction of True among the non-None flags; None when no flag applies."""
    vals = [bool(f) for f in flags if f is not None]
    return sum(vals) / len(vals) if vals else None


def mean(values: Iterable[float | None]) -> float | None:
    vals = [float(v) for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation (numpy's default)."""
    if not values:
        raise ValueError("percentile of an empty list")
    xs = sorted(float(v) for v in values)
    pos = (len(xs) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def tail_stats(scores: Sequence[float], per_prompt: Sequence[Sequence[float]] | None = None) -> dict:
    """Median, 5th percentile and mean of all sampled scores; with `per_prompt` (the K
    scores of each prompt) also the mean over prompts of the worst of K."""
    out = {"tail_median": percentile(scores, 50), "tail_p5": percentile(scores, 5),
           "tail_mean": sum(scores) / len(scores)}
    if per_prompt:
        out["tail_worst_of_k"] = sum(min(s) for s in per_prompt) / len(per_prompt)
    return out


@dataclass
class ReliabilityBin:
    lo: float
    hi: float
    count: int
    accuracy: float | None
    confidence: float | None


def reliability_bins(confidence: Sequence[float], correct: Sequence[bool],
                     n_bins: int = 10) -> list[ReliabilityBin]:
    """Equal-width bins over [0, 1]; bin i holds lo < conf <= hi (the first bin also 0)."""
    if len(confidence) != len(correct):
        raise ValueError("confidence and correct differ in length")
    members: list[list[int]] = [[] for _ in range(n_bins)]
    for i, c in enumerate(confidence):
        if not 0.0 <= c <= 1.0 + 1e-9:
            raise ValueError(f"confidence {c} is outside [0, 1]")
        members[min(n_bins - 1, max(0, math.ceil(c * n_bins) - 1))].append(i)
    bins = []
    for b, idx in enumerate(members):
        acc = sum(bool(correct[i]) for i in idx) / len(idx) if idx else None
        conf = sum(confidence[i] for i in idx) / len(idx) if idx else None
        bins.append(ReliabilityBin(b / n_bins, (b + 1) / n_bins, len(idx), acc, conf))
    return bins


def expected_calibration_error(confidence: Sequence[float], correct: Sequence[bool],
                               n_bins: int = 10) -> float:
    """ECE = sum_b |B_b| / N * |acc(B_b) - conf(B_b)| over equal-width bins."""
    n = len(confidence)
    if n == 0:
        raise ValueError("ECE of an empty set")
    return sum(b.count / n * abs(b.accuracy - b.confidence)
               for b in reliability_bins(confidence, correct, n_bins) if b.count)


def brier_score(probs: Sequence[Sequence[float]], answer: Sequence[int]) -> float:
    """Mean over items of sum_k (p_k - [k == answer])^2 (multi-class Brier score)."""
    total = 0.0
    for p, a in zip(probs, answer, strict=True):
        total += sum((pk - (1.0 if k == a else 0.0)) ** 2 for k, pk in enumerate(p))
    return total / len(answer)


def calibration_metrics(probs: Sequence[Sequence[float]], answer: Sequence[int],
                        n_bins: int = 10) -> dict:
    """ECE, accuracy, mean confidence and Brier score of multiple-choice letter probabilities
    (each row normalized over the choices)."""
    conf = [max(p) for p in probs]
    pred = [max(range(len(p)), key=p.__getitem__) for p in probs]
    correct = [p == a for p, a in zip(pred, answer)]
    return {"ece": expected_calibration_error(conf, correct, n_bins),
            "mc_accuracy": sum(correct) / len(correct),
            "mc_confidence": sum(conf) / len(conf),
            "mc_brier": brier_score(probs, answer)}


def bits_per_byte(total_nats: float, total_bytes: int) -> float:
    """Total nats over the scored tokens / (ln 2 * UTF-8 bytes of their text)."""
    if total_bytes <= 0:
        raise ValueError("bits per byte needs a positive byte count")
    return total_nats / (math.log(2) * total_bytes)
