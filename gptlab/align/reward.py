"""The reward model: a chat checkpoint plus a scalar head, trained on ranked preferences.

Architecture (InstructGPT, Ouyang et al. 2022, arXiv:2203.02155): the SFT model's decoder
reads prompt + response rendered as a chat; a linear head maps the final hidden state of
the response's last token (its ``<|im_end|>``) to one number.

Loss: Bradley-Terry over every pair of a ranking. A ranking of K responses (best first)
gives C(K, 2) pairs; its loss is the mean over them of ``-log sigmoid(r_better - r_worse)``.
All pairs of one prompt's ranking sit in the same batch element, as InstructGPT does: the
K responses are scored once, and treating the pairs as independent samples overfits (each
response would be seen K-1 times per epoch). A pairwise comparison is a ranking of K = 2.

Normalization: after training, raw rewards of the responses in the store (the SFT
policy's samples, when the store was filled by ``gptlab feedback simulate``) give an
offset and a scale, so the SFT policy's samples score mean 0 and std 1; both are kept in
reward.json and ``RewardModel.score`` applies them.

Directory: the backbone as a gptlab checkpoint (loads anywhere a model does),
``reward_head.safetensors`` (``weight`` (1, hidden), ``bias`` (1,)) and ``reward.json``
(normalization, data, held-out accuracy, agreement with the noiseless judge, timings).
"""
from __future__ import annotations

import dataclasses
import json
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from gptlab.align.common import (generate_answers, heldout_records, pad_batch, prompt_messages,
                                 render_response, win_rate)
from gptlab.chat import load_chat_model
from gptlab.checkpoint import atomic_dir, save_checkpoint
from gptlab.judge import HARD_CHECKS, Judge
from gptlab.settings import RunSettings, cli_field
from gptlab.train.dist import DistEnv, print0, resolve_device, seed_everything
from gptlab.train.loop import LoopConfig, LoopHooks, run_loop
from gptlab.train.optim import build_optimizer

HEAD_FILE = "reward_head.safetensors"
INFO_FILE = "reward.json"


# --------------------------------------------------------------------------- losses

def pair_matrix(k: int, ties=(), device=None) -> torch.Tensor:
    """(K, K) bool: True at (i, j) for i < j (response i ranked above j), except the
    ``ties`` (pairs of positions the rater found equal)."""
    m = torch.ones(k, k, dtype=torch.bool, device=device).triu(diagonal=1)
    for i, j in ties:
        m[min(i, j), max(i, j)] = False
    return m


def ranking_loss(rewards: torch.Tensor, ties=()) -> torch.Tensor:
    """Bradley-Terry loss of one ranking: rewards (K,) best first -> mean over the C(K, 2)
    pairs i < j (less the ties) of -log sigmoid(r_i - r_j)."""
    diff = rewards[:, None] - rewards[None, :]
    return -F.logsigmoid(diff[pair_matrix(len(rewards), ties, rewards.device)]).mean()


def batch_ranking_loss(rewards: torch.Tensor, sizes: Sequence[int],
                       ties: Sequence | None = None) -> torch.Tensor:
    """Mean of ``ranking_loss`` over consecutive groups of ``sizes`` in ``rewards``: every
    prompt weighs the same, whatever its K (InstructGPT's 1/C(K,2) normalization)."""
    losses, start = [], 0
    for n, k in enumerate(sizes):
        losses.append(ranking_loss(rewards[start:start + k], ties[n] if ties else ()))
        start += k
    return torch.stack(losses).mean()


# --------------------------------------------------------------------------- the model

