"""Supervised fine-tuning (SFT): teach a pretrained model to chat and obey a system message.

`sft(cfg)` goes checkpoint + chat data -> a chat model, reusing the training toolkit of
`gptlab.train.loop` (optimizer, schedule, accumulation, DDP, checkpoints, exact resume):

    out/ckpt/step_N/      resumable checkpoints (weights + train_state.pt), newest kept
    out/final/            the chat model: a normal gptlab / HF Llama directory (stage "sft")
    out/metrics.jsonl     loss, lr, tokens/s per step; val_loss at every evaluation
    out/data.json         what the data became: counts, drops, lengths, mixture rows

Conversations are rendered with the model's own chat template (`gptlab.chat`): the loss
covers each assistant turn's content and its end-of-turn token, nothing else, and skips
turns listed in a record's `meta.masked_turns`. Each row holds one whole conversation
(right-padded, so attention and loss never cross conversations), and rows of similar
length are batched together. The loss is the sum of token losses divided by the number of
target tokens in the whole optimizer step (all micro-batches and processes), so a short
conversation weighs what its tokens weigh, not what its micro-batch weighs.

Full fine-tuning, or LoRA (Hu et al. 2021, arXiv:2106.09685) through `peft`: our module
names match Llama's, so the adapters go on q/k/v/o and gate/up/down projections; the
adapter is merged into out/final by default (`--no-merge` writes the base weights plus
peft's adapter files instead; `gptlab.chat.load_chat_model` reads both).

Mixtures: `--mix SOURCE:WEIGHT[,SOURCE:WEIGHT...]` adds rows from other sources, each
`WEIGHT` the share of training rows it gets (e.g. `runs/demo/world/corpus:0.2` keeps 20%
pretraining text, with every token in the loss, so facts are not forgotten); a source is
text (any `iter_texts` source) or chat (anything `--data` accepts).
"""
from __future__ import annotations

import dataclasses
import json
import math
import random
from dataclasses import dataclass
from pathlib import Path

import torch

from gptlab.chat import Example, TOO_LONG_POLICIES, collate, load_chat_model
from gptlab.checkpoint import save_checkpoint
from gptlab.settings import FinetuneSettings, cli_field as _f  # one definition of a --flag field for every stage
from gptlab.train.checkpoints import checkpoint_path, prune_checkpoints, resume_run, rng_state
from gptlab.train.dist import (
    DistEnv, all_reduce_sum, autocast_context, barrier, print0, resolve_dtype, run_distributed,
    seed_everything, wrap_model,
)
from gptlab.train.loop import LoopConfig, LoopHooks, run_loop
from gptlab.train.lora import (
    apply_lora, chat_token_ids, freeze_below, lora_state_dict, plain_model, save_final,
)
from gptlab.train.metrics import MetricsLogger
from gptlab.train.optim import SCHEDULES, build_optimizer
from gptlab.train.sft_data import (
    MixPart, SFTBatches, SFTData, chat_examples, load_chat_records, parse_mix, records_sha,
    source_kind, text_pool)


@dataclass
class SFTConfig(FinetuneSettings):
    """Everything `gptlab sft` accepts; fields map 1:1 to CLI flags. None = derive."""

    init: str = _f("", "checkpoint to fine-tune: a gptlab checkpoint or any HF Llama-family directory")
    data: str = _f("", "chat data: a miniworld dir (its sft/*.jsonl), a .jsonl/.json/.parquet file or dir of messages / sharegpt records, or hf:org/name[:split]")
    out: str = _f("runs/sft", "output directory (checkpoints, final model, metrics)")
    mix: str | None = _f(None, "more sources with their share of training rows: SOURCE:WEIGHT[,SOURCE:WEIGHT...], e.g. runs/demo/world/corpus:0.2 (text or chat)")
    too_long: str = _f("drop", "conversations longer than the context: drop, or truncate (both counted in the log)")
    max_records: int | None = _f(None, "use at most this many conversations of --data (a seeded sample)")
    val_records: int = _f(200, "conversations of --data held out for the validation loss (at most 10 percent)")
    lr: float | None = _f(None, "peak AdamW learning rate; unset: 1e-3 x 256 / width for full fine-tuning, 2.5x that with LoRA")
    warmup_steps: int | None = _f(None, "linear warmup steps; unset: 3 percent of max_steps")
    lora_chat_tokens: bool = _f(True, "LoRA: also train the input and output embedding rows of the chat special tokens (im_start, im_end, eos), which a base model may never have used")
    eval_every: int = _f(50, "validate every N steps (and at the start and end; 0 = only then)")
    save_every: int = _f(200, "checkpoint every N steps (and at the end; 0 = only at the end)")


