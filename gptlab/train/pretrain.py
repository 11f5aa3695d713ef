"""Pretraining: next-token prediction on a text corpus, from scratch.

`pretrain(cfg)` goes text -> (tokenizer) -> token shards -> GPT -> checkpoints:

    out/tokenizer/        trained here when no --tokenizer is given
    out/shards/           token shards built from raw text (skipped when present and matching)
    out/ckpt/step_N/      resumable checkpoints (HF model dir + train_state.pt), newest kept
    out/final/            the final model (an HF Llama directory; no optimizer state)
    out/metrics.jsonl     one line per step: loss, lr, tokens, tokens/s, and val entries

One complexity dial, as in nanochat: `depth` sets the width (via `gptlab.model.preset`)
and every unset field below (sequence length, batch, learning rate, step budget) is
derived from it. The step budget defaults to Chinchilla's ~20 tokens per parameter
(Hoffmann et al. 2022). Run several processes with `torchrun --nproc_per_node N -m
gptlab pretrain ...`; the global batch stays `total_batch_tokens` (gradient accumulation
makes up the difference), so the loss curve does not depend on the number of processes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from gptlab.checkpoint import save_checkpoint
from gptlab.data.loaders import TokenBatchLoader, build_shards
from gptlab.model import GPT, GQA_RATIO, preset, training_defaults
from gptlab.settings import TrainSettings, cli_field as _f  # one definition of a --flag field for every stage
from gptlab.tokenizer import Tokenizer, train_tokenizer_from_source
from gptlab.train.checkpoints import checkpoint_path, prune_checkpoints, resume_run, rng_state
from gptlab.train.dist import (
    DistEnv, autocast_context, barrier, full_model_state, full_optimizer_state, print0,
    resolve_dtype, run_distributed, seed_everything, shard_model, wrap_model,
)
from gptlab.train.loop import (
    LoopConfig, LoopHooks, bits_per_byte, evaluate_loss, grad_accum_steps, run_loop,
    tokens_per_byte,
)
from gptlab.train.metrics import MetricsLogger
from gptlab.train.optim import SCHEDULES, build_optimizer


@dataclass
class PretrainConfig(TrainSettings):
    """Everything `gptlab pretrain` accepts; fields map 1:1 to CLI flags. None = derive."""

    data: str = _f("", "raw text (.txt/.jsonl/.parquet file or dir, hf:org/name) or a shard dir with shards.json")
    tokenizer: str | None = _f(None, "tokenizer directory; unset: out/tokenizer, trained on --data if absent")
    vocab_size: int = _f(4096, "vocabulary size when a tokenizer has to be trained")
    out: str = _f("runs/pretrain", "output directory (checkpoints, final model, metrics)")
    depth: int = _f(4, "number of transformer layers: the one dial the model size derives from")
    width: int | None = _f(None, "hidden size, a multiple of the head size (32 below depth 8, else 64); unset: 64 x depth. A finer size dial for scaling sweeps")
    seq_len: int | None = _f(None, "context length in tokens; unset: 256 up to depth 6, 1024 up to 12, else 2048")
    device_batch_size: int | None = _f(None, "sequences per micro-batch per process; unset: 16 up to depth 6, else 32")
    total_batch_tokens: int | None = _f(None, "tokens per optimizer step over all processes; unset: from depth, 2^13 .. 2^19")
    max_steps: int | None = _f(None, "optimizer steps; unset: token_budget / total_batch_tokens")
    token_budget: int | None = _f(None, "training tokens when max_steps is unset; unset: tokens_per_param x params")
    tokens_per_param: float | None = _f(None, "tokens per parameter when neither max_steps nor token_budget is set; unset: 20 (Chinchilla)")
    max_epochs: float | None = _f(None, "cap the steps at this many passes over the training tokens, so a small corpus is not memorised; unset: no cap")
    optimizer: str = _f("adamw", "adamw, or muon (Muon on hidden matrices, AdamW on the rest)")
    lr: float | None = _f(None, "peak AdamW learning rate; unset: 6e-4 x sqrt(768 / width)")
    matrix_lr: float = _f(0.02, "peak Muon learning rate for hidden matrices (optimizer=muon)")
    weight_decay: float | None = _f(None, "decoupled weight decay on matrices; unset: 0.1")
    warmup_steps: int | None = _f(None, "linear warmup steps; unset: 2 percent of max_steps, at most 200")
    schedule: str = _f("cosine", "after warmup: cosine | linear decay, wsd (late linear warmdown), constant")
    final_lr_frac: float | None = _f(None, "floor of the schedule as a fraction of the peak LR; unset: 0.1")
    warmdown_frac: float = _f(0.2, "fraction of steps in the final warmdown (schedule=wsd)")
    grad_clip: float | None = _f(None, "clip the global gradient norm to this (0 = off); unset: 1.0")
    eval_batches: int = _f(8, "validation batches (of device_batch_size rows per process)")
    val_docs: int = _f(1000, "documents held out for validation when building shards")
    data_tokens: int | None = _f(None, "stop reading --data once this many training tokens are tokenized (hub data sets are streamed); unset: all of it")
    compile: bool | None = _f(None, "torch.compile the model; unset: on for runs of at least 1000 "
                              "micro-batches, where the compile time pays off")
    fsdp: bool = _f(False, "under torchrun, shard weights, gradients and AdamW state over the processes (FSDP2) instead of a full copy each (DDP): for models that do not fit one device")


def depth_defaults(depth: int) -> dict:
    """Derived defaults for one depth: `gptlab.model.training_defaults` (batch in tokens,
    AdamW LR ~ 1/sqrt(width), weight decay, LR floor, warmup, Chinchilla ratio) plus a
    context length and micro-batch: short contexts for the CPU-tiny depths."""
    d = dict(training_defaults(depth))
    if depth <= 6:    # CPU-tiny: minutes on a laptop
        d.update(seq_len=256, device_batch_size=16)
    elif depth <= 12:
        d.update(seq_len=1024, device_batch_size=32)
    else:
        d.update(seq_len=2048, device_batch_size=32)
    return d


def resolve_config(cfg: PretrainConfig, world_size: int, num_params: int | None = None,
                   ) -> PretrainConfig:
    """Fill every None field from the depth dial.

    The step budget needs the model size, so max_steps and warmup_steps are only filled
    when `num_params` is given (call again once the model exists).
    """
    d = depth_defaults(cfg.depth)
    seq_len = cfg.seq_len or d["seq_len"]
    bsz = cfg.device_batch_size or d["device_batch_size"]
    total = cfg.total_batch_tokens
    if total is None:  # round the derived target up to a whole number of micro-batches
        per = bsz * seq_len * world_size
        total = max(1, math.ceil(d["batch_tokens"] / per)) * per
    cfg = dataclasses.replace(
        cfg, seq_len=seq_len, device_batch_size=bsz, total_batch_tokens=total,
        lr=_pick(cfg.lr, d["lr"] * math.sqrt(64 * cfg.depth / (cfg.width or 64 * cfg.depth))),
        weight_decay=_pick(cfg.weight_decay, d["weight_decay"]),
        final_lr_frac=_pick(cfg.final_lr_frac, d["min_lr_frac"]),
        grad_clip=_pick(cfg.grad_clip, d["grad_clip"]),
        tokens_per_param=_pick(cfg.tokens_per_param, d["tokens_per_param"]))
    if num_params is None:
        return cfg
    steps = cfg.max_steps
    if steps is None:
        budget = cfg.token_budget or int(cfg.tokens_per_param * num_params)
        steps = max(1, budget // cfg.total_batch_tokens)
    warmup = _pick(cfg.warmup_steps, min(200, round(d["warmup_frac"] * steps)))
    return dataclasses.replace(cfg, max_steps=steps, warmup_steps=warmup)


def cap_epochs(cfg: PretrainConfig, world_size: int, num_params: int, tokens: int) -> PretrainConfig:
    """`resolve_config` with the model size, then at most `max_epochs` passes over the
    `tokens` training tokens (warmup re-derived from the capped step count)."""
    full = resolve_config(cfg, world_size, num_params)
    if not cfg.max_epochs:
        return full
    cap = max(1, int(cfg.max_epochs * tokens // full.total_batch_tokens))
    if full.max_steps <= cap:
        return full
    print0(f"max_epochs {cfg.max_epochs:g}: {full.max_steps} steps would be "
           f"{full.max_steps * full.total_batch_tokens / tokens:.1f} passes over the {tokens:,} "
           f"training tokens; training {cap} steps")
    return resolve_config(dataclasses.replace(cfg, max_steps=cap), world_size, num_params)


# Compiled, a depth-4 float32 step on 2 CPU cores ran 1.12-1.14x the eager one (8,090 against
# 7,198 tokens/s) after a 23 s compile on a cold cache (bench/train_step.py, docs/PERFORMANCE.md):
# ~35 ms saved a step pays for it after ~700 steps of that size, sooner for bigger models whose
# steps save more. An unset --compile turns it on for runs this long (in micro-batches: that is
# what each compiled call runs).
COMPILE_AUTO_MICRO_STEPS = 1000


def use_compile(cfg: PretrainConfig, accum: int) -> bool:
    """--compile as given, else on when the run is long enough to pay for compiling."""
    if cfg.compile is not None:
        return cfg.compile
    return cfg.max_steps * accum >= COMPILE_AUTO_MICRO_STEPS


def train_tokens(shard_dir: Path) -> int:
    """Tokens in the train split of a shard directory (from its shards.json)."""
    meta = json.loads((Path(shard_dir) / "shards.json").read_text())
    return int(meta["splits"]["train"]["tokens"])


def validate_config(cfg: PretrainConfig) -> None:
    """Raise ValueError (one clear line for the CLI) on settings that cannot work."""
    if cfg.optimizer not in ("adamw", "muon"):
        raise ValueError(f"--optimizer must be adamw or muon, got {cfg.optimizer!r}")
    if cfg.schedule not in SCHEDULES:
        raise ValueError(f"--schedule must be one of {', '.join(SCHEDULES)}, got {cfg.schedule!r}")
    for name in ("depth", "width", "seq_len", "device_batch_size", "total_batch_tokens", "max_steps",
                 "eval_batches"):
        value = getattr(cfg, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if cfg.max_epochs is not None and cfg.max_epochs <= 0:
        raise ValueError(f"--max-epochs must be > 0, got {cfg.max_epochs}")
    if cfg.fsdp and cfg.optimizer != "adamw":
        # Muon orthogonalizes each whole matrix, and FSDP gives every rank a slice of it
        raise ValueError("--fsdp trains with --optimizer adamw (Muon needs whole matrices)")


def _pick(value, default):
    return default if value is None else value


# --------------------------------------------------------------------------- data


def prepare_tokenizer(cfg: PretrainConfig, env: DistEnv):
    """Load --tokenizer, or out/tokenizer, or train one there on --data (rank 0)."""
    tok_dir = Path(cfg.tokenizer) if cfg.tokenizer else Path(cfg.out) / "tokenizer"
    if not (tok_dir / "tokenizer.json").is_file():
        if cfg.tokenizer:
            raise FileNotFoundError(f"tokenizer directory {tok_dir} has no tokenizer.json")
        if _is_shard_dir(cfg.data):
            raise ValueError("--data is a shard directory: pass the --tokenizer it was built with")
        if env.is_main:
            print0(f"training a {cfg.vocab_size}-token tokenizer on {cfg.data} -> {tok_dir}")
            train_tokenizer_from_source(cfg.data, tok_dir, vocab_size=cfg.vocab_size)
        barrier()
    return Tokenizer.load(tok_dir)


def _is_shard_dir(data: str) -> bool:
    return bool(data) and (Path(data) / "shards.json").is_file()


def _tokenizer_sha(tokenizer) -> str:
    return hashlib.sha256(tokenizer.to_json().encode("utf-8")).hexdigest()


def prepare_shards(cfg: PretrainConfig, tokenizer, env: DistEnv) -> Path:
    """The shard directory: --data itself, or out/shards built from raw text (rank 0).

    Existing out/shards are reused when built from the same source path, tokenizer and
    val split; otherwise they are rebuilt.
    """
    if not cfg.data:
        raise ValueError("--data is required (raw text or a shard directory)")
    if _is_shard_dir(cfg.data):
        shard_dir = Path(cfg.data)
        meta = json.loads((shard_dir / "shards.json").read_text())
        if meta.get("tokenizer_sha256") not in (None, _tokenizer_sha(tokenizer)):
            raise ValueError(f"{shard_dir} was built with a different tokenizer than {cfg.tokenizer}")
        return shard_dir
    shard_dir = Path(cfg.out) / "shards"
    if env.is_main and not _shards_match(shard_dir, cfg, tokenizer):
        if shard_dir.exists():
            print0(f"{shard_dir} does not match --data / tokenizer: rebuilding")
            shutil.rmtree(shard_dir)
        print0(f"tokenizing {cfg.data} -> {shard_dir}")
        build_shards(cfg.data, tokenizer, shard_dir, val_docs=cfg.val_docs, progress=cfg.progress,
                     max_tokens=cfg.data_tokens)
    barrier()
    return shard_dir


def _shards_match(shard_dir: Path, cfg: PretrainConfig, tokenizer) -> bool:
    p = shard_dir / "shards.json"
    if not p.is_file():
        return False
    meta = json.loads(p.read_text())
    # Matching on the source *path* (not a content hash) keeps the check instant on big data.
    return (meta.get("source") == str(cfg.data) and meta.get("val_docs") == cfg.val_docs
            and meta.get("max_tokens") == cfg.data_tokens
            and meta.get("tokenizer_sha256") == _tokenizer_sha(tokenizer))


def _to_device(batch, device: torch.device):
    return tuple(t.to(device, non_blocking=True) for t in batch)


# --------------------------------------------------------------------------- pieces


def build_model(cfg: PretrainConfig, tokenizer, device: torch.device):
    """A fresh GPT of the configured depth (same init on every rank: seeded first)."""
    mcfg = preset(cfg.depth, tokenizer.vocab_size, max_seq_len=cfg.seq_len)
    if cfg.width:
        mcfg = with_width(mcfg, cfg.width)
    mcfg.bos_token_id, mcfg.eos_token_id = tokenizer.bos_id, tokenizer.eos_id
    mcfg.pad_token_id = tokenizer.pad_id
    torch.manual_seed(cfg.seed)
    return GPT(mcfg).to(device)


def with_width(mcfg, width: int):
    """`preset`'s recipe at another width (--width): same depth and head size, GQA ratio,
    SwiGLU hidden = 8/3 x width rounded up to 64. Used by scaling sweeps (gptlab.scaling)."""
    if width % mcfg.head_dim:
        raise ValueError(f"--width {width} is not a multiple of the head size {mcfg.head_dim}")
    heads = width // mcfg.head_dim
    kv = max(k for k in range(1, heads + 1) if heads % k == 0 and k * GQA_RATIO <= max(heads, GQA_RATIO))
    return dataclasses.replace(mcfg, hidden_size=width, num_attention_heads=heads,
                               num_key_value_heads=kv,
                               intermediate_size=64 * math.ceil(8 * width / 3 / 64))


def make_evaluator(model, cfg: PretrainConfig, shard_dir: Path, tokenizer, env: DistEnv,
                   autocast, latest: dict):
    """() -> {"val_loss", "val_bpb"} over the same first `eval_batches` val batches each time.

    The newest result is also kept in `latest` (it goes into the checkpoints' gptlab.json).
    """
    def batches():
        loader = TokenBatchLoader(shard_dir, "val", cfg.device_batch_size, cfg.seq_len,
                                  seed=cfg.seed, rank=env.rank, world_size=env.world_size,
                                  shuffle=False)
        return [loader.next_batch() for _ in range(cfg.eval_batches)]

    ratio = tokens_per_byte((y for _, y in batches()), tokenizer)  # once per val set

    def evaluate() -> dict:
        loss = evaluate_loss(model, (_to_device(b, env.device) for b in batches()),
                             autocast=autocast)
        latest.update(val_loss=loss, val_bpb=bits_per_byte(loss, ratio))
        return dict(latest)

    return evaluate


def make_saver(model, optimizer, loader, tokenizer, cfg: PretrainConfig, env: DistEnv,
               model_meta: dict, metrics: dict):
    """(step, final) -> path: a resumable out/ckpt/step_N, plus out/final at the end.

    `metrics` (the newest validation results) is copied into gptlab.json.
    """
    out = Path(cfg.out)

    def save(step: int, final: bool) -> Path:
        path = checkpoint_path(out / "ckpt", step)
        # every rank: under FSDP these gather the shards (rank 0 receives them)
        weights, opt_state = full_model_state(model), full_optimizer_state(model, optimizer)
        if env.is_main:
            meta = {"stage": "pretrain", "step": step, "tokens": step * cfg.total_batch_tokens,
                    "metrics": dict(metrics), **model_meta}
            state = {"step": step, "tokens": step * cfg.total_batch_tokens,
                     "optimizer": opt_state, "rng": rng_state(),
                     "loader": loader.state_dict(), "config": dataclasses.asdict(cfg),
                     "world_size": env.world_size}
            save_checkpoint(path, model, tokenizer, train_state=state, meta=meta, weights=weights)
            prune_checkpoints(out / "ckpt", cfg.keep_checkpoints)
            if final:
                save_checkpoint(out / "final", model, tokenizer, meta=meta, weights=weights)
        barrier()
        return out / "final" if final else path

    return save


# Fields that change the model or the data stream: resuming with other values is an error.
# (fsdp: its optimizer state is keyed by parameter name, DDP's by position)
_RESUME_FIXED = ("depth", "width", "seq_len", "total_batch_tokens", "seed", "optimizer", "fsdp")


# --------------------------------------------------------------------------- entry point


def pretrain(cfg: PretrainConfig) -> Path:
    """Pretrain a GPT as configured; returns the final checkpoint directory (out/final)."""
    return run_distributed(_pretrain, cfg)


def _pretrain(cfg: PretrainConfig, env: DistEnv) -> Path:
    validate_config(cfg)
    seed_everything(cfg.seed)
    tokenizer = prepare_tokenizer(cfg, env)
    shard_dir = prepare_shards(cfg, tokenizer, env)
    cfg = resolve_config(cfg, env.world_size)
    raw = build_model(cfg, tokenizer, env.device)
    cfg = cap_epochs(cfg, env.world_size, raw.num_params(), train_tokens(shard_dir))
    if cfg.fsdp:
        shard_model(raw, env)   # before the optimizer: it must hold the sharded parameters
    accum = grad_accum_steps(cfg.total_batch_tokens, cfg.device_batch_size, cfg.seq_len,
                             env.world_size)
    optimizer = build_optimizer(raw, kind=cfg.optimizer, lr=cfg.lr, matrix_lr=cfg.matrix_lr,
                                weight_decay=cfg.weight_decay)
    loader = TokenBatchLoader(shard_dir, "train", cfg.device_batch_size, cfg.seq_len,
                              seed=cfg.seed, rank=env.rank, world_size=env.world_size)
    # --resume: the newest intact step checkpoint (a fresh run removes stale ones, so a later
    # --resume cannot pick up an older run's)
    start = resume_run(cfg, raw, optimizer, _RESUME_FIXED, is_main=env.is_main,
                       restore_data=lambda st: loader.load_state_dict(st["loader"]))
    if start >= cfg.max_steps and (Path(cfg.out) / "final" / "config.json").is_file():
        print0(f"already trained {start} >= {cfg.max_steps} steps: {Path(cfg.out) / 'final'}")
        return Path(cfg.out) / "final"
    dtype = resolve_dtype(cfg.dtype, env.device)

    def autocast():
        return autocast_context(env.device, dtype)

    model = wrap_model(raw, env, compile=use_compile(cfg, accum))
    _announce(cfg, raw, accum, env)
    meta = {"parent": None, "data": {"shards": str(shard_dir), **_data_hashes(shard_dir)}}
    latest: dict = {}
    save = make_saver(raw, optimizer, loader, tokenizer, cfg, env, meta, latest)
    hooks = LoopHooks(next_batch=lambda: _to_device(loader.next_batch(), env.device), save=save,
                      evaluate=make_evaluator(raw, cfg, shard_dir, tokenizer, env, autocast, latest))
    loop_cfg = _loop_config(cfg, accum, raw.flops_per_token(cfg.seq_len))
    out = Path(cfg.out)
    logger = MetricsLogger(out / "metrics.jsonl", resume_step=start or None,
                           tensorboard_dir=out / "tb" if cfg.tensorboard else None,
                           wandb_project=cfg.wandb, wandb_config=dataclasses.asdict(cfg))
    try:
        if start >= cfg.max_steps:  # finished but out/final missing: write it again
            return save(start, True)
        return run_loop(model, optimizer, loop_cfg, hooks, env=env, logger=logger,
                        start_step=start, autocast=autocast)
    finally:
        logger.close()


def _loop_config(cfg: PretrainConfig, accum: int, flops_per_token: float) -> LoopConfig:
    return LoopConfig(
        max_steps=cfg.max_steps, accum_steps=accum, tokens_per_step=cfg.total_batch_tokens,
        warmup_steps=cfg.warmup_steps, schedule=cfg.schedule, final_lr_frac=cfg.final_lr_frac,
        warmdown_frac=cfg.warmdown_frac, grad_clip=cfg.grad_clip, eval_every=cfg.eval_every,
        save_every=cfg.save_every, flops_per_token=flops_per_token, progress=cfg.progress,
        desc="pretrain")


def _data_hashes(shard_dir: Path) -> dict:
    meta = json.loads((shard_dir / "shards.json").read_text())
    return {k: meta.get(k) for k in ("source", "source_sha256", "tokenizer_sha256")}


def _announce(cfg: PretrainConfig, model, accum: int, env: DistEnv) -> None:
    n, compiled = model.num_params(), use_compile(cfg, accum)
    print0(f"model: depth {cfg.depth}, {n / 1e6:.2f}M params | {env.world_size} process(es) on "
           f"{env.device} | batch {cfg.total_batch_tokens} tokens = {cfg.device_batch_size} x "
           f"{cfg.seq_len} x {accum} accum x {env.world_size}"
           f"{' (FSDP)' if cfg.fsdp and env.ddp else ''} | {cfg.max_steps} steps "
           f"({cfg.max_steps * cfg.total_batch_tokens / n:.1f} tokens/param) | {cfg.optimizer} "
           f"lr {cfg.lr:.2e}, warmup {cfg.warmup_steps}, {cfg.schedule}"
           f"{' | torch.compile' if compiled else ''}"
           f"{' (auto: a long run)' if compiled and cfg.compile is None else ''}")