class RewardModel(nn.Module):
    """A decoder plus a linear head on the last token. ``forward`` gives raw rewards;
    ``score`` gives normalized ones for (prompt, response) pairs."""

    def __init__(self, backbone, tokenizer, *, offset: float = 0.0, scale: float = 1.0,
                 max_len: int | None = None, info: dict | None = None):
        super().__init__()
        self.backbone, self.tokenizer = backbone, tokenizer
        d = backbone.config.hidden_size
        self.head = nn.Linear(d, 1)
        nn.init.normal_(self.head.weight, std=1 / math.sqrt(d + 1))
        nn.init.zeros_(self.head.bias)
        self.offset, self.scale = float(offset), float(scale)
        self.max_len = max_len or int(backbone.config.max_position_embeddings)
        self.info = info or {}

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """ids (B, T) right-padded, lengths (B,) -> raw rewards (B,) read at the last token."""
        h = self.backbone.hidden_states(ids)  # right-padded: causal attention keeps padding out
        last = h[torch.arange(ids.shape[0], device=ids.device), lengths - 1]
        return self.head(last).squeeze(-1).float()

    def encode(self, messages, response: str) -> list[int]:
        return render_response(self.tokenizer, messages, response, self.max_len)[0]

    def raw_rewards(self, rows: Sequence[Sequence[int]], batch_size: int = 32) -> list[float]:
        """Raw rewards of token rows (each ending with the response's end-of-turn token)."""
        dev = next(self.parameters()).device
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]))   # less padding
        out = [0.0] * len(rows)
        was_training = self.training
        self.eval()
        with torch.no_grad():
            for b in range(0, len(order), batch_size):
                chunk = order[b:b + batch_size]
                ids, mask = pad_batch([rows[i] for i in chunk], self.tokenizer.pad_id or 0,
                                      device=dev)
                for i, r in zip(chunk, self(ids, mask.sum(1)).tolist()):
                    out[i] = r
        self.train(was_training)
        return out

    def score(self, records_or_messages: Sequence, responses: Sequence[str],
              batch_size: int = 32) -> list[float]:
        """Normalized rewards (SFT samples: mean 0, std 1) of responses to prompts (records
        with "messages", or message lists)."""
        if len(records_or_messages) != len(responses):
            raise ValueError(f"{len(records_or_messages)} prompts but {len(responses)} responses")
        rows = [self.encode(prompt_messages(p), r) for p, r in zip(records_or_messages, responses)]
        return [(r - self.offset) / self.scale for r in self.raw_rewards(rows, batch_size)]

    # -- files
    def save(self, out_dir: str | Path, meta: dict | None = None,
             extra_files: dict[str, str] | None = None) -> Path:
        """The backbone as a gptlab checkpoint + head + reward.json, written atomically."""
        from safetensors.torch import save_file

        info = {**self.info, "offset": self.offset, "scale": self.scale, "max_len": self.max_len}
        with atomic_dir(out_dir, markers=("config.json", INFO_FILE)) as tmp:
            save_checkpoint(tmp, self.backbone, self.tokenizer, meta={"stage": "reward", **(meta or {})})
            save_file({"weight": self.head.weight.detach().cpu().contiguous(),
                       "bias": self.head.bias.detach().cpu().contiguous()}, str(tmp / HEAD_FILE))
            (tmp / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
            for name, text in (extra_files or {}).items():
                (tmp / name).write_text(text)
        return Path(out_dir)

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu") -> "RewardModel":
        from safetensors.torch import load_file

        path = Path(path)
        if not (path / HEAD_FILE).is_file() or not (path / INFO_FILE).is_file():
            raise FileNotFoundError(f"{path} is not a reward model directory (needs {HEAD_FILE} "
                                    f"and {INFO_FILE}; train one with `gptlab reward`)")
        ckpt = load_chat_model(path, device=device)
        info = json.loads((path / INFO_FILE).read_text())
        rm = cls(ckpt.model, ckpt.tokenizer, offset=info.get("offset", 0.0),
                 scale=info.get("scale", 1.0), max_len=info.get("max_len"), info=info)
        head = load_file(str(path / HEAD_FILE))
        rm.head.load_state_dict({"weight": head["weight"], "bias": head["bias"]})
        return rm.to(device).eval()


# --------------------------------------------------------------------------- data

@dataclass
class Group:
    """One prompt's ranked responses (best first) as token rows; texts kept for the judge."""
    prompt: list
    meta: dict
    responses: list[str]
    rows: list[list[int]]
    ties: tuple = ()          # (i, j) positions the rater found equal: no preference

    def pairs(self) -> list[tuple[int, int]]:
        """The preferences (i above j) this ranking states."""
        tied = {tuple(t) for t in self.ties}
        return [(i, j) for i in range(len(self.rows)) for j in range(i + 1, len(self.rows))
                if (i, j) not in tied]


def load_groups(store, tok, max_len: int, kinds: Sequence[str] | None = None) -> list[Group]:
    """Every ranking (ties and all), and every pairwise comparison as a ranking of two."""
    items = store.rankings(kinds) + [
        {"prompt": c["prompt"], "meta": c["meta"], "responses": [c["chosen"], c["rejected"]]}
        for c in store.comparisons(kinds)]
    groups = []
    for it in items:
        msgs = prompt_messages(it["prompt"])
        rows = [render_response(tok, msgs, r, max_len)[0] for r in it["responses"]]
        groups.append(Group(msgs, it.get("meta") or {}, list(it["responses"]), rows,
                            tuple(tuple(t) for t in it.get("ties") or ())))
    return groups


def split_groups(groups: list[Group], val_frac: float, seed: int) -> tuple[list[Group], list[Group]]:
    """Held-out split by prompt (every ranking of a prompt on the same side)."""
    keys = sorted({json.dumps(g.prompt, sort_keys=True) for g in groups})
    random.Random(seed).shuffle(keys)
    n_val = int(round(val_frac * len(keys))) if len(keys) > 1 else 0
    val_keys = set(keys[:n_val])
    train = [g for g in groups if json.dumps(g.prompt, sort_keys=True) not in val_keys]
    val = [g for g in groups if json.dumps(g.prompt, sort_keys=True) in val_keys]
    return train, val


def make_batch(groups: Sequence[Group], pad_id: int, device) -> tuple:
    rows = [r for g in groups for r in g.rows]
    ids, mask = pad_batch(rows, pad_id, device=device)
    return ids, mask.sum(1), [len(g.rows) for g in groups], [g.ties for g in groups]


# --------------------------------------------------------------------------- metrics

def pair_accuracy(groups: Sequence[Group], rewards: Sequence[Sequence[float]]) -> float | None:
    """Share of ranked pairs (i above j; the rater's ties left out) that the rewards order
    the same way (equal rewards: 1/2)."""
    hits, n = 0.0, 0
    for g, r in zip(groups, rewards):
        for i, j in g.pairs():
            hits += 1.0 if r[i] > r[j] else 0.5 if r[i] == r[j] else 0.0
            n += 1
    return hits / n if n else None


def separating_check(better, worse) -> str:
    """The judge check that tells two verdicts apart: the first hard check only the worse
    answer fails, else its first such soft check, else "brevity"."""
    extra = [c for c in worse.failed if c not in better.failed]
    hard = [c for c in extra if c in HARD_CHECKS]
    return (hard or extra or ["brevity"])[0].split("#")[0]


def judge_agreement(groups: Sequence[Group], rewards, judge) -> dict:
    """Against the noiseless judge, on the pairs it orders strictly (different scores):
    ``rm_vs_judge``, how often the reward model orders them as the judge does;
    ``labels_vs_judge``, how often the stored (noisy) labels do -- the accuracy a perfect
    judge-copying model would get on those labels, i.e. the ceiling the noise allows;
    ``rm_vs_labels``, the reward model's accuracy on the stored labels of those pairs;
    ``by_check``: {separating check: [pairs, rm_vs_judge]}."""
    rm_hits = label_hits = rm_label_hits = n = ties = 0
    by_check: dict = {}
    for g, r in zip(groups, rewards):
        v = [judge.score(g.prompt, resp, g.meta or None) for resp in g.responses]
        for i in range(len(v)):
            for j in range(i + 1, len(v)):         # stored label: i above j
                if abs(v[i].score - v[j].score) < 1e-9:
                    ties += 1
                    continue
                n += 1
                hi, lo = (i, j) if v[i].score > v[j].score else (j, i)
                label_hits += hi == i
                rm_hits += r[hi] > r[lo]
                rm_label_hits += r[i] > r[j]
                c = by_check.setdefault(separating_check(v[hi], v[lo]), [0, 0])
                c[0] += 1
                c[1] += r[hi] > r[lo]
    frac = (lambda x: x / n if n else None)
    return {"rm_vs_judge": frac(rm_hits), "labels_vs_judge": frac(label_hits),
            "rm_vs_labels": frac(rm_label_hits), "strict_pairs": n, "judge_tied_pairs": ties,
            "by_check": {k: [m, round(h / m, 3)] for k, (m, h) in
                         sorted(by_check.items(), key=lambda kv: -kv[1][0])}}


def group_rewards(rm: RewardModel, groups: Sequence[Group], batch_size: int = 64) -> list[list[float]]:
    flat = rm.raw_rewards([r for g in groups for r in g.rows], batch_size)
    out, i = [], 0
    for g in groups:
        out.append(flat[i:i + len(g.rows)])
        i += len(g.rows)
    return out


# --------------------------------------------------------------------------- training

@dataclass
class RewardConfig(RunSettings):
    """Everything `gptlab reward` accepts; fields map 1:1 to CLI flags (the shared ones from
    `RunSettings`: the reward model trains in one go and is written once, at the end)."""

    out: str = cli_field("runs/rm/rm", "output directory (the reward model)")
    lr: float = cli_field(3e-4, "peak AdamW learning rate (backbone and head)")
    warmup_steps: int | None = cli_field(None, "linear warmup steps; unset: 5 percent of the steps")
    eval_every: int = cli_field(0, "held-out accuracy every N steps (0: at the start and the end)")
    init: str = cli_field("", "chat checkpoint the reward model starts from (usually the SFT model)")
    db: str = cli_field("", "feedback store: a path (SQLite) or an SQLAlchemy URL")
    kinds: str | None = cli_field(None, "train on these rater kinds only, comma-separated (judge, human, import; default: all)")
    epochs: float = cli_field(2.0, "passes over the training rankings")
    batch_size: int = cli_field(8, "rankings (prompts) per optimizer step; all pairs of a ranking share a step")
    val_frac: float = cli_field(0.1, "share of prompts held out for pairwise accuracy (when no --val-db)")
    val_db: str | None = cli_field(None, "held-out feedback store (e.g. simulated on eval prompts): measure on it and train on all of --db")
    train_layers: int | None = cli_field(None, "fine-tune only the last N transformer blocks (+ final norm and head; 0: the head alone); unset: everything")
    max_len: int | None = cli_field(None, "tokens per prompt + response, oldest cut first (default: the model's context)")
    norm_samples: int = cli_field(2000, "stored responses scored to set the normalization (mean 0, std 1)")
    world: str | None = cli_field(None, "miniworld dir whose judge re-labels held-out pairs without noise (default: the store's prompt source, if it is one)")


def _batches(train: list[Group], batch_size: int, seed: int):
    """Endless shuffled passes over the training groups, ``batch_size`` at a time."""
    epoch = 0
    while True:
        order = list(range(len(train)))
        random.Random(f"rm-{seed}-{epoch}").shuffle(order)
        for b in range(0, len(order) - batch_size + 1, batch_size):   # full batches only
            yield [train[i] for i in order[b:b + batch_size]]
        epoch += 1


def freeze_backbone(gpt, train_layers: int) -> None:
    """Train only the last ``train_layers`` blocks and the final norm (the head always):
    fewer free parameters when preferences are few."""
    n = len(gpt.model.layers)
    if not 0 <= train_layers <= n:
        raise ValueError(f"--train-layers must be in [0, {n}], got {train_layers}")
    for p in gpt.parameters():
        p.requires_grad_(False)
    for layer in list(gpt.model.layers)[n - train_layers:]:
        for p in layer.parameters():
            p.requires_grad_(True)
    if train_layers:
        gpt.model.norm.weight.requires_grad_(True)


class _Records:
    """run_loop's logger, kept in memory: the lines go into OUT/metrics.jsonl with the model
    (the directory is written atomically at the end)."""

    def __init__(self):
        self.records: list[dict] = []

    def log(self, record: dict) -> None:
        self.records.append(record)

    def close(self) -> None:
        pass


def _world_dir(cfg: RewardConfig, store) -> Path | None:
    if cfg.world:
        return Path(cfg.world)
    for src in store.sources():
        if (Path(src) / "kb.json").is_file():
            return Path(src)
    return None


def _prepare(cfg: RewardConfig):
    """The reward model to train and its data: (rm, store, train, val, norm_rows)."""
    from gptlab.feedback import FeedbackStore  # deferred: needs sqlalchemy (not on GPU boxes)
    if not cfg.init or not cfg.db:
        raise ValueError("gptlab reward needs --init (a chat checkpoint) and --db (a feedback store)")
    ckpt = load_chat_model(cfg.init)
    if ckpt.tokenizer is None:
        raise ValueError(f"{cfg.init} has no tokenizer.json")
    rm = RewardModel(ckpt.model, ckpt.tokenizer, max_len=cfg.max_len)
    rm = rm.to(resolve_device(cfg.device)).train()
    if cfg.train_layers is not None:
        freeze_backbone(rm.backbone, cfg.train_layers)
    store = FeedbackStore(cfg.db)
    kinds = [k.strip() for k in cfg.kinds.split(",")] if cfg.kinds else None
    groups = load_groups(store, rm.tokenizer, rm.max_len, kinds)
    if cfg.val_db:
        train, val = groups, load_groups(FeedbackStore(cfg.val_db), rm.tokenizer, rm.max_len, kinds)
    else:
        train, val = split_groups(groups, cfg.val_frac, cfg.seed)
    # every stored answer sets the normalization; only stated preferences train
    norm_rows = [r for g in train for r in g.rows][:cfg.norm_samples]
    train, val = [g for g in train if g.pairs()], [g for g in val if g.pairs()]
    if not train:
        raise ValueError(f"{cfg.db} holds no preference (rankings without ties, or comparisons)"
                         + (f" of kind {cfg.kinds}" if kinds else ""))
    return rm, store, train, val, norm_rows


def train_reward(cfg: RewardConfig) -> Path:
    """Train a reward model on the store's rankings and comparisons; returns cfg.out."""
    t0 = time.time()
    seed_everything(cfg.seed)
    rm, store, train, val, norm_rows = _prepare(cfg)
    device = next(rm.parameters()).device
    bs = min(cfg.batch_size, len(train))
    steps = max(1, math.ceil(cfg.epochs * len(train) / bs))
    print0(f"reward model: {len(train)} train / {len(val)} held-out rankings "
           f"({sum(len(g.pairs()) for g in train)} / {sum(len(g.pairs()) for g in val)} pairs), "
           f"{steps} steps of {bs}")
    stream, pad = _batches(train, bs, cfg.seed), rm.tokenizer.pad_id or 0

    def evaluate() -> dict:
        return {"val_accuracy": pair_accuracy(val, group_rewards(rm, val))} if val else {}

    def loss_fn(model, batch):
        ids, lengths, sizes, ties = batch
        return batch_ranking_loss(model(ids, lengths), sizes, ties)

    hooks = LoopHooks(next_batch=lambda: make_batch(next(stream), pad, device),
                      save=lambda step, final: None, loss_fn=loss_fn, evaluate=evaluate)
    warmup = cfg.warmup_steps if cfg.warmup_steps is not None else round(0.05 * steps)
    loop_cfg = LoopConfig(max_steps=steps, warmup_steps=warmup, schedule="cosine",
                          final_lr_frac=0.1, grad_clip=cfg.grad_clip, eval_every=cfg.eval_every,
                          progress=cfg.progress, desc="reward")
    logger = _Records()
    run_loop(rm, build_optimizer(rm, lr=cfg.lr, weight_decay=cfg.weight_decay), loop_cfg, hooks,
             env=DistEnv(device=device), logger=logger)
    rm.eval()
    stats = _final_stats(rm, cfg, store, train, val, norm_rows, time.time() - t0)
    rm.offset, rm.scale = stats.pop("offset"), stats.pop("scale")
    rm.info = stats
    metrics = "".join(json.dumps(r) + "\n" for r in logger.records)
    scalars = {k: v for k, v in stats.items() if isinstance(v, (int, float))}
    rm.save(cfg.out, meta={"parent": str(cfg.init), "metrics": scalars},
            extra_files={"metrics.jsonl": metrics})
    print0(format_stats(stats))
    return Path(cfg.out)


def _final_stats(rm: RewardModel, cfg: RewardConfig, store, train, val, rows,
                 train_s: float) -> dict:
    """Normalization, held-out accuracy, agreement with the noiseless judge, timings."""
    raw = torch.tensor(rm.raw_rewards(rows, 64))
    offset = float(raw.mean())
    scale = float(raw.std()) if len(raw) > 1 and float(raw.std()) > 1e-6 else 1.0
    val_r = group_rewards(rm, val)
    stats = {"offset": offset, "scale": scale, "norm_samples": len(rows),
             "train_rankings": len(train), "val_rankings": len(val),
             "train_pairs": sum(len(g.pairs()) for g in train),
             "val_pairs": sum(len(g.pairs()) for g in val),
             "train_accuracy": pair_accuracy(train, group_rewards(rm, train)),
             "val_accuracy": pair_accuracy(val, val_r), "train_seconds": round(train_s, 1),
             "db": str(cfg.db), "config": dataclasses.asdict(cfg)}
    world = _world_dir(cfg, store)
    if world is not None and val:
        agree = judge_agreement(val, val_r, Judge.from_dir(world))
        stats.update({f"val_{k}": v for k, v in agree.items()})
        if agree["labels_vs_judge"]:
            stats["val_ratio_to_ceiling"] = agree["rm_vs_labels"] / agree["labels_vs_judge"]
        stats["world"] = str(world)
    return stats


def format_stats(stats: dict) -> str:
    keys = ["train_pairs", "val_pairs", "train_accuracy", "val_accuracy", "val_rm_vs_labels",
            "val_labels_vs_judge", "val_ratio_to_ceiling", "val_rm_vs_judge", "offset", "scale",
            "train_seconds"]
    return "\n".join(f"  {k:<22} {stats[k]:.4f}" if isinstance(stats[k], float)
                     else f"  {k:<22} {stats[k]}" for k in keys if stats.get(k) is not None)


# --------------------------------------------------------------------------- rewards by name

def _as_record(item) -> dict:
    if isinstance(item, dict):
        return item
    return {"messages": list(item)}   # a bare message list: the judge infers the meta


class JudgeReward:
    """The gold judge as a reward: its score, or (verifiable) 1.0 without hard failure."""

    def __init__(self, judge, verifiable: bool = False):
        self.judge, self.verifiable = judge, verifiable
        self.name = "verifiable" if verifiable else "judge"

    def score(self, records_or_messages: Sequence, responses: Sequence[str]) -> list[float]:
        if len(records_or_messages) != len(responses):
            raise ValueError(f"{len(records_or_messages)} prompts but {len(responses)} responses")
        out = []
        for item, resp in zip(records_or_messages, responses):
            v = self.judge.score_record(_as_record(item), resp)
            out.append((0.0 if v.hard_failed else 1.0) if self.verifiable else v.score)
        return out


def load_reward(spec: str | Path, world_dir=None, device: str = "cpu"):
    """A reward with ``.score(records_or_messages, responses) -> list[float]``:
    a reward-model directory (rewards normalized: SFT samples have mean 0, std 1),
    "judge" (gold-judge score in [0, 1]), "verifiable" (1.0 if no hard check fails) or "code"
    (the reply's code run against its task's hidden tests in the sandbox: 1.0 if all pass,
    less 0.1 per style problem; for prompts such as WORLD/code/prompts.jsonl)."""
    if str(spec) in ("judge", "verifiable", "code") and world_dir is None:
        raise ValueError(f"reward {spec!r} needs the miniworld directory (world_dir, --world)")
    if str(spec) == "code":
        from gptlab.evals.code_eval import CodeTasks
        return CodeTasks.from_dir(world_dir)
    if str(spec) in ("judge", "verifiable"):
        from gptlab.judge import Judge
        return JudgeReward(Judge.from_dir(world_dir), verifiable=str(spec) == "verifiable")
    return RewardModel.load(spec, device=device)


# --------------------------------------------------------------------------- best-of-N

def best_of_n(model, tok, reward, records: Sequence, n: int, *, max_new_tokens: int = 96,
              temperature: float = 1.0, seed: int = 0, batch_size: int = 64,
              progress: bool = False) -> list[dict]:
    """Sample n answers per record (or message list) and keep the highest-reward one.
    ``reward``: anything with ``.score(prompts, responses)`` (``load_reward``). Returns per
    record {"best", "reward", "answers", "rewards"} (ties go to the earlier sample)."""
    if n < 1:
        raise ValueError(f"best-of-N needs N >= 1, got {n}")
    rows = [r for r in records for _ in range(n)]
    answers = generate_answers(model, tok, rows, max_new_tokens, temperature=temperature,
                               seed=seed, batch_size=batch_size, progress=progress,
                               desc=f"best-of-{n}")
    rewards = reward.score(rows, answers)
    out = []
    for i in range(len(records)):
        a, r = answers[i * n:(i + 1) * n], rewards[i * n:(i + 1) * n]
        j = max(range(n), key=lambda t: (r[t], -t))
        out.append({"best": a[j], "reward": r[j], "answers": a, "rewards": r})
    return out


def evaluate_best_of_n(model_dir, reward_spec, world, ns: Sequence[int] = (1, 4, 8), *,
                       per_category: int = 20, seed: int = 0, max_new_tokens: int = 64,
                       batch_size: int = 64) -> dict:
    """Gold-judge win rate of best-of-N (temperature-1 samples, picked by the reward) over
    the model's greedy answers on held-out prompts, for each N in ``ns``. The max(ns)
    samples per prompt are drawn once; best-of-n uses the first n of them (they are i.i.d.),
    so the N values differ only in the choice. The same choice made by the gold judge
    itself (``oracle``) is the ceiling a perfect reward model would reach."""
    judge, ckpt = Judge.from_dir(world), load_chat_model(model_dir)
    records = heldout_records(world, per_category, seed)
    greedy = generate_answers(ckpt.model, ckpt.tokenizer, records, max_new_tokens,
                              batch_size=batch_size)
    top = max(ns)
    t0 = time.time()
    picks = best_of_n(ckpt.model, ckpt.tokenizer, load_reward(reward_spec, world), records, top,
                      max_new_tokens=max_new_tokens, seed=seed, batch_size=batch_size)
    sample_s = time.time() - t0
    oracle = load_reward("judge", world)
    out = {"records": len(records), "reward": str(reward_spec), "seconds_sampling_and_scoring":
           round(sample_s, 1), "greedy_mean_judge": None, "n": {}}
    for n in ns:
        mine = [max(range(n), key=lambda t: (p["rewards"][t], -t)) for p in picks]
        gold = [oracle.score([r] * n, p["answers"][:n]) for r, p in zip(records, picks)]
        best_gold = [max(range(n), key=lambda t: (g[t], -t)) for g in gold]
        wr = win_rate([p["answers"][i] for p, i in zip(picks, mine)], greedy, records, judge)
        wo = win_rate([p["answers"][i] for p, i in zip(picks, best_gold)], greedy, records, judge)
        out["greedy_mean_judge"] = wr["mean_ref"]
        out["n"][n] = {"win_rate": wr["win_rate"], "mean_judge": wr["mean_policy"],
                       "oracle_win_rate": wo["win_rate"], "oracle_mean_judge": wo["mean_policy"]}
    return out
