"""Scaling-law fits (numpy only): the Chinchilla loss law L(N, D), a power law L(C) of the
compute-optimal frontier, a capability curve, IsoFLOP minima, and the bootstrap around them.
`gptlab.scaling` runs the sweeps these are fitted to and predicts from the fits.
"""
from __future__ import annotations

import math

import numpy as np

#
# Both loss laws are fitted the same way: log L = LSE_k(t_k), each term t_k linear in the
# parameters theta (t = F @ theta, F a (terms, params, runs) array), with a Huber loss
# (delta 1e-3) on log L *summed* over runs, minimised by L-BFGS (:func:`lbfgs`) from the best
# points of a grid of initialisations. The bootstrap refits on runs resampled with
# replacement within each budget and reports percentile intervals.

HUBER_DELTA = 1e-3  # Hoffmann et al. 2022; Besiroglu et al. 2024


def _lse_huber(theta: np.ndarray, F: np.ndarray, target: np.ndarray) -> tuple[float, np.ndarray]:
    """Summed Huber loss of LSE_k(F_k @ theta) against target, and its gradient."""
    t = np.einsum("kpi,p->ki", F, theta)
    pred = np.logaddexp.reduce(t, axis=0)
    r = pred - target
    d = HUBER_DELTA
    loss = np.where(np.abs(r) <= d, 0.5 * r * r, d * (np.abs(r) - 0.5 * d)).sum()
    w = np.exp(t - pred)                       # softmax weights: d pred / d t_k
    grad = np.einsum("kpi,ki,i->p", F, w, np.clip(r, -d, d))
    return float(loss), grad


