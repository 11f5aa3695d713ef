"""Tests of gptlab.train: the loop toolkit and pretraining, on CPU-tiny models.

The parts that are easy to get subtly wrong get exact checks: a run killed with SIGKILL
(mid-step and mid-checkpoint) or stopped with SIGTERM and then resumed reproduces the
uninterrupted loss curve and weights; two DDP ranks (gloo) and gradient accumulation
reproduce one big batch; the schedule has the promised shape; the model learns.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from gptlab.train import checkpoints, dist, loop, metrics, optim
from gptlab.train.loop import grad_accum_steps, train_step
from gptlab.train.metrics import MetricsLogger, read_metrics
from gptlab.train.optim import build_optimizer, lr_multiplier

ROOT = Path(__file__).resolve().parents[1]
CHILD = Path(__file__).with_name("_train_child.py")


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models run fastest single-threaded; 2 threads on a shared 2-core box thrash."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _child_env(**extra) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1",
               **{k: str(v) for k, v in extra.items()})
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)  # never inherit a launcher's distributed settings
    return env


def _run_child(cfg: dict, *, torchrun: int = 0, timeout: float = 120, **env) -> str:
    """Run pretrain in a fresh process (optionally under torchrun), require success and
    return what it printed."""
    if torchrun:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={torchrun}", str(CHILD), json.dumps(cfg)]
    else:
        cmd = [sys.executable, str(CHILD), json.dumps(cfg)]
    r = subprocess.run(cmd, env=_child_env(**env), capture_output=True, text=True,
                       timeout=timeout, cwd=ROOT)
    assert r.returncode == 0, f"child failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r.stdout


def _start_paused(cfg: dict, marker: Path, **env) -> subprocess.Popen:
    """Start a child that pauses at a hook; return once it is waiting there."""
    p = subprocess.Popen([sys.executable, str(CHILD), json.dumps(cfg)], cwd=ROOT,
                         env=_child_env(PAUSE_MARKER=marker, **env),
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while not marker.exists():
        if p.poll() is not None:
            raise AssertionError(f"child exited before pausing:\n{p.stdout.read()[-3000:]}")
        assert time.time() < deadline, "child never reached its pause point"
        time.sleep(0.02)
    return p


def _base_cfg(tiny_shards, tiny_tokenizer, out, **kw) -> dict:
    cfg = dict(data=str(tiny_shards), tokenizer=str(tiny_tokenizer), out=str(out), depth=2,
               seq_len=32, device_batch_size=4, total_batch_tokens=256, max_steps=24,
               eval_every=6, eval_batches=2, save_every=6, seed=1, progress=False)
    cfg.update(kw)
    return cfg


def _train_losses(out: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(out / "metrics.jsonl") if "loss" in r}


def _val_losses(out: Path) -> dict[int, float]:
    return {r["step"]: r["val_loss"] for r in read_metrics(out / "metrics.jsonl") if "val_loss" in r}


def _assert_same_curve(a: dict, b: dict, tol: float) -> None:
    assert sorted(a) == sorted(b), (sorted(a), sorted(b))
    worst = max(abs(a[k] - b[k]) for k in a)
    print(f"curve of {len(a)} steps: max |diff| {worst:.2g}")
    assert worst <= tol, f"max |diff| {worst:.3g} > {tol}"


def _weights(ckpt: Path) -> dict:
    from safetensors.torch import load_file
    return load_file(str(ckpt / "model.safetensors"))


# --------------------------------------------------------------------------- unit pieces


def test_lr_schedule_shape():
    total, warm = 100, 10
    for sched in ("cosine", "linear"):
        m = [lr_multiplier(s, total, warmup_steps=warm, schedule=sched, final_lr_frac=0.1)
             for s in range(total)]
        assert m[:warm] == pytest.approx([(i + 1) / warm for i in range(warm)])  # linear warmup
        assert m[warm] == pytest.approx(1.0)
        assert all(a >= b - 1e-12 for a, b in zip(m[warm:], m[warm + 1:]))  # then never rises
        assert m[-1] == pytest.approx(0.1)  # reaches the floor at the last step
    cos = [lr_multiplier(s, total, warmup_steps=warm, schedule="cosine") for s in range(total)]
    lin = [lr_multiplier(s, total, warmup_steps=warm, schedule="linear") for s in range(total)]
    assert cos[30] > lin[30] and cos[80] < lin[80]  # cosine: slow start, fast middle
    wsd = [lr_multiplier(s, total, warmup_steps=warm, schedule="wsd", final_lr_frac=0.0,
                         warmdown_frac=0.2) for s in range(total)]
    assert wsd[warm:80] == pytest.approx([1.0] * (80 - warm)) and wsd[-1] == pytest.approx(0.0)
    assert lr_multiplier(99, total, schedule="constant") == 1.0
    with pytest.raises(ValueError):
        lr_multiplier(0, total, schedule="exponential")


def test_grad_accum_steps_arithmetic():
    assert grad_accum_steps(8192, 16, 256, 1) == 2
    assert grad_accum_steps(8192, 16, 256, 2) == 1
    with pytest.raises(ValueError, match="multiple"):
        grad_accum_steps(8192, 16, 256, 3)


def _tiny_model(seed=0):
    from gptlab.model import GPT, preset
    torch.manual_seed(seed)
    return GPT(preset(2, 96, max_seq_len=16))


def test_optimizer_param_groups():
    model = _tiny_model()
    names = {id(p): n for n, p in model.named_parameters()}
    adamw = build_optimizer(model, kind="adamw", weight_decay=0.1)
    for g in adamw.param_groups:
        dims = {p.dim() for p in g["params"]}
        assert (g["weight_decay"] > 0) == (dims == {2})  # decay on matrices only
    muon = build_optimizer(model, kind="muon", lr=1e-3, matrix_lr=0.02)
    muon_opt, adam_opt = muon.optimizers
    assert isinstance(muon_opt, torch.optim.Muon)
    hidden = {names[id(p)] for g in muon_opt.param_groups for p in g["params"]}
    assert hidden and all("proj" in n for n in hidden)
    others = {names[id(p)] for g in adam_opt.param_groups for p in g["params"]}
    assert any("embed_tokens" in n for n in others) and any("lm_head" in n for n in others)
    assert any("norm" in n for n in others) and not hidden & others
    assert len(hidden | others) == len(names)
    # CPU AdamW runs the fused kernel (one pass a tensor), and steps exactly like the default one
    assert adamw.optimizers[0].defaults["fused"] and adam_opt.defaults["fused"]
    ref = _tiny_model()
    ref.load_state_dict(model.state_dict())
    plain = torch.optim.AdamW(ref.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.0)
    fused = build_optimizer(model, kind="adamw", lr=1e-3, weight_decay=0.0)
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        for a, b in zip(model.parameters(), ref.parameters()):
            a.grad = torch.randn(a.shape, generator=gen)
            b.grad = a.grad.clone()
        fused.step(), plain.step()
    for a, b in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_compile_defaults_on_only_for_runs_long_enough_to_pay_for_it():
    from gptlab.train.pretrain import COMPILE_AUTO_MICRO_STEPS, PretrainConfig, use_compile
    long = PretrainConfig(max_steps=COMPILE_AUTO_MICRO_STEPS // 4)
    assert use_compile(long, accum=4) and not use_compile(long, accum=3)
    assert not use_compile(PretrainConfig(max_steps=10**6, compile=False), accum=1)
    assert use_compile(PretrainConfig(max_steps=1, compile=True), accum=1)


def test_grad_accumulation_matches_big_batch():
    """accum x micro-batch B gives the gradient of one batch of accum x B (clipped alike).

    Plain SGD with lr 1 makes the update the gradient itself; Adam's first step would
    amplify float noise in near-zero gradients (g / (|g| + eps)), hiding what is tested.
    """
    x = torch.randint(0, 96, (8, 16))
    y = torch.randint(0, 96, (8, 16))
    results = []
    for accum in (1, 2, 4):
        model = _tiny_model()
        opt = optim.OptimizerGroup([torch.optim.SGD(model.parameters(), lr=1.0)])
        micro = [(xb, yb) for xb, yb in zip(x.chunk(accum), y.chunk(accum))]
        out = train_step(model, opt, micro, accum_steps=accum, grad_clip=0.5)
        params = torch.cat([p.detach().flatten() for p in model.parameters()])
        results.append((out["loss"], out["grad_norm"], params))
    for loss, norm, params in results[1:]:
        assert loss == pytest.approx(results[0][0], abs=1e-6)
        assert norm == pytest.approx(results[0][1], rel=1e-5)
        assert torch.allclose(params, results[0][2], atol=1e-6, rtol=0)


def test_bits_per_byte_and_mfu(monkeypatch):
    class ByteTok:  # one token per byte: bpb = loss / ln 2
        def decode(self, ids, skip_special_tokens=False):
            return bytes(ids).decode("latin-1")

    rows = [torch.tensor([[65, 66, 67, 68]])]
    ratio = loop.tokens_per_byte(rows, ByteTok())
    assert ratio == pytest.approx(1.0)
    assert loop.bits_per_byte(math.log(2), ratio) == pytest.approx(1.0)
    assert metrics.peak_flops(torch.device("cpu")) is None
    assert metrics.model_flops_utilization(1e6, 1e3, None) is None
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: "NVIDIA H100 80GB HBM3")
    assert metrics.peak_flops(torch.device("cuda")) == 989e12
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: "NVIDIA L40S")
    assert metrics.peak_flops(torch.device("cuda")) == 362e12
    assert metrics.model_flops_utilization(1e9, 1e5, 1e15, world_size=2) == pytest.approx(0.05)


def test_metrics_logger_truncates_on_resume(tmp_path):
    path = tmp_path / "m.jsonl"
    log = MetricsLogger(path)
    for s in range(1, 6):
        log.log({"step": s, "loss": float(s)})
    log.close()
    with open(path, "a") as f:
        f.write('{"step": 6, "lo')  # a line cut by SIGKILL
    log = MetricsLogger(path, resume_step=3)
    log.log({"step": 4, "loss": 40.0})
    log.close()
    assert [(r["step"], r["loss"]) for r in read_metrics(path)] == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 40.0)]


def test_optional_tensorboard_never_breaks_logging(tmp_path):
    """--tensorboard writes event files when tensorboard is installed, else only warns."""
    log = MetricsLogger(tmp_path / "m.jsonl", tensorboard_dir=tmp_path / "tb")
    log.log({"step": 1, "loss": 2.0, "mfu": None})
    log.close()
    assert read_metrics(tmp_path / "m.jsonl") == [{"step": 1, "loss": 2.0, "mfu": None}]


def test_latest_checkpoint_ignores_partial_dirs(tmp_path):
    for name in ("step_000004", "step_000008", ".step_000012.tmp-abc", "step_000016.partial"):
        (tmp_path / name).mkdir()
    assert checkpoints.latest_checkpoint(tmp_path) == tmp_path / "step_000008"
    checkpoints.prune_checkpoints(tmp_path, keep=1)
    assert [p.name for _, p in checkpoints.list_checkpoints(tmp_path)] == ["step_000008"]


# --------------------------------------------------------------------------- end to end


def test_learns_well_below_unigram_entropy(tiny_corpus, tmp_path):
    """Raw text in (tokenizer + shards built on the way); val loss < 0.3 x unigram entropy."""
    from gptlab.train.pretrain import PretrainConfig, pretrain

    torch.manual_seed(0)
    cfg = PretrainConfig(data=str(tiny_corpus), vocab_size=384, out=str(tmp_path / "run"),
                         depth=2, seq_len=64, device_batch_size=16, total_batch_tokens=1024,
                         max_steps=150, lr=3e-3, eval_every=50, eval_batches=4, val_docs=200,
                         save_every=0, progress=False)
    final = pretrain(cfg)
    out = Path(cfg.out)
    assert final == out / "final" and (out / "tokenizer" / "tokenizer.json").is_file()
    meta = json.loads((out / "shards" / "shards.json").read_text())
    val = np.fromfile(out / "shards" / meta["splits"]["val"]["files"][0], dtype=meta["dtype"])
    p = np.bincount(val) / len(val)
    unigram = float(-(p[p > 0] * np.log(p[p > 0])).sum())  # nats/token
    vals = _val_losses(out)
    print(f"unigram entropy {unigram:.3f} nats/token; val loss by step {vals}")
    assert vals[0] > 0.9 * math.log(meta["vocab_size"])  # starts near uniform
    assert vals[150] < 0.3 * unigram
    rec = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in rec] == list(range(151))
    for key in ("step", "loss", "lr", "tokens", "tokens_per_s", "grad_norm", "mfu"):
        assert key in rec[1]
    assert rec[150]["tokens"] == 150 * 1024 and rec[150]["mfu"] is None  # no peak on CPU
    assert "val_bpb" in rec[150] and 0 < rec[150]["val_bpb"] < rec[0]["val_bpb"]
    # a second call with --resume finds the finished run and reuses the shards
    stamp = (out / "shards" / "shards.json").stat().st_mtime_ns
    cfg.resume = True
    assert pretrain(cfg) == final
    assert (out / "shards" / "shards.json").stat().st_mtime_ns == stamp


def test_checkpoint_loads_in_transformers(tiny_shards, tiny_tokenizer, tmp_path):
    """The final checkpoint is an HF directory: transformers gives the same loss."""
    transformers = pytest.importorskip("transformers")
    from gptlab.checkpoint import load_checkpoint, load_train_state
    from gptlab.train.pretrain import PretrainConfig, pretrain

    cfg = _base_cfg(tiny_shards, tiny_tokenizer, tmp_path / "run", max_steps=4, save_every=2,
                    optimizer="muon")
    final = pretrain(PretrainConfig(**cfg))
    ckpt = load_checkpoint(final)
    assert ckpt.meta["stage"] == "pretrain" and ckpt.meta["step"] == 4
    state = load_train_state(tmp_path / "run" / "ckpt" / "step_000004")
    assert state["step"] == 4 and {"optimizer", "rng", "loader", "config"} <= set(state)
    hf = transformers.AutoModelForCausalLM.from_pretrained(final)
    x = torch.randint(0, ckpt.model.config.vocab_size, (2, 16))
    with torch.no_grad():
        ours = ckpt.model(x[:, :-1], targets=x[:, 1:])
        theirs = hf(x[:, :-1]).logits
    theirs_loss = torch.nn.functional.cross_entropy(theirs.reshape(-1, theirs.shape[-1]).float(),
                                                    x[:, 1:].reshape(-1))
    assert float(ours) == pytest.approx(float(theirs_loss), abs=1e-4)


def test_resume_after_sigkill_and_sigterm_reproduces_the_run(tiny_shards, tiny_tokenizer, tmp_path):
    """SIGKILL mid-step, SIGKILL mid-checkpoint, SIGTERM mid-step, then resume to the end:
    same per-step losses (<= 1e-6) and same final weights as one uninterrupted run."""
    ref = tmp_path / "ref"
    _run_child(_base_cfg(tiny_shards, tiny_tokenizer, ref))
    run = tmp_path / "run"
    cfg = _base_cfg(tiny_shards, tiny_tokenizer, run)
    ckpts = run / "ckpt"

    # 1. SIGKILL during step 10 (accum 2: forward 19 is its first micro-step).
    p = _start_paused(cfg, tmp_path / "m1", PAUSE_AT_FORWARD=19)
    assert checkpoints.latest_checkpoint(ckpts).name == "step_000006"
    p.kill(), p.wait()
    assert max(_train_losses(run)) == 9  # it logged steps past its last checkpoint

    # 2. resume; SIGKILL inside the 2nd checkpoint write (step 18) -> temp dir left behind.
    cfg["resume"] = True
    p = _start_paused(cfg, tmp_path / "m2", PAUSE_AT_SAVE=2)
    p.kill(), p.wait()
    assert checkpoints.latest_checkpoint(ckpts).name == "step_000012"
    assert any(d.name.startswith(".step_000018.tmp") for d in ckpts.iterdir())

    # 3. resume; SIGTERM during step 16 -> checkpoint at 16, exit status 143.
    marker = tmp_path / "m3"
    p = _start_paused(cfg, marker, PAUSE_AT_FORWARD=8)
    p.send_signal(signal.SIGTERM)
    marker.with_name(marker.name + ".release").touch()
    assert p.wait(timeout=60) == 128 + signal.SIGTERM, p.stdout.read()
    assert checkpoints.latest_checkpoint(ckpts).name == "step_000016"

    # 4. resume to the end.
    _run_child(cfg)
    _assert_same_curve(_train_losses(run), _train_losses(ref), 1e-6)
    _assert_same_curve(_val_losses(run), _val_losses(ref), 1e-6)
    a, b = _weights(run / "final"), _weights(ref / "final")
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-6
    assert not any(d.name.startswith(".step_") for d in ckpts.iterdir())  # temp dirs cleaned


def test_ddp_and_accumulation_match_one_big_batch(tiny_shards, tiny_tokenizer, tmp_path):
    """Global batch 8 x 32 tokens four ways: 1 process x 8; 1 process x 4 x accum 2;
    torchrun 2 ranks x 4 (gloo); 2 ranks x 2 x accum 2 -> same loss per step (<= 1e-5)."""
    from gptlab.checkpoint import load_train_state

    kw = dict(max_steps=8, eval_every=4, save_every=0)
    runs = {
        "single_b8": dict(device_batch_size=8),
        "single_b4_accum2": dict(device_batch_size=4),
        "ddp2_b4": dict(device_batch_size=4, torchrun=2),
        "ddp2_b2_accum2": dict(device_batch_size=2, torchrun=2),
    }
    curves, vals = {}, {}
    for name, opts in runs.items():
        nproc = opts.pop("torchrun", 0)
        out = tmp_path / name
        _run_child(_base_cfg(tiny_shards, tiny_tokenizer, out, **kw, **opts), torchrun=nproc)
        curves[name], vals[name] = _train_losses(out), _val_losses(out)
        state = load_train_state(out / "ckpt" / "step_000008")
        assert state["world_size"] == (nproc or 1)  # torchrun really ran 2 ranks
    for name in runs:
        _assert_same_curve(curves[name], curves["single_b8"], 1e-5)
    # validation reads the same rows when device_batch x ranks matches
    _assert_same_curve(vals["ddp2_b4"], vals["single_b8"], 1e-5)
    _assert_same_curve(vals["ddp2_b2_accum2"], vals["single_b4_accum2"], 1e-5)


def test_fsdp_matches_one_process_and_resumes_exactly(tiny_shards, tiny_tokenizer, tmp_path):
    """FSDP2 over 2 gloo ranks (x 4 rows, accumulation 2 at 2 rows): the same per-step
    loss as one process with the whole batch (<= 1e-5), a checkpoint that is a plain HF
    directory, and a run stopped at step 4 then resumed to 8 that ends with the weights of
    the uninterrupted FSDP run (<= 1e-6; constant LR, so stopping early changes nothing)."""
    from gptlab.checkpoint import load_train_state

    kw = dict(max_steps=8, eval_every=4, save_every=4, schedule="constant", warmup_steps=0)
    runs = {"single": dict(device_batch_size=8),
            "fsdp": dict(device_batch_size=4, fsdp=True, torchrun=2),
            "fsdp_accum": dict(device_batch_size=2, fsdp=True, torchrun=2)}
    curves = {}
    for name, opts in runs.items():
        nproc = opts.pop("torchrun", 0)
        printed = _run_child(_base_cfg(tiny_shards, tiny_tokenizer, tmp_path / name, **kw, **opts), torchrun=nproc)
        assert ("x 2 (FSDP)" in printed) == (nproc == 2), printed  # sharded over 2 ranks
        curves[name] = _train_losses(tmp_path / name)
    for name in ("fsdp", "fsdp_accum"):
        _assert_same_curve(curves[name], curves["single"], 1e-5)
    state = load_train_state(tmp_path / "fsdp" / "ckpt" / "step_000008")
    assert state["world_size"] == 2 and state["config"]["fsdp"]
    # the optimizer state was gathered whole: AdamW moments of full-size tensors
    moments = [s["exp_avg"] for s in state["optimizer"]["optimizers"][0]["state"].values()]
    assert sum(m.numel() for m in moments) == sum(w.numel() for w in _weights(tmp_path / "single" / "final").values())

    run = tmp_path / "stopped"
    cfg = _base_cfg(tiny_shards, tiny_tokenizer, run, **{**kw, "max_steps": 4}, device_batch_size=4, fsdp=True)
    _run_child(cfg, torchrun=2)
    _run_child({**cfg, "max_steps": 8, "resume": True}, torchrun=2)
    _assert_same_curve(_train_losses(run), curves["fsdp"], 1e-6)
    a, b = _weights(run / "final"), _weights(tmp_path / "fsdp" / "final")
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-6
    one = _weights(tmp_path / "single" / "final")   # gathered whole: the one-process weights
    assert sorted(one) == sorted(b) and max(float((one[k] - b[k]).abs().max()) for k in b) <= 1e-4


def test_fsdp_refuses_muon():
    from gptlab.train.pretrain import PretrainConfig, validate_config
    with pytest.raises(ValueError, match="--fsdp trains with --optimizer adamw"):
        validate_config(PretrainConfig(fsdp=True, optimizer="muon"))


def _tiny_checkpoint(path: Path, step: int) -> Path:
    from gptlab.checkpoint import save_checkpoint
    return save_checkpoint(path, _tiny_model(), None, train_state={"step": step})


def test_resume_checkpoint_picks_the_newest_and_a_fresh_run_clears_old_ones(tmp_path):
    from gptlab.train.checkpoints import check_resume, resume_checkpoint

    root = tmp_path / "ckpt"
    for step in (2, 10):
        _tiny_checkpoint(root / f"step_{step:06d}", step)
    (root / ".step_000012.tmp-1a2b").mkdir()  # a killed save
    assert resume_checkpoint(tmp_path, resume=True) == root / "step_000010"
    assert not (root / ".step_000012.tmp-1a2b").exists()
    assert resume_checkpoint(tmp_path, resume=False) is None
    assert not root.exists()  # a later --resume cannot continue the earlier run
    assert resume_checkpoint(tmp_path, resume=True) is None
    check_resume(root, {"seed": 1, "gone": 3}, {"seed": 1, "new": 2})  # unrecorded keys are not compared
    with pytest.raises(ValueError, match="cannot resume .*: seed was 1, now 2"):
        check_resume(root, {"seed": 1}, {"seed": 2})


def test_resume_skips_damaged_checkpoints_and_says_why(tmp_path, capsys):
    from gptlab.train.checkpoints import resume_checkpoint

    root = tmp_path / "ckpt"
    for step in (2, 4, 6, 8):
        _tiny_checkpoint(root / f"step_{step:06d}", step)
    (root / "step_000008" / "model.safetensors").write_bytes(b"\0" * 100)       # overwritten
    ts = root / "step_000006" / "train_state.pt"
    ts.write_bytes(ts.read_bytes()[:-50])                                        # truncated
    (root / "step_000004" / "train_state.pt").unlink()                           # missing
    assert resume_checkpoint(tmp_path, resume=True) == root / "step_000002"
    out = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0:2] for line in out[:3]] == [
        ["--resume", " skipping step_000008"], ["--resume", " skipping step_000006"],
        ["--resume", " skipping step_000004"]]
    assert "model.safetensors: sha256 differs" in out[0] and "train_state.pt: sha256" in out[1]
    assert "train_state.pt: missing" in out[2]
    assert "continuing from step_000002" in out[3]
    (root / "step_000002" / "gptlab.json").write_text("{")
    with pytest.raises(ValueError, match="none of the 4 checkpoints .* is intact"):
        resume_checkpoint(tmp_path, resume=True)


def test_metrics_are_strict_json(tmp_path):
    """NaN / inf are written as null (bare NaN is not JSON)."""
    log = MetricsLogger(tmp_path / "m.jsonl")
    log.log({"step": 1, "loss": float("nan"), "grad_norm": float("inf"), "lr": 0.1})
    log.close()
    text = (tmp_path / "m.jsonl").read_text()

    def refuse(const):
        raise AssertionError(f"non-JSON constant {const} in metrics.jsonl")

    assert json.loads(text, parse_constant=refuse) == {"step": 1, "loss": None, "grad_norm": None, "lr": 0.1}


def test_non_finite_loss_stops_the_loop_before_saving(tmp_path):
    """A NaN loss at step 3 stops the run at once: step 3 logged (loss null), nothing saved
    after step 2, NonFiniteError raised. Weights made NaN by the step (inf gradient) are
    caught by the save check too."""
    from gptlab.checkpoint import NonFiniteError

    model = _tiny_model()
    opt = optim.build_optimizer(model)
    saved, calls = [], {"n": 0}
    x = torch.randint(0, 64, (2, 9), generator=torch.Generator().manual_seed(0))

    def loss_fn(m, batch):
        calls["n"] += 1
        loss = m(x[:, :-1], targets=x[:, 1:])
        return loss * float("nan") if calls["n"] == 3 else loss

    hooks = loop.LoopHooks(next_batch=lambda: None, loss_fn=loss_fn,
                           save=lambda step, final: saved.append(step) or tmp_path / f"s{step}")
    logger = MetricsLogger(tmp_path / "m.jsonl")
    cfg = loop.LoopConfig(max_steps=6, save_every=1, progress=False)
    with pytest.raises(NonFiniteError, match=r"step 3: training loss nan.*stopping without saving"):
        loop.run_loop(model, opt, cfg, hooks, env=dist.DistEnv(), logger=logger)
    logger.close()
    assert saved == [1, 2]
    assert [r["loss"] is None for r in read_metrics(tmp_path / "m.jsonl")] == [False, False, True]
    # the save check on its own: NaN weights are refused, whatever the loss said
    with torch.no_grad():
        next(model.parameters()).fill_(float("nan"))
    with pytest.raises(NonFiniteError, match="step 7: NaN or inf in .*embed_tokens"):
        loop.check_finite_weights(model, 7)


def test_cli_exits_non_zero_with_one_line_when_training_diverges(tiny_shards, tiny_tokenizer, tmp_path,
                                                                 capsys):
    """The issue's end state: a run whose loss turns NaN must not write a NaN final/ and
    exit 0. A huge learning rate makes the loss non-finite within a few steps. In this
    process: `python -m gptlab` exits with what cli.main returns (a new process would spend
    seconds importing torch)."""
    from gptlab.cli import main

    out = tmp_path / "run"
    code = main(["pretrain", "--data", str(tiny_shards), "--tokenizer", str(tiny_tokenizer),
                 "--out", str(out), "--depth", "1", "--seq-len", "16", "--device-batch-size", "2",
                 "--total-batch-tokens", "32", "--max-steps", "30", "--lr", "1e30", "--grad-clip", "0",
                 "--no-progress", "--eval-every", "0", "--save-every", "0"])
    r = capsys.readouterr()
    assert code != 0, r.out[-2000:]
    err = r.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("gptlab: error: step ") and "stopping without saving" in err[0], r.err
    assert not (out / "final").exists()
    for line in (out / "metrics.jsonl").read_text().splitlines():
        json.loads(line, parse_constant=lambda c: pytest.fail(f"bare {c} in metrics.jsonl"))


def test_resume_falls_back_past_damaged_checkpoints_and_ends_identical(tiny_shards, tiny_tokenizer, tmp_path):
    """The issue's case end to end: 4 KB overwritten inside the newest checkpoint's weights
    and a truncated train_state.pt in the one before. --resume names both, continues from
    the newest intact one, and ends with the same final weights as the undamaged run."""
    out = tmp_path / "run"
    cfg = _base_cfg(tiny_shards, tiny_tokenizer, out, max_steps=12, save_every=4, eval_every=0,
                    keep_checkpoints=3)
    _run_child(cfg)
    expected = _weights(out / "final")
    ckpts = out / "ckpt"
    weights = ckpts / "step_000012" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2:len(data) // 2 + 4096] = np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    weights.write_bytes(bytes(data))
    state = ckpts / "step_000008" / "train_state.pt"
    state.write_bytes(state.read_bytes()[:1000])
    r = subprocess.run([sys.executable, str(CHILD), json.dumps({**cfg, "resume": True})],
                       env=_child_env(), capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = [line for line in r.stdout.splitlines() if line.startswith("--resume")]
    assert lines[0].startswith("--resume: skipping step_000012: ") and "model.safetensors: sha256 differs" in lines[0]
    assert lines[1].startswith("--resume: skipping step_000008: ") and "train_state.pt: sha256 differs" in lines[1]
    assert "continuing from step_000004" in lines[2] and "resumed from" in r.stdout
    got = _weights(out / "final")
    assert all(torch.equal(got[k], expected[k]) for k in expected)
