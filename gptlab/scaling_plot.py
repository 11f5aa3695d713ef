"""The scaling figure (scaling.png): IsoFLOP curves, the compute-optimal frontier and the
capability curve, with the fits, a prediction's interval and a check's actual result."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from gptlab.scaling_fit import capability, chinchilla_loss, fpt_curve, power_law

def plot(rows: list[dict], fit_result: dict | None, path: str | Path,
         prediction: dict | None = None, actual: dict | None = None) -> Path:
    """IsoFLOP curves (loss vs N), the frontier L(C) and the capability vs compute, with
    the fits, the prediction (interval) and the actual result of a check when given."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    budgets = sorted({r["budget"] for r in rows})
    colors = plt.cm.viridis(np.linspace(0, 0.85, max(len(budgets), 1)))
    _plot_isoflops(axes[0], rows, budgets, colors, fit_result, prediction, actual)
    _plot_frontier(axes[1], rows, fit_result, prediction, actual)
    _plot_capability(axes[2], rows, fit_result, prediction, actual)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _plot_isoflops(ax, rows, budgets, colors, fit_result, prediction, actual):
    for b, col in zip(budgets, colors):
        runs = sorted((r for r in rows if r["budget"] == b), key=lambda r: r["params"])
        used = fit_result is None or r_in(runs[0], fit_result)
        ax.plot([r["params"] for r in runs], [r["val_loss"] for r in runs], "o" if used else "x",
                color=col, label=f"C={b:.2g}")
        if fit_result is not None:
            n = np.geomspace(runs[0]["params"] / 1.5, runs[-1]["params"] * 1.5, 100)
            ax.plot(n, chinchilla_loss(fit_result["chinchilla"], n, b / fpt_curve(n, rows)), "-",
                    color=col, lw=1)
    if prediction is not None:
        c = prediction["config"]
        ax.errorbar([c["params"]], [prediction["loss_nd"]["value"]], yerr=_err(prediction["loss_nd"]),
                    fmt="*", color="red", ms=12, capsize=3,
                    label=f"L(N, D) prediction, C={prediction['flops']:.2g}")
    if actual is not None:
        ax.plot([actual["params"]], [actual["val_loss"]], "D", color="black", label="actual")
    ax.set(xscale="log", xlabel="parameters N (non-embedding)", ylabel="final val loss (nats/token)",
           title="IsoFLOP curves; lines: fitted L(N, D)")
    ax.legend(fontsize=7)


def r_in(row: dict, fit_result: dict) -> bool:
    return row["name"] in set(fit_result.get("runs", ()))


def _err(p: dict):
    return [[max(p["value"] - p["lo"], 0)], [max(p["hi"] - p["value"], 0)]]


def _plot_frontier(ax, rows, fit_result, prediction, actual):
    ax.plot([r["flops"] for r in rows], [r["val_loss"] for r in rows], ".", color="0.7", label="runs")
    if fit_result is not None:
        m = fit_result["isoflop"]
        ax.plot([x["flops"] for x in m], [x["l_opt"] for x in m], "o", color="C0", label="IsoFLOP minima")
        hi = prediction["flops"] if prediction else max(r["flops"] for r in rows)
        c = np.geomspace(min(r["flops"] for r in rows) / 1.5, hi * 1.5, 100)
        f = fit_result["frontier"]
        ax.plot(c, power_law(f, c), "-", color="C0",
                label=f"L(C) = {f['a']:.3g} C^{f['b']:.3f} + {f['c']:.3f}")
        band = np.array([power_law(b["frontier"], c) for b in fit_result["bootstrap"]])
        if len(band):
            band = np.where(np.isfinite(band), band, np.nan)
            ax.fill_between(c, *np.nanpercentile(band, [2.5, 97.5], axis=0), color="C0", alpha=0.15,
                            label="95% bootstrap band")
    if prediction is not None:
        ax.errorbar([prediction["flops"]], [prediction["loss"]["value"]], yerr=_err(prediction["loss"]),
                    fmt="*", color="red", ms=12, capsize=3, label="L(C) prediction")
        ax.plot([prediction["flops"]], [prediction["loss_nd"]["value"]], "*", color="orange",
                ms=9, label="L(N, D) prediction")
    if actual is not None:
        ax.plot([actual["flops"]], [actual["val_loss"]], "D", color="black", label="actual")
    ax.set(xscale="log", yscale="log", xlabel="training compute C (FLOPs)", ylabel="final val loss",
           title="compute-optimal frontier")
    ax.legend(fontsize=7)


def _plot_capability(ax, rows, fit_result, prediction, actual):
    ax.plot([r["flops"] for r in rows], [r["fact_acc"] for r in rows], ".", color="0.7", label="runs")
    if fit_result is not None:
        m = fit_result["isoflop"]
        ax.plot([x["best_flops"] for x in m], [x["best_acc"] for x in m], "o", color="C2",
                label="best run per budget")
        hi = prediction["flops"] if prediction else max(r["flops"] for r in rows)
        c = np.geomspace(min(r["flops"] for r in rows) / 1.5, hi * 1.5, 100)
        p = fit_result["capability"]
        ax.plot(c, capability(p, c), "-", color="C2",
                label=f"-log acc = {p['k']:.3g} C^-{p['gamma']:.3f}")
    if prediction is not None:
        ax.errorbar([prediction["flops"]], [prediction["fact_acc"]["value"]],
                    yerr=_err(prediction["fact_acc"]), fmt="*", color="red", ms=12, capsize=3,
                    label="predicted")
    if actual is not None:
        ax.plot([actual["flops"]], [actual["fact_acc"]], "D", color="black", label="actual")
    ax.set(xscale="log", xlabel="training compute C (FLOPs)", ylabel="fact-completion accuracy",
           title="capability: miniworld fact completion")
    ax.legend(fontsize=7)
