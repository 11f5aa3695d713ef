"""Direct Preference Optimization: a chat model + preference pairs -> an aligned chat model.

DPO (Rafailov et al. 2023, arXiv:2305.18290) trains the policy directly on comparisons,
with no reward model and no sampling: for a prompt x, a chosen answer y_w and a rejected
one y_l,

    loss = -log sigmoid(beta * [(log pi(y_w|x) - log ref(y_w|x)) - (log pi(y_l|x) - log ref(y_l|x))])

where ref is the frozen starting model. At initialization pi == ref, so every margin is 0
and the loss is log 2. The reference log-probabilities never change, so they are computed
once before training and cached in ``out/ref_logps.pt`` (keyed by a hash of the data and
the init checkpoint): training then runs one model, not two.

Answers are scored as SFT trains them: the prompt rendered with the model's chat template,
then the assistant content and its end-of-turn token (``gptlab.chat.render_chat``), so the
log-probability of an answer includes the decision to stop.

Optional ``nll_weight`` adds the chosen answers' mean token NLL (RPO, Pang et al. 2024,
arXiv:2404.19733), which keeps the chosen answers' likelihood from falling with the
rejected ones'. Full fine-tuning or LoRA through ``peft`` (the helpers of
``gptlab.train.sft``). Outputs:

    out/ckpt/step_N/   resumable checkpoints      out/final/       the aligned chat model
    out/metrics.jsonl  loss per step; val_loss / val_acc / val_margin on held-out pairs
    out/data.json      pairs read, kept, dropped (too long), held out
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import random
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from gptlab.align.anchors import anchor_pairs
from gptlab.align.common import pad_batch, render_response
from gptlab.chat import load_chat_model
from gptlab.checkpoint import save_checkpoint
from gptlab.settings import FinetuneSettings, cli_field as _f, not_used
from gptlab.train.checkpoints import checkpoint_path, prune_checkpoints, resume_run, rng_state
from gptlab.train.dist import autocast_context, resolve_dtype, seed_everything, setup_dist
from gptlab.train.loop import LoopConfig, LoopHooks, run_loop
from gptlab.train.lora import lora_state_dict, plain_model, save_final
from gptlab.train.metrics import MetricsLogger
from gptlab.train.optim import build_optimizer

IGNORE = -100


@dataclass
class DPOConfig(FinetuneSettings):
    """Everything `gptlab dpo` accepts; fields map 1:1 to CLI flags (the shared ones from
    `FinetuneSettings`, as for `gptlab sft`)."""

    out: str = _f("runs/dpo", "output directory (checkpoints, final model, metrics)")
    lr: float = _f(1e-4, "peak AdamW learning rate (LoRA usually wants ~10x more)")
    warmup_steps: int | None = _f(None, "linear warmup steps; unset: 10 percent of max_steps")
    eval_every: int = _f(20, "held-out pair metrics every N steps (and at the start and end)")
    save_every: int = _f(100, "checkpoint every N steps (and at the end)")
    keep_checkpoints: int = _f(1, "how many step checkpoints to keep (0 = all)")
    compile: bool = not_used(False, "dpo runs the model eagerly")
    init: str = _f("", "the chat model to align (also the frozen reference): an SFT checkpoint directory")
    db: str | None = _f(None, "feedback database (URL or SQLite path): its comparisons and rankings as pairs")
    data: str | None = _f(None, "preference pairs instead of --db: TRL prompt/chosen/rejected jsonl, UltraFeedback or HH-RLHF")
    max_pairs: int | None = _f(None, "use at most this many pairs (the first ones, in store order)")
    anchors: int = _f(0, "also this many anchor pairs of each kind (3x as many harmful), written from --world's train records (gptlab.align.anchors); 0 = none")
    world: str | None = _f(None, "miniworld dir the --anchors are written from")
    val_frac: float = _f(0.1, "share of pairs held out for val_loss / val_acc (at most 200)")
    beta: float = _f(0.1, "DPO beta: strength of the implicit KL constraint to the reference")
    nll_weight: float = _f(0.0, "weight of the chosen answers' NLL added to the loss (RPO); 0 = plain DPO")


# --------------------------------------------------------------------------- sequences


def answer_example(tok, prompt: list[dict], answer: str, *, finished: bool = True
                   ) -> tuple[list[int], list[int]]:
    """(ids, mask) of prompt + answer (``common.render_response``): mask 1 on the answer's
    tokens and, when ``finished``, its end-of-turn token -- the tokens a policy chose."""
    ids, mask = render_response(tok, prompt, answer)
    if not finished:  # an answer cut by max_new_tokens never chose to end
        ids, mask = ids[:-1], mask[:-1]
    return ids, mask


def pad_rows(rows: list[list[int]], masks: list[list[int]], pad_id: int, device=None
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded (B, T) ids and float 0/1 masks (``common.pad_batch``)."""
    ids, mask = pad_batch(rows, pad_id, masks, device=device)
    return ids, mask.float()


