"""Tests of gptlab.scaling: the fitters recover known laws from noisy synthetic runs, and
a --quick sweep (a few tiny CPU runs on miniworld 'tiny') writes its CSV and plot, resumes
without retraining, and feeds predict / check end to end."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gptlab import scaling
from gptlab.scaling import SweepConfig, read_rows
from gptlab.scaling_fit import (
    capability, chinchilla_loss, fit, fit_capability, fit_chinchilla, fit_power_law, power_law,
)

TRUE = {"E": 1.3, "A": 220.0, "alpha": 0.38, "B": 410.0, "beta": 0.31}


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def synthetic_rows(noise: float, seed: int = 0) -> list[dict]:
    """IsoFLOP grid (4 budgets x 6 sizes) of the TRUE law, log-normal noise, C = 6ND."""
    rng = np.random.default_rng(seed)
    rows = []
    for c in np.geomspace(1e12, 8e12, 4):
        for n in np.geomspace(2e4, 2e6, 6):
            d = c / (6 * n)
            loss = float(chinchilla_loss(TRUE, n, d) * math.exp(rng.normal(0, noise)))
            acc = float(math.exp(-40.0 * c ** -0.12) * math.exp(rng.normal(0, noise)))
            rows.append({"name": f"C{c:.3g}_{n:.0f}", "budget": float(c), "params": float(n),
                         "tokens": float(d), "flops": float(c), "flops_per_token": 6 * n,
                         "val_loss": loss, "fact_acc": acc, "fact_n": 10_000})
    return rows


def test_chinchilla_fit_recovers_known_parameters():
    rows = synthetic_rows(noise=0.003)
    p = fit_chinchilla([r["params"] for r in rows], [r["tokens"] for r in rows],
                       [r["val_loss"] for r in rows])
    assert p["alpha"] == pytest.approx(TRUE["alpha"], abs=0.04)
    assert p["beta"] == pytest.approx(TRUE["beta"], abs=0.04)
    assert p["E"] == pytest.approx(TRUE["E"], rel=0.06)
    # what matters: extrapolation 10x in compute beyond the data
    for n, d in [(3e6, 3e7), (1e6, 8e7), (5e6, 5e6)]:
        assert chinchilla_loss(p, n, d) == pytest.approx(chinchilla_loss(TRUE, n, d), rel=0.01)


def test_chinchilla_fit_is_exact_without_noise():
    rows = synthetic_rows(noise=0.0)
    p = fit_chinchilla([r["params"] for r in rows], [r["tokens"] for r in rows],
                       [r["val_loss"] for r in rows])
    for k, v in TRUE.items():
        assert p[k] == pytest.approx(v, rel=1e-3), k


def test_power_law_fit_recovers_known_parameters():
    rng = np.random.default_rng(1)
    C = np.geomspace(1e11, 1e14, 8)
    L = (5.0 * C ** -0.08 + 0.9) * np.exp(rng.normal(0, 0.002, len(C)))
    p = fit_power_law(C, L)
    assert p["b"] == pytest.approx(-0.08, abs=0.015)
    assert p["c"] == pytest.approx(0.9, rel=0.15)
    assert power_law(p, 1e15) == pytest.approx(5.0 * 1e15 ** -0.08 + 0.9, rel=0.01)


def test_capability_fit_recovers_known_parameters():
    C = np.geomspace(1e11, 1e13, 5)
    acc = np.exp(-30.0 * C ** -0.1)
    p = fit_capability(C, acc, np.full(5, 10 ** 6))
    assert p["gamma"] == pytest.approx(0.1, abs=1e-3)
    assert capability(p, 1e14) == pytest.approx(math.exp(-30.0 * 1e14 ** -0.1), rel=1e-3)


def test_fit_with_bootstrap_brackets_the_truth():
    rows = synthetic_rows(noise=0.005, seed=2)
    r = fit(rows, n_boot=40)
    assert len(r["bootstrap"]) == 40 and r["n_runs"] == 24
    n, d = 1.5e6, 1e7  # 11x the largest budget
    boot = [chinchilla_loss(b["chinchilla"], n, d) for b in r["bootstrap"]]
    lo, hi = np.percentile(boot, [2.5, 97.5])
    truth = chinchilla_loss(TRUE, n, d)
    assert lo * 0.99 <= truth <= hi * 1.01
    assert chinchilla_loss(r["chinchilla"], n, d) == pytest.approx(truth, rel=0.02)
    # the IsoFLOP minima move to larger N as compute grows
    n_opt = [m["n_opt"] for m in r["isoflop"]]
    assert n_opt == sorted(n_opt) and r["n_opt_law"]["a"] > 0
    with pytest.raises(ValueError, match="fit needs"):
        fit(rows, max_flops=1.5e12)


def test_parse_size_and_grid():
    assert scaling.parse_size("2x96") == (2, 96)
    assert scaling.parse_size("3") == (3, 192)
    cfg = scaling.resolved(SweepConfig(quick=True))
    plans = scaling.plan_grid(cfg, vocab_size=384)
    assert len(plans) == 6
    for p in plans:  # tokens = budget / flops_per_token, to one optimizer step
        assert abs(p["flops"] - p["budget"]) <= p["flops_per_token"] * p["batch_tokens"] / 2 + 1


@pytest.fixture(scope="module")
def quick_sweep(tmp_path_factory):
    out = tmp_path_factory.mktemp("scaling")
    torch.set_num_threads(1)
    path = scaling.sweep(SweepConfig(out=str(out), quick=True))
    return out, path


def test_quick_sweep_writes_csv_and_plot(quick_sweep):
    out, path = quick_sweep
    rows = read_rows(path)
    assert len(rows) == 6 and len({r["budget"] for r in rows}) == 2
    for r in rows:
        assert r["val_loss"] > 0 and r["val_bpb"] > 0 and 0 <= r["fact_acc"] <= 1
        assert r["fact_n"] == 12 and r["tokens"] == r["steps"] * r["batch_tokens"]
        assert (out / "runs" / r["name"] / "final" / "model.safetensors").is_file()
    assert (out / "scaling.png").stat().st_size > 10_000
    assert (out / "sweep.json").is_file()


def test_sweep_resumes_without_retraining(quick_sweep, monkeypatch):
    out, path = quick_sweep
    before = path.read_text()
    calls = []
    monkeypatch.setattr(scaling, "train_run", lambda *a, **k: calls.append(a) or 1 / 0)
    scaling.sweep(SweepConfig(out=str(out), quick=True))  # every row is done: nothing runs
    assert calls == [] and path.read_text() == before


def test_sweep_reruns_only_missing_rows(quick_sweep, monkeypatch):
    out, path = quick_sweep
    lines = path.read_text().splitlines()
    dropped = lines[3].split(",")[0]
    path.write_text("\n".join(lines[:3] + lines[4:]) + "\n")
    trained = []
    import gptlab.train.pretrain as pt
    monkeypatch.setattr(pt, "pretrain", lambda cfg: trained.append(cfg) or 1 / 0)
    scaling.sweep(SweepConfig(out=str(out), quick=True))
    rows = read_rows(path)
    assert len(rows) == 6 and rows[-1]["name"] == dropped
    assert trained == []  # its final checkpoint was there: evaluated, not retrained


def test_predict_and_check_end_to_end(quick_sweep):
    out, _ = quick_sweep
    rows = read_rows(out / "sweep.csv")
    target = max(r["flops"] for r in rows)
    pred = scaling.run_predict(out, flops=target, max_fit_frac=1.0, n_boot=5)
    for key in ("loss", "loss_nd"):
        assert pred[key]["lo"] <= pred[key]["hi"] and pred[key]["value"] > 0
    assert 0 <= pred["fact_acc"]["value"] <= 1
    assert pred["config"]["size"] in scaling.LADDER
    assert (out / "predict.json").is_file() and (out / "scaling.png").is_file()
    report = scaling.check(out, flops=target, max_fit_frac=1.0, n_boot=5)
    actual = report["actual"]
    assert actual["name"].startswith("check_") and actual["val_loss"] > 0
    assert report["loss_rel_error"] == pytest.approx(
        (pred["loss"]["value"] - actual["val_loss"]) / actual["val_loss"], rel=0.2, abs=0.05)
    assert report["loss_nd_rel_error"] == pytest.approx(
        (pred["loss_nd"]["value"] - actual["val_loss"]) / actual["val_loss"], rel=0.2, abs=0.05)
    assert (out / "check.json").is_file() and len(read_rows(out / "check.csv")) == 1
    again = scaling.check(out, flops=target, max_fit_frac=1.0, n_boot=5)  # no retraining, no new row
    assert again["actual"]["val_loss"] == actual["val_loss"] and len(read_rows(out / "check.csv")) == 1


def test_cli_fit(quick_sweep, capsys):
    from gptlab.cli import main

    out, _ = quick_sweep
    assert main(["scaling", "fit", "--out", str(out), "--bootstrap", "3"]) == 0
    text = capsys.readouterr().out
    assert "L(N, D)" in text and (out / "fit.json").is_file()