def validate_config(cfg: SFTConfig) -> None:
    """Raise ValueError (one clear line for the CLI) on settings that cannot work."""
    if not cfg.init:
        raise ValueError("--init is required (a gptlab checkpoint or an HF Llama directory)")
    if not cfg.data:
        raise ValueError("--data is required (a miniworld dir, chat jsonl/parquet, or hf:org/name)")
    if cfg.too_long not in TOO_LONG_POLICIES:
        raise ValueError(f"--too-long must be one of {', '.join(TOO_LONG_POLICIES)}, got {cfg.too_long!r}")
    if cfg.schedule not in SCHEDULES:
        raise ValueError(f"--schedule must be one of {', '.join(SCHEDULES)}, got {cfg.schedule!r}")
    for name in ("batch_size", "device_batch_size", "seq_len", "max_steps", "max_records"):
        value = getattr(cfg, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if cfg.lora_r < 0:
        raise ValueError(f"--lora-r must be >= 0, got {cfg.lora_r}")
    if cfg.train_layers is not None and (cfg.train_layers < 1 or cfg.lora_r > 0):
        raise ValueError(f"--train-layers must be >= 1 and goes with full fine-tuning (--lora-r 0), "
                         f"got {cfg.train_layers} with --lora-r {cfg.lora_r}")
    if cfg.epochs <= 0 and cfg.max_steps is None:
        raise ValueError(f"--epochs must be > 0, got {cfg.epochs}")
    parse_mix(cfg.mix)


def default_lr(width: int, lora: bool) -> float:
    """1e-3 at width 256 (the CPU-tiny depth 4), scaled as 1/width; 2.5x for LoRA.

    Measured on miniworld with a depth-2 base (docs/CHAT.md): full fine-tuning at 6e-4,
    2e-3, 5e-3 reached val loss 1.73, 0.88, 0.81 after one epoch; LoRA r=16 at 5e-3 / 2e-2
    reached 3.65 / 6.30."""
    return 1e-3 * 256 / width * (2.5 if lora else 1.0)


def prepare_data(cfg: SFTConfig, tokenizer, seq_len: int) -> SFTData:
    """Load, render, split and fit the conversations of --data, and the --mix pools."""
    records = load_chat_records(cfg.data)
    sha = records_sha(records)
    rng = random.Random(f"sft-split-{cfg.seed}")
    order = list(range(len(records)))
    rng.shuffle(order)
    if cfg.max_records is not None:
        order = order[:cfg.max_records]
    n_val = min(cfg.val_records, len(order) // 10)
    val_recs = [records[i] for i in order[:n_val]]
    train_recs = [records[i] for i in order[n_val:]]
    train, st_train = chat_examples(tokenizer, train_recs, seq_len, cfg.too_long)
    val, st_val = chat_examples(tokenizer, val_recs, seq_len, cfg.too_long)
    if not train:
        raise ValueError(f"{cfg.data}: no conversation left to train on ({st_train.summary(seq_len, cfg.too_long)})")
    print0(f"sft data {cfg.data}: {len(records)} conversations -> train {st_train.summary(seq_len, cfg.too_long)}; "
           f"val {st_val.summary(seq_len, cfg.too_long)}")
    mixes, parts = [], parse_mix(cfg.mix)
    share = 1.0 - sum(w for _, w in parts)
    for part, (source, w) in enumerate(parts):
        per_epoch = max(1, round(w / share * len(train)))
        kind = source_kind(source)
        if kind == "chat":
            pool, st = chat_examples(tokenizer, load_chat_records(source), seq_len, cfg.too_long)
            # shuffled by the seed and the part's place in --mix, not its path: the same data
            # under another directory (a clone elsewhere, --out absolute) trains the same
            random.Random(f"mix-{cfg.seed}-{part}").shuffle(pool)
            note = st.summary(seq_len, cfg.too_long)
        else:
            needed = per_epoch * max(1, math.ceil(cfg.epochs))
            pool = text_pool(source, tokenizer, seq_len, needed, cfg.seed, part)
            note = f"{len(pool)} text pieces"
        if not pool:
            raise ValueError(f"--mix {source}: nothing to train on")
        mixes.append(MixPart(source, w, kind, pool, per_epoch))
        print0(f"sft mix {source} ({kind}, weight {w}): {per_epoch} rows per epoch from {note}")
    info = {"source": cfg.data, "records": len(records), "records_sha256": sha,
            "train": st_train.as_dict(), "val": st_val.as_dict(), "seq_len": seq_len,
            "too_long": cfg.too_long,
            "mix": [{"source": m.source, "kind": m.kind, "weight": m.weight,
                     "rows_per_epoch": m.per_epoch, "pool": len(m.pool)} for m in mixes]}
    return SFTData(train, val, mixes, info)


def make_loss_fn():
    """(model, (x, y, n, scale)) -> mean loss x n x scale: summed over micro-batches (and
    averaged over processes by DDP) this is the sum of token losses over the step's total
    target count, whatever the micro-batch sizes."""

    def loss_fn(model, batch):
        x, y, n, scale = batch
        return model(x, targets=y) * (n * scale)

    return loss_fn


@torch.no_grad()
def evaluate_val(model, examples: list[Example], pad_id: int, seq_len: int, rows: int,
                 env: DistEnv, autocast) -> float:
    """Token-weighted mean loss over the validation conversations (split across ranks)."""
    was = model.training
    model.eval()
    order = sorted(range(len(examples)), key=lambda i: len(examples[i]))
    total, count = 0.0, 0
    batches = [order[i:i + rows] for i in range(0, len(order), rows)]
    for b in batches[env.rank::env.world_size]:
        exs = [examples[i] for i in b]
        x, y = collate(exs, pad_id, seq_len=seq_len)
        n = sum(e.n_targets for e in exs)
        with autocast():
            total += float(model(x.to(env.device), targets=y.to(env.device)).float()) * n
        count += n
    model.train(was)
    total, count = all_reduce_sum(total), all_reduce_sum(count)
    return total / max(count, 1)


# --------------------------------------------------------------------------- checkpoints


# Settings that shape the model or the data stream: resuming with other values is an error.
_RESUME_FIXED = ("init", "data", "mix", "seed", "batch_size", "device_batch_size", "lora_r",
                 "lora_chat_tokens", "train_layers", "max_records", "val_records")


def make_saver(model, optimizer, stream: SFTBatches, tokenizer, cfg: SFTConfig, env: DistEnv,
               meta: dict, metrics: dict, steps: int):
    """(step, final) -> path: a resumable out/ckpt/step_N, plus out/final at the end."""
    out, lora = Path(cfg.out), cfg.lora_r > 0

    def save(step: int, final: bool) -> Path:
        path = checkpoint_path(out / "ckpt", step)
        if env.is_main:
            info = {**meta, "step": step, "epochs": round(stream.epoch, 3), "metrics": dict(metrics)}
            state = {"step": step, "optimizer": optimizer.state_dict(), "rng": rng_state(),
                     "data": stream.state_dict(), "config": dataclasses.asdict(cfg),
                     "world_size": env.world_size, "max_steps": steps}
            if lora:
                state["adapter"] = lora_state_dict(model)
            weights = plain_model(model, merged=True) if lora else model
            save_checkpoint(path, weights, tokenizer, train_state=state, meta=info)
            prune_checkpoints(out / "ckpt", cfg.keep_checkpoints)
            if final:
                save_final(out / "final", model, weights, tokenizer, info,
                           adapter_only=lora and not cfg.merge)
        barrier()
        return out / "final" if final else path

    return save


# --------------------------------------------------------------------------- entry point


def sft(cfg: SFTConfig) -> Path:
    """Fine-tune as configured; returns the final checkpoint directory (out/final)."""
    return run_distributed(_sft, cfg)


def _sft(cfg: SFTConfig, env: DistEnv) -> Path:
    validate_config(cfg)
    seed_everything(cfg.seed)
    per_step = cfg.device_batch_size * env.world_size
    if cfg.batch_size % per_step:
        raise ValueError(f"--batch-size {cfg.batch_size} is not a multiple of --device-batch-size x "
                         f"processes = {cfg.device_batch_size} x {env.world_size}")
    accum = cfg.batch_size // per_step
    ckpt = load_chat_model(cfg.init, device="cpu")  # merges a --no-merge LoRA adapter
    tokenizer, raw = ckpt.tokenizer, ckpt.model
    if tokenizer is None:
        raise ValueError(f"{cfg.init} has no tokenizer.json: SFT needs the model's tokenizer")
    seq_len = cfg.seq_len or min(raw.config.max_position_embeddings, 2048)
    data = prepare_data(cfg, tokenizer, seq_len)
    stream = SFTBatches(data, cfg.device_batch_size, tokenizer.pad_id, seq_len, seed=cfg.seed,
                        accum=accum, rank=env.rank, world_size=env.world_size, device=env.device)
    steps = cfg.max_steps or max(1, math.ceil(cfg.epochs * stream.batches_per_epoch / (accum * env.world_size)))
    warmup = cfg.warmup_steps if cfg.warmup_steps is not None else round(0.03 * steps)
    lora = cfg.lora_r > 0
    lr = cfg.lr if cfg.lr is not None else default_lr(raw.config.hidden_size, lora)
    torch.manual_seed(cfg.seed)
    raw = raw.to(env.device).train()
    if lora:
        raw = apply_lora(raw, cfg, chat_token_ids(tokenizer, raw.config.vocab_size)
                         if cfg.lora_chat_tokens else None)
    elif cfg.train_layers is not None:
        freeze_below(raw, cfg.train_layers)
    optimizer = build_optimizer(raw, lr=lr, weight_decay=cfg.weight_decay)
    start = resume_run(cfg, raw, optimizer, _RESUME_FIXED, is_main=env.is_main,
                       adapter=cfg.lora_r > 0,
                       restore_data=lambda st: stream.load_state_dict(st["data"]))
    out = Path(cfg.out)
    if start >= steps and (out / "final" / "config.json").is_file():
        print0(f"already trained {start} >= {steps} steps: {out / 'final'}")
        return out / "final"
    dtype = resolve_dtype(cfg.dtype, env.device)

    def autocast():
        return autocast_context(env.device, dtype)

    model = wrap_model(raw, env, compile=cfg.compile)
    _announce(cfg, raw, data, stream, steps, accum, lr, warmup, seq_len, env)
    if env.is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "data.json").write_text(json.dumps(data.info, indent=2) + "\n")
    meta = {"stage": "sft", "parent": str(cfg.init), "parent_stage": ckpt.meta.get("stage"),
            "data": data.info, "lora": _lora_meta(cfg) if lora else None,
            "config": {k: v for k, v in dataclasses.asdict(cfg).items()
                       if k not in ("progress", "resume", "tensorboard", "wandb")}}
    latest: dict = {}
    save = make_saver(raw, optimizer, stream, tokenizer, cfg, env, meta, latest, steps)

    def evaluate() -> dict:
        latest["val_loss"] = evaluate_val(raw, data.val, tokenizer.pad_id, seq_len,
                                          cfg.device_batch_size, env, autocast) if data.val else None
        latest["epoch"] = round(stream.epoch, 3)
        return {k: v for k, v in latest.items() if v is not None}

    hooks = LoopHooks(next_batch=stream.next_batch, save=save, loss_fn=make_loss_fn(),
                      evaluate=evaluate)
    epoch0 = data.epoch_examples(0)
    mean_len = sum(len(e) - 1 for e in epoch0) / len(epoch0)  # tokens/s is an estimate
    loop_cfg = LoopConfig(
        max_steps=steps, accum_steps=accum, tokens_per_step=int(mean_len * cfg.batch_size),
        warmup_steps=warmup, schedule=cfg.schedule, final_lr_frac=cfg.final_lr_frac,
        grad_clip=cfg.grad_clip, eval_every=cfg.eval_every, save_every=cfg.save_every,
        flops_per_token=None if lora else raw.flops_per_token(int(mean_len)),
        progress=cfg.progress, desc="sft")
    logger = MetricsLogger(out / "metrics.jsonl", resume_step=start or None,
                           tensorboard_dir=out / "tb" if cfg.tensorboard else None,
                           wandb_project=cfg.wandb, wandb_config=dataclasses.asdict(cfg))
    try:
        if start >= steps:  # finished but out/final missing: write it again
            return save(start, True)
        return run_loop(model, optimizer, loop_cfg, hooks, env=env, logger=logger,
                        start_step=start, autocast=autocast)
    finally:
        logger.close()


def _lora_meta(cfg: SFTConfig) -> dict:
    return {"r": cfg.lora_r, "alpha": cfg.lora_alpha if cfg.lora_alpha is not None else 2 * cfg.lora_r,
            "dropout": cfg.lora_dropout, "targets": cfg.lora_targets,
            "chat_tokens": cfg.lora_chat_tokens, "merged": cfg.merge}


def _announce(cfg, model, data: SFTData, stream: SFTBatches, steps, accum, lr, warmup, seq_len,
              env: DistEnv) -> None:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    mode = f"LoRA r={cfg.lora_r}" if cfg.lora_r else "full fine-tuning"
    print0(f"sft: {mode}, {trainable / 1e6:.3f}M of {total / 1e6:.2f}M params trained | "
           f"{env.world_size} process(es) on {env.device} | batch {cfg.batch_size} rows = "
           f"{cfg.device_batch_size} x {accum} accum x {env.world_size} | seq_len {seq_len} | "
           f"{steps} steps = {steps * accum * env.world_size / stream.batches_per_epoch:.2f} epochs of "
           f"{data.epoch_size} rows | lr {lr:.2e}, warmup {warmup}, {cfg.schedule}")