def token_logprobs(model, ids: torch.Tensor, logits: torch.Tensor | None = None) -> torch.Tensor:
    """(B, T) ids -> (B, T) log p(ids[:, t] | ids[:, :t]); column 0 (nothing predicts it) is 0.

    Rows are right-padded, so causal attention alone keeps padding out of real tokens."""
    if logits is None:
        logits = model(ids)
    lp = torch.log_softmax(logits[:, :-1].float(), dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    return F.pad(lp, (1, 0))


def sequence_logprobs(model, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Summed log-probability of the masked tokens of each row: (B,)."""
    return (token_logprobs(model, ids) * mask).sum(-1)


def dpo_loss(pol_c, pol_r, ref_c, ref_r, beta: float) -> tuple[torch.Tensor, dict]:
    """Mean DPO loss over pairs and its diagnostics (implicit rewards, accuracy)."""
    rc, rr = beta * (pol_c - ref_c), beta * (pol_r - ref_r)
    loss = -F.logsigmoid(rc - rr).mean()
    rc, rr = rc.detach(), rr.detach()
    return loss, {"acc": float((rc > rr).float().mean()), "margin": float((rc - rr).mean()),
                  "reward_chosen": float(rc.mean()), "reward_rejected": float(rr.mean())}


# --------------------------------------------------------------------------- data


def load_pairs(cfg: DPOConfig) -> list[dict]:
    """[{"prompt": messages, "chosen": str, "rejected": str}] from --db or --data."""
    if bool(cfg.db) == bool(cfg.data):
        raise ValueError("give exactly one of --db (a feedback database) or --data (a pairs file)")
    if cfg.db:
        from gptlab.feedback import FeedbackStore  # deferred: needs sqlalchemy (not on GPU boxes)
        path = Path(cfg.db)
        if "://" not in cfg.db and not path.is_file():
            raise FileNotFoundError(f"--db {cfg.db}: no such database file")
        pairs = FeedbackStore(cfg.db).pairs(limit=cfg.max_pairs)
    else:
        from gptlab.data.formats import load_preferences
        pairs = load_preferences(cfg.data)[:cfg.max_pairs] if cfg.max_pairs else load_preferences(cfg.data)
    if cfg.anchors:
        pairs = pairs + anchor_pairs(cfg.world, cfg.anchors, cfg.seed)
    pairs = [p for p in pairs if p["chosen"] != p["rejected"]]
    if not pairs:
        raise ValueError(f"no preference pairs (with two different answers) in {cfg.db or cfg.data}")
    return pairs


def tokenize_pairs(tok, pairs: list[dict], seq_len: int) -> tuple[list[tuple], int]:
    """Each pair -> (chosen ids, chosen mask, rejected ids, rejected mask). A pair whose
    longer side exceeds ``seq_len`` tokens loses the oldest prompt tokens (the same cut on
    both sides, answers kept whole); one whose answer alone does not fit is dropped
    (returned count)."""
    out, dropped = [], 0
    for p in pairs:
        c = answer_example(tok, p["prompt"], p["chosen"])
        r = answer_example(tok, p["prompt"], p["rejected"])
        cut = max(len(c[0]), len(r[0])) - seq_len
        if cut > 0:
            prompt_len = min(c[1].index(1) if 1 in c[1] else len(c[1]),
                             r[1].index(1) if 1 in r[1] else len(r[1]))
            if cut >= prompt_len:
                dropped += 1
                continue
            c, r = (c[0][cut:], c[1][cut:]), (r[0][cut:], r[1][cut:])
        out.append((*c, *r))
    return out, dropped


def pair_batch(items: list[tuple], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """2B rows: the chosen answers, then the rejected ones (one forward pass for both)."""
    rows = [it[0] for it in items] + [it[2] for it in items]
    masks = [it[1] for it in items] + [it[3] for it in items]
    return pad_rows(rows, masks, pad_id, device)


@torch.no_grad()
def reference_logprobs(model, items: list[tuple], pad_id: int, device, rows: int = 32,
                       progress: bool = True) -> torch.Tensor:
    """(N, 2): summed log-probs of each pair's chosen and rejected answer under ``model``.
    Pairs go through in order of length (and come back in their own order): a chunk is
    padded to its longest row, so mixing one long multi-turn pair into short ones would pad
    them all."""
    from tqdm.auto import tqdm

    was = model.training
    model.eval()
    order = sorted(range(len(items)), key=lambda k: max(len(items[k][0]), len(items[k][2])))
    out = torch.empty(len(items), 2, dtype=torch.float64)
    for i in tqdm(range(0, len(items), rows), desc="reference log-probs", disable=not progress,
                  leave=False, dynamic_ncols=True):
        where = order[i:i + rows]
        ids, mask = pair_batch([items[k] for k in where], pad_id, device)
        lp = sequence_logprobs(model, ids, mask).double().cpu()
        out[where] = torch.stack([lp[:len(where)], lp[len(where):]], dim=1)
    model.train(was)
    return out


def _data_key(cfg: DPOConfig, items: list[tuple]) -> str:
    h = hashlib.sha256(str(Path(cfg.init).resolve()).encode())
    for name in ("model.safetensors", "adapter_model.safetensors"):
        f = Path(cfg.init) / name
        if f.is_file():
            h.update(f"{f.stat().st_size}-{f.stat().st_mtime_ns}".encode())
    for it in items:
        h.update(json.dumps([list(map(int, x)) for x in it]).encode())
    return h.hexdigest()


def cached_reference(cfg: DPOConfig, model, items, pad_id, device) -> torch.Tensor:
    """Reference log-probs from out/ref_logps.pt when it matches (data, init), else computed
    with the init model (before any update) and saved atomically."""
    path = Path(cfg.out) / "ref_logps.pt"
    key = _data_key(cfg, items)
    if path.is_file():
        saved = torch.load(path, weights_only=True)
        if saved.get("key") == key:
            return saved["logps"]
    logps = reference_logprobs(model, items, pad_id, device, progress=cfg.progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"key": key, "logps": logps}, tmp)
    tmp.replace(path)
    return logps


# --------------------------------------------------------------------------- batches


class PairStream:
    """Seeded epochs of shuffled training-pair indices; ``position`` counts micro-batches."""

    def __init__(self, n: int, rows: int, seed: int):
        self.n, self.rows, self.seed, self.position = n, rows, seed, 0
        self.per_epoch = max(1, math.ceil(n / rows))

    def next_indices(self) -> list[int]:
        epoch, i = divmod(self.position, self.per_epoch)
        order = list(range(self.n))
        random.Random(f"dpo-{self.seed}-{epoch}").shuffle(order)
        self.position += 1
        return order[i * self.rows:(i + 1) * self.rows] or order[:self.rows]


def make_loss_fn(cfg: DPOConfig, items, ref, pad_id, device, stats: dict):
    def loss_fn(model, idx):
        ids, mask = pair_batch([items[i] for i in idx], pad_id, device)
        tlp = token_logprobs(model, ids)
        lp = (tlp * mask).sum(-1)
        n = len(idx)
        r = ref[idx].to(device=device, dtype=lp.dtype)
        loss, info = dpo_loss(lp[:n], lp[n:], r[:, 0], r[:, 1], cfg.beta)
        if cfg.nll_weight:
            m = mask[:n]
            loss = loss + cfg.nll_weight * -(tlp[:n] * m).sum() / m.sum().clamp(min=1)
        for k, v in info.items():
            stats.setdefault(k, []).append(v)
        return loss

    return loss_fn


@torch.no_grad()
def evaluate_pairs(model, items, ref, pad_id, device, beta: float, rows: int = 32) -> dict:
    """Held-out DPO loss, preference accuracy (implicit reward of chosen > rejected), margin."""
    if not items:
        return {}
    was = model.training
    model.eval()
    lps = []
    for i in range(0, len(items), rows):
        chunk = items[i:i + rows]
        ids, mask = pair_batch(chunk, pad_id, device)
        lp = sequence_logprobs(model, ids, mask).double().cpu()
        lps.append(torch.stack([lp[:len(chunk)], lp[len(chunk):]], dim=1))
    model.train(was)
    lp = torch.cat(lps)
    loss, info = dpo_loss(lp[:, 0], lp[:, 1], ref[:, 0], ref[:, 1], beta)
    return {"val_loss": float(loss), "val_acc": info["acc"], "val_margin": info["margin"]}


# --------------------------------------------------------------------------- run


def validate_config(cfg: DPOConfig) -> None:
    if not cfg.init:
        raise ValueError("--init is required (the SFT chat model to align)")
    if cfg.beta <= 0:
        raise ValueError(f"--beta must be > 0, got {cfg.beta}")
    if cfg.batch_size % cfg.device_batch_size:
        raise ValueError(f"--batch-size {cfg.batch_size} is not a multiple of --device-batch-size "
                         f"{cfg.device_batch_size}")
    if not 0 <= cfg.val_frac < 1:
        raise ValueError(f"--val-frac must be in [0, 1), got {cfg.val_frac}")
    if cfg.anchors < 0 or (cfg.anchors and not cfg.world):
        raise ValueError("--anchors N needs N >= 0 and --world (the miniworld dir they are written from)")


def split_pairs(items: list, val_frac: float, seed: int) -> tuple[list, list]:
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    n_val = min(200, int(len(items) * val_frac))
    return [items[i] for i in order[n_val:]], [items[i] for i in order[:n_val]]


def run_dpo(cfg: DPOConfig) -> Path:
    """Train as configured; returns out/final."""
    validate_config(cfg)
    env = setup_dist(cfg.device)
    seed_everything(cfg.seed)
    ckpt = load_chat_model(cfg.init, device="cpu")
    tok, model = ckpt.tokenizer, ckpt.model
    if tok is None:
        raise ValueError(f"{cfg.init} has no tokenizer.json")
    seq_len = cfg.seq_len or model.config.max_position_embeddings
    pairs = load_pairs(cfg)
    items, dropped = tokenize_pairs(tok, pairs, seq_len)
    if not items:
        raise ValueError(f"every pair is longer than {seq_len} tokens")
    train, val = split_pairs(items, cfg.val_frac, cfg.seed)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    info = {"pairs": len(pairs), "kept": len(items), "dropped_too_long": dropped,
            "train": len(train), "val": len(val)}
    (out / "data.json").write_text(json.dumps(info, indent=2) + "\n")
    model = model.to(env.device)
    dtype = resolve_dtype(cfg.dtype, env.device)
    with autocast_context(env.device, dtype):  # the same precision as the policy's log-probs
        ref = cached_reference(cfg, model, train + val, tok.pad_id, env.device)
    ref_train, ref_val = ref[:len(train)], ref[len(train):]
    if cfg.lora_r > 0:
        from gptlab.train.lora import apply_lora
        model = apply_lora(model, cfg)
    elif cfg.train_layers is not None:
        from gptlab.train.lora import freeze_below
        freeze_below(model, cfg.train_layers)
    model.train()
    optimizer = build_optimizer(model, lr=cfg.lr, weight_decay=cfg.weight_decay)
    accum = cfg.batch_size // cfg.device_batch_size
    steps = cfg.max_steps or max(1, math.ceil(cfg.epochs * len(train) / cfg.batch_size))
    stream = PairStream(len(train), cfg.device_batch_size, cfg.seed)
    start = _maybe_resume(cfg, model, optimizer, stream)
    if start >= steps and (out / "final" / "config.json").is_file():
        return out / "final"
    stats: dict = {}
    meta = {"stage": "dpo", "parent": str(cfg.init), "parent_stage": ckpt.meta.get("stage"),
            "data": info, "config": {k: v for k, v in dataclasses.asdict(cfg).items()
                                     if k not in ("progress", "resume", "tensorboard", "wandb")}}

    def evaluate() -> dict:
        rec = evaluate_pairs(model, val, ref_val, tok.pad_id, env.device, cfg.beta)
        for k, v in stats.items():
            rec[f"train_{k}"] = sum(v) / len(v)
        stats.clear()
        return rec

    def save(step: int, final: bool) -> Path:
        return _save(cfg, model, tok, optimizer, stream, step, final, meta)

    hooks = LoopHooks(next_batch=stream.next_indices, save=save, evaluate=evaluate,
                      loss_fn=make_loss_fn(cfg, train, ref_train, tok.pad_id, env.device, stats))
    print(f"dpo: {len(train)} train / {len(val)} val pairs ({dropped} too long), beta {cfg.beta}, "
          f"{steps} steps of {cfg.batch_size}, lr {cfg.lr:g}"
          + (f", LoRA r={cfg.lora_r}" if cfg.lora_r else ""), flush=True)
    pair_tokens = sum(len(it[0]) + len(it[2]) for it in train) / len(train)   # for tokens/s
    loop_cfg = LoopConfig(max_steps=steps, accum_steps=accum, warmup_steps=cfg.warmup_steps
                          if cfg.warmup_steps is not None else round(0.1 * steps),
                          tokens_per_step=round(pair_tokens * cfg.batch_size),
                          schedule=cfg.schedule, final_lr_frac=cfg.final_lr_frac, grad_clip=cfg.grad_clip,
                          eval_every=cfg.eval_every, save_every=cfg.save_every,
                          progress=cfg.progress, desc="dpo")
    logger = MetricsLogger(out / "metrics.jsonl", resume_step=start or None,
                           tensorboard_dir=out / "tb" if cfg.tensorboard else None,
                           wandb_project=cfg.wandb, wandb_config=dataclasses.asdict(cfg))
    try:
        if start >= steps:
            return save(start, True)
        return run_loop(model, optimizer, loop_cfg, hooks, env=env, logger=logger, start_step=start,
                        autocast=lambda: autocast_context(env.device, dtype))
    finally:
        logger.close()


def _save(cfg, model, tok, optimizer, stream: PairStream, step: int, final: bool, meta: dict) -> Path:
    out, lora = Path(cfg.out), cfg.lora_r > 0
    state = {"step": step, "optimizer": optimizer.state_dict(), "rng": rng_state(),
             "position": stream.position, "config": dataclasses.asdict(cfg)}
    if lora:
        state["adapter"] = lora_state_dict(model)
    weights = plain_model(model, merged=True) if lora else model
    path = save_checkpoint(checkpoint_path(out / "ckpt", step), weights, tok, train_state=state,
                           meta={**meta, "step": step})
    prune_checkpoints(out / "ckpt", cfg.keep_checkpoints)
    if final:
        save_final(out / "final", model, weights, tok, {**meta, "step": step},
                   adapter_only=lora and not cfg.merge)
        return out / "final"
    return path


def _maybe_resume(cfg: DPOConfig, model, optimizer, stream: PairStream) -> int:
    return resume_run(cfg, model, optimizer, ("init", "db", "data", "max_pairs", "seed", "batch_size",
                                              "device_batch_size", "lora_r"),
                      adapter=cfg.lora_r > 0,
                      restore_data=lambda st: setattr(stream, "position", int(st["position"])))