def _lse_huber_grid(grid: np.ndarray, F: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The same loss for every row of grid (G, P) at once."""
    t = np.einsum("kpi,gp->gki", F, grid)
    r = np.logaddexp.reduce(t, axis=1) - target
    d = HUBER_DELTA
    return np.where(np.abs(r) <= d, 0.5 * r * r, d * (np.abs(r) - 0.5 * d)).sum(-1)


def lbfgs(fun, x0, max_iter: int = 2000, history: int = 10, gtol: float = 1e-12,
          ftol: float = 1e-14) -> tuple[np.ndarray, float]:
    """Minimise ``fun`` (x -> (value, gradient)) by L-BFGS: the two-loop recursion (Nocedal &
    Wright, "Numerical Optimization", alg. 7.4) with a backtracking Armijo line search.
    numpy only: a few parameters need no BLAS threads (which thrash on a shared CPU)."""
    x = np.asarray(x0, dtype=np.float64).copy()
    f, g = fun(x)
    S, Y = [], []
    for _ in range(max_iter):
        if not np.isfinite(f) or np.abs(g).max() < gtol:
            break
        q, alphas = g.copy(), []
        for s_, y_ in zip(reversed(S), reversed(Y)):
            alphas.append(s_ @ q / (y_ @ s_))
            q -= alphas[-1] * y_
        if S:
            q *= (S[-1] @ Y[-1]) / (Y[-1] @ Y[-1])
        for s_, y_, a in zip(S, Y, reversed(alphas)):
            q += s_ * (a - y_ @ q / (y_ @ s_))
        d = -q if g @ q > 0 else -g
        t, fn = 1.0, np.inf
        while t > 1e-20:
            xn = x + t * d
            fn, gn = fun(xn)
            if np.isfinite(fn) and fn <= f + 1e-4 * t * (g @ d):
                break
            t *= 0.5
        if not (np.isfinite(fn) and fn <= f):
            break
        s_, y_ = xn - x, gn - g
        if y_ @ s_ > 1e-12 * np.linalg.norm(y_) * np.linalg.norm(s_):
            S, Y = (S + [s_])[-history:], (Y + [y_])[-history:]
        done = f - fn <= ftol * max(abs(f), abs(fn), 1e-300)
        x, f, g = xn, fn, gn
        if done:
            break
    return x, float(f)


def _best_fit(F, target, grid, extra_inits=(), top_k: int = 8) -> tuple[np.ndarray, float]:
    """L-BFGS from the best ``top_k`` grid points (and ``extra_inits``); the best result."""
    vals = _lse_huber_grid(grid, F, target)
    vals = np.where(np.isfinite(vals), vals, np.inf)
    inits = [grid[i] for i in np.argsort(vals)[:top_k]] + [np.asarray(x, dtype=np.float64) for x in extra_inits]
    best, best_val = None, float("inf")
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        for x0 in inits:
            x, val = lbfgs(lambda th: _lse_huber(th, F, target), x0)
            if np.isfinite(val) and val < best_val:
                best, best_val = x, val
    return best, best_val


# -- L(N, D) = E + A / N^alpha + B / D^beta


def _chinchilla_grid() -> np.ndarray:
    """Epoch AI's grid over (a, b, e, alpha, beta): a, b in {0, 5, .., 25}, e in
    {-1, -.5, .., 1}, alpha, beta in {0, .5, .., 2}."""
    ab, e, ex = np.arange(0, 2.01, 0.5), np.arange(-1, 1.01, 0.5), np.arange(0, 26, 5.0)
    return np.array(np.meshgrid(ex, ex, e, ab, ab, indexing="ij")).reshape(5, -1).T


def fit_chinchilla(N, D, L, inits=(), top_k: int = 8) -> dict:
    """Fit L(N, D) = E + A / N^alpha + B / D^beta as log L = LSE(a - alpha log N,
    b - beta log D, e), A = e^a, B = e^b, E = e^e (Huber on log L, summed over runs)."""
    x, y, target = (np.log(np.asarray(v, dtype=np.float64)) for v in (N, D, L))
    one, zero = np.ones_like(x), np.zeros_like(x)
    F = np.array([[one, zero, zero, -x, zero],     # a - alpha log N
                  [zero, one, zero, zero, -y],     # b - beta log D
                  [zero, zero, one, zero, zero]])  # e
    theta, val = _best_fit(F, target, _chinchilla_grid(), inits, top_k)
    a, b, e, alpha, beta = theta
    with np.errstate(over="ignore"):
        E, A, B = (float(np.exp(v)) for v in (e, a, b))
    return {"E": E, "A": A, "B": B, "alpha": float(alpha),
            "beta": float(beta), "objective": val, "theta": [float(t) for t in theta]}


def chinchilla_loss(p: dict, N, D):
    """E + A / N^alpha + B / D^beta (numpy, broadcasts)."""
    N, D = np.asarray(N, dtype=np.float64), np.asarray(D, dtype=np.float64)
    with np.errstate(all="ignore"):  # a wild bootstrap fit may overflow: inf, filtered later
        return p["E"] + p["A"] / N ** p["alpha"] + p["B"] / D ** p["beta"]


# -- L(C) = a * C^b + c on the compute-optimal frontier


def fit_power_law(C, L, inits=(), top_k: int = 8) -> dict:
    """Fit L(C) = a * C^b + c (b < 0 expected, c > 0) as log L = LSE(log a + b log C, log c)."""
    u, target = np.log(np.asarray(C, dtype=np.float64)), np.log(np.asarray(L, dtype=np.float64))
    one, zero = np.ones_like(u), np.zeros_like(u)
    F = np.array([[one, u, zero], [zero, zero, one]])
    lmin, lmax, umid = float(np.exp(target.min())), float(np.exp(target.max())), float(u.mean())
    grid = np.array([(math.log(max(lmax - f * lmin, 1e-3)) - b * umid, b, math.log(f * lmin) if f else -10.0)
                     for b in (-0.02, -0.05, -0.1, -0.2, -0.35, -0.5, -0.8, -1.2)
                     for f in (0.0, 0.3, 0.6, 0.8, 0.9, 0.95, 0.98)])
    theta, val = _best_fit(F, target, grid, inits, top_k)
    la, b, lc = theta
    with np.errstate(over="ignore"):
        a, c = float(np.exp(la)), float(np.exp(lc))
    return {"a": a, "b": float(b), "c": c, "objective": val,
            "theta": [float(t) for t in theta]}


def power_law(p: dict, C):
    """a * C^b + c (numpy)."""
    with np.errstate(all="ignore"):
        return p["a"] * np.asarray(C, dtype=np.float64) ** p["b"] + p["c"]


# -- capability: -log(accuracy) = k * C^-gamma (GPT-4 report, HumanEval)


def fit_capability(C, acc, n) -> dict:
    """Least squares of log(-log acc) = log k - gamma log C; accuracies are clipped to
    [1/(2n), 1 - 1/(2n)] so that 0 and 1 stay finite."""
    C, acc, n = (np.asarray(v, dtype=np.float64) for v in (C, acc, n))
    acc = np.clip(acc, 0.5 / n, 1 - 0.5 / n)
    slope, icpt = np.polyfit(np.log(C), np.log(-np.log(acc)), 1)
    return {"k": float(math.exp(icpt)), "gamma": float(-slope)}


def capability(p: dict, C):
    """Predicted accuracy exp(-k C^-gamma)."""
    return np.exp(-p["k"] * np.asarray(C, dtype=np.float64) ** -p["gamma"])


# -- IsoFLOP minima (approach 2)


def isoflop_minima(rows: list[dict]) -> list[dict]:
    """Per budget: the loss-optimal N from a parabola in log N through the IsoFLOP curve
    (the best run when the vertex falls outside the sizes tried or < 3 sizes), and the
    best run itself (for the capability fit)."""
    out = []
    for budget in sorted({r["budget"] for r in rows}):
        runs = sorted((r for r in rows if r["budget"] == budget), key=lambda r: r["params"])
        best = min(runs, key=lambda r: r["val_loss"])
        x = np.log([r["params"] for r in runs])  # centred below: polyfit stays well conditioned
        y = np.array([r["val_loss"] for r in runs])
        n_opt, l_opt, vertex = best["params"], best["val_loss"], False
        if len(set(x)) >= 3:
            x0 = x.mean()
            c2, c1, c0 = np.polyfit(x - x0, y, 2)
            xv = -c1 / (2 * c2) if c2 > 0 else None
            if xv is not None and x.min() <= xv + x0 <= x.max():
                n_opt, l_opt, vertex = float(math.exp(xv + x0)), float(c0 + c1 * xv + c2 * xv * xv), True
        flops = float(np.mean([r["flops"] for r in runs]))
        out.append({"budget": budget, "flops": flops, "n_opt": float(n_opt), "l_opt": float(l_opt),
                    "vertex": vertex, "best": best["name"], "best_flops": best["flops"],
                    "best_acc": best["fact_acc"], "best_n": best["fact_n"]})
    return out


# -- all fits together, with bootstrap intervals


def fit(rows: list[dict], *, max_flops: float | None = None, n_boot: int = 200,
        seed: int = 0) -> dict:
    """Fit every law on the runs whose budget is at most ``max_flops`` (all when None); a
    run's actual FLOPs are within half an optimizer step of its budget."""
    rows = [r for r in rows if max_flops is None or r["budget"] <= max_flops * (1 + 1e-9)]
    budgets = sorted({r["budget"] for r in rows})
    if len(budgets) < 2 or len(rows) < 6:
        raise ValueError(f"fit needs >= 6 runs over >= 2 budgets; got {len(rows)} runs, "
                         f"{len(budgets)} budgets (max_flops={max_flops})")
    main = _fit_once(rows)
    rng = np.random.default_rng(seed)
    boot = []
    for _ in range(n_boot):
        sample = [r for b in budgets for r in _resample([r for r in rows if r["budget"] == b], rng)]
        boot.append(_fit_once(sample, main))
    ratios = [r["val_bpb"] / r["val_loss"] for r in rows if r.get("val_bpb")]  # same val set
    bpb_per_nat = float(np.median(ratios)) if ratios else None
    return {**main, "max_flops": max_flops, "n_runs": len(rows), "runs": [r["name"] for r in rows],
            "budgets": budgets, "bpb_per_nat": bpb_per_nat, "bootstrap": boot}


def _resample(runs: list[dict], rng) -> list[dict]:
    return [runs[i] for i in rng.integers(0, len(runs), len(runs))]


def _fit_once(rows: list[dict], init: dict | None = None) -> dict:
    """One fit of every law (``init``: a previous fit whose parameters seed L-BFGS)."""
    minima = isoflop_minima(rows)
    top_k = 2 if init else 8  # bootstrap refits also start from the full-data fit
    ch = fit_chinchilla([r["params"] for r in rows], [r["tokens"] for r in rows],
                        [r["val_loss"] for r in rows],
                        inits=[init["chinchilla"]["theta"]] if init else (), top_k=top_k)
    fr = fit_power_law([m["flops"] for m in minima], [m["l_opt"] for m in minima],
                       inits=[init["frontier"]["theta"]] if init else (), top_k=top_k)
    cap = fit_capability([m["best_flops"] for m in minima], [m["best_acc"] for m in minima],
                         [m["best_n"] for m in minima])
    slope, icpt = np.polyfit(np.log([m["flops"] for m in minima]), np.log([m["n_opt"] for m in minima]), 1)
    return {"chinchilla": ch, "frontier": fr, "capability": cap, "isoflop": minima,
            "n_opt_law": {"G": float(math.exp(icpt)), "a": float(slope)}}


def fpt_curve(n, sizes: list[dict]):
    """FLOPs per token at N, interpolated log-log between sizes (dicts with params and
    flops_per_token), proportional to N beyond them."""
    sizes = sorted(sizes, key=lambda s: s["params"])
    ln, lf = np.log([s["params"] for s in sizes]), np.log([s["flops_per_token"] for s in sizes])
    x = np.log(np.asarray(n, dtype=np.float64))
    return np.exp(np.interp(x, ln, lf) + np.where(x < ln[0], x - ln[0], 0) + np.where(x > ln[-1], x - ln[-1], 0))
