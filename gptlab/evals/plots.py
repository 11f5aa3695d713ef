"""PNG plots for evals and the report card (matplotlib, Agg backend: no display needed)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence


def _plt():
    import matplotlib
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    _plt().close(fig)
    tmp.replace(path)
    return path


def reliability_plot(bins: Sequence[dict], ece: float, path: str | Path, title: str = "") -> Path:
    """Accuracy per confidence bin against the diagonal (perfect calibration), with counts."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.6, 4.2))
    ax.plot([0, 1], [0, 1], "--", color="gray", lw=1, label="perfectly calibrated")
    for b in bins:
        if not b["count"]:
            continue
        width = b["hi"] - b["lo"]
        ax.bar(b["lo"], b["accuracy"], width=width, align="edge", color="tab:blue",
               edgecolor="black", alpha=0.8)
        ax.bar(b["lo"], b["confidence"] - b["accuracy"], bottom=b["accuracy"], width=width,
               align="edge", color="tab:red", alpha=0.25)
        ax.text(b["lo"] + width / 2, min(b["accuracy"], 0.93) + 0.02, str(b["count"]),
                ha="center", fontsize=7)
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence (max letter probability)",
           ylabel="accuracy", title=(title + "\n" if title else "") + f"ECE = {ece:.3f}")
    ax.legend(loc="upper left", fontsize=8)
    return _save(fig, path)


def bar_chart(metrics: list[str], series: dict[str, list[float | None]], path: str | Path,
              title: str = "", ylabel: str = "", ylim: tuple[float, float] | None = None) -> Path:
    """Grouped bars: one group per metric, one bar per model (series name -> values)."""
    plt = _plt()
    n_m, n_s = len(metrics), max(1, len(series))
    fig, ax = plt.subplots(figsize=(min(12.0, max(5.0, 2 + 0.55 * n_m * n_s ** 0.5)), 3.8))
    width = 0.8 / n_s
    for j, (name, values) in enumerate(series.items()):
        xs = [i - 0.4 + width * (j + 0.5) for i in range(n_m)]
        ys = [v if v is not None else 0.0 for v in values]
        ax.bar(xs, ys, width=width, label=name)
    ax.set_xticks(range(n_m))
    ax.set_xticklabels(metrics, rotation=35, ha="right", fontsize=8)
    if ylim:
        ax.set_ylim(*ylim)
    ax.set(title=title, ylabel=ylabel)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def curves_plot(panels: list[tuple[str, dict[str, tuple[list[float], list[float]]]]],
                path: str | Path, title: str = "") -> Path:
    """One subplot per (y label, {line label: (steps, values)})."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.6), squeeze=False,
                             layout="constrained")
    for ax, (label, lines) in zip(axes[0], panels):
        for name, (xs, ys) in lines.items():
            style = "o-" if len(xs) <= 30 and "val" in name else "-"
            ax.plot(xs, ys, style, ms=3, lw=1.2, label=name,
                    alpha=0.35 if name.endswith("(raw)") else 1.0)
        ax.set(xlabel="step", ylabel=label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    return _save(fig, path)
