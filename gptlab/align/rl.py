"""Reinforcement learning from a reward: PPO (with a value head and GAE) and GRPO.

`run_rl(cfg)` improves a chat model on a set of prompts against a reward (a reward-model
directory, the gold judge, or its verifiable pass/fail; `gptlab.align.reward.load_reward`).
Every step:

1. rollouts: a batch of prompts is answered by the policy through the KV-cache engine
   (`gptlab.engine.Engine`, batched, temperature sampling, seeded by the step), stopping at
   the end-of-turn token or after ``max_new_tokens``. An answer that never ends loses
   ``unfinished_penalty`` from its reward;
2. scoring: the reward of each answer; per-token log-probs under the policy and under the
   reference (a frozen copy of the init model); the per-token KL estimate
   ``log pi - log ref`` (0 when the policy equals the reference);
3. update, by ``--algo``:
   - ``ppo`` (Schulman et al. 2017, arXiv:1707.06347, as InstructGPT uses it, Ouyang et al.
     2022): the KL penalty ``-kl_coef * kl_t`` is a reward on every token and the score
     comes at the last token; a linear value head on the policy's last hidden state gives
     V(s_t); advantages by GAE (Schulman et al. 2015, arXiv:1506.02438), whitened over the
     batch; ``ppo_epochs`` passes of minibatches with the clipped surrogate and a clipped
     value loss;
   - ``grpo`` (Shao et al. 2024, DeepSeekMath, arXiv:2402.03300): ``group_size`` answers per
     prompt; each answer's advantage is its reward minus the group mean, divided by the
     group's standard deviation, on all of its tokens; no value head; the KL to the
     reference is a per-token penalty in the loss (the non-negative ``k3`` estimator).

Every ``eval_every`` steps the policy answers a fixed batch of held-out prompts greedily
and the gold judge scores them (``gold``), with the proxy reward on the same answers and
the win rate over the init model's answers. Outputs:

    out/metrics.jsonl  per step: reward, kl, entropy, length, unfinished, losses; + gold...
    out/ckpt/step_N/   resumable checkpoints (weights + optimizer, value head, RNG, position)
    out/final/         the trained chat model (stage "rl"; value_head.pt beside it for PPO)
"""

from __future__ import annotations

import copy
import dataclasses
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from gptlab.align.common import generate_answers, load_prompt_records, win_rate
from gptlab.align.dpo import pad_rows, token_logprobs
from gptlab.align.reward import load_reward
from gptlab.chat import load_chat_model, render_prompt, stop_token_ids
from gptlab.checkpoint import save_checkpoint
from gptlab.engine import Engine
from gptlab.settings import TrainSettings, cli_field as _f, not_used
from gptlab.train.checkpoints import (StopSignal, checkpoint_path, prune_checkpoints, resume_run,
                                      rng_state)
from gptlab.train.dist import resolve_device
from gptlab.train.metrics import MetricsLogger
from gptlab.train.optim import build_optimizer

ALGOS = ("ppo", "grpo")


@dataclass
class RLConfig(TrainSettings):
    """Everything `gptlab rl` accepts; fields map 1:1 to CLI flags (the shared ones from
    `TrainSettings`)."""

    out: str = _f("runs/rl", "output directory (metrics, checkpoints, final model)")
    lr: float = _f(1e-4, "AdamW learning rate (constant after a short warmup)")
    warmup_steps: int = _f(3, "linear warmup steps")
    eval_every: int = _f(10, "gold-judge eval of the fixed held-out batch every N steps (0 = start and end only)")
    save_every: int = _f(20, "checkpoint every N steps (and at the end)")
    keep_checkpoints: int = _f(1, "step checkpoints kept (0 = all)")
    # policy and reference load in float32 (load_chat_model); rollouts, scoring and updates
    # run without autocast or torch.compile
    dtype: str = not_used("auto", "rl runs in float32")
    compile: bool = not_used(False, "rl runs the model eagerly")
    # what is trained, and what scores it
    algo: str = _f("ppo", "ppo (value head + GAE) or grpo (group baseline)")
    init: str = _f("", "the chat model to improve (also the frozen KL reference)")
    reward: str = _f("judge", "reward: a reward-model directory, judge (gold-judge score), verifiable (1 if no hard check fails) or code (hidden tests pass, run in the sandbox)")
    prompts: str = _f("", "RL prompts: a miniworld dir (its prompts/*.jsonl) or a jsonl of {messages, meta} records")
    world: str | None = _f(None, "miniworld dir for the judge and the gold eval; unset: --prompts when it is one")
    # rollouts: each step samples a fresh batch from the current policy (on-policy), scores it
    # once, then updates on it; max_new_tokens bounds the cost of a step on CPU
    steps: int = _f(30, "RL steps (one batch of rollouts and its update each)")
    batch_size: int = _f(32, "answers sampled per step: as many prompts (ppo), or batch_size / group_size prompts x group_size answers (grpo)")
    group_size: int = _f(4, "grpo: answers sampled per prompt")
    max_new_tokens: int = _f(64, "longest answer; one that does not end by then is penalized")
    temperature: float = _f(1.0, "sampling temperature of the rollouts")
    top_k: int | None = _f(None, "sample from the top k tokens only (unset: all)")
    # the objective: score minus kl_coef x KL(policy || reference). Without the KL term the
    # policy drifts to whatever wording the scorer over-rates (reward hacking); with ppo it is
    # paid per token as reward, with grpo it is a loss term (DeepSeekMath).
    kl_coef: float = _f(0.05, "weight of the per-token KL penalty against the reference")
    unfinished_penalty: float = _f(0.5, "subtracted from the reward of an answer with no end-of-turn token")
    # the clipped update (Schulman et al. 2017): once a token's probability ratio has moved past
    # 1 +- clip in the direction its advantage favours, it gets no more gradient, so several
    # passes over one batch cannot carry the policy far from the one that sampled it
    ppo_epochs: int = _f(2, "passes over each batch of rollouts")
    minibatch_size: int = _f(32, "rollouts per optimizer step")
    clip: float = _f(0.2, "PPO clip range of the probability ratio")
    vf_coef: float = _f(0.5, "ppo: weight of the value loss")
    # gamma 1: an episode is one short answer scored at its end, so discounting would only
    # shrink the score seen by the early tokens
    gamma: float = _f(1.0, "ppo: discount")
    lam: float = _f(0.95, "ppo: GAE lambda")
    entropy_coef: float = _f(0.0, "entropy bonus weight (0 = off; entropy is logged either way)")
    eval_per_category: int = _f(6, "held-out prompts per category in the eval batch (0 = no gold eval)")
    train_layers: int | None = _f(None, "update only the top N transformer blocks and the final norm (backward stops there: cheaper steps on CPU); unset: every weight")


# --------------------------------------------------------------------------- math


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
        lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized advantage estimation over (B, T) tensors; ``mask`` is 1 on each row's
    action tokens (one contiguous span; V = 0 after the last one). Returns (advantages,
    returns), both 0 off the mask:  delta_t = r_t + gamma V_{t+1} - V_t,
    A_t = delta_t + gamma lam A_{t+1}."""
    B, T = rewards.shape
    adv = torch.zeros_like(rewards)
    next_v = torch.zeros(B, dtype=rewards.dtype, device=rewards.device)
    next_a = torch.zeros_like(next_v)
    for t in range(T - 1, -1, -1):
        m = mask[:, t]
        delta = rewards[:, t] + gamma * next_v - values[:, t]
        a = (delta + gamma * lam * next_a) * m
        adv[:, t] = a
        # off the span (prompt, padding) nothing flows backward
        next_v = torch.where(m > 0, values[:, t], torch.zeros_like(next_v))
        next_a = a
    return adv, (adv + values) * mask


def kl_per_token(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k1 estimate of KL(pi || ref) per sampled token: log pi - log ref."""
    return logp - ref_logp


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k3 estimate (Schulman 2020): exp(ref - pi) - (ref - pi) - 1 >= 0, unbiased."""
    d = ref_logp - logp
    return torch.exp(d) - d - 1


def group_advantages(rewards: torch.Tensor, group_size: int, eps: float = 1e-4) -> torch.Tensor:
    """GRPO: (reward - group mean) / (group std + eps), rewards laid out group by group."""
    r = rewards.view(-1, group_size)
    adv = (r - r.mean(1, keepdim=True)) / (r.std(1, keepdim=True, unbiased=False) + eps)
    return adv.view(-1)


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum().clamp(min=1)


def whiten(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    return (x - mean) * torch.rsqrt(var + 1e-8) * mask


def forward_with_hidden(model, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and the final (normed) hidden states of one forward pass."""
    seen = {}
    hook = model.model.norm.register_forward_hook(lambda _m, _i, out: seen.__setitem__("h", out))
    try:
        logits = model(ids)
    finally:
        hook.remove()
    return logits, seen["h"]


def token_entropy(logits: torch.Tensor) -> torch.Tensor:
    """(B, T, V) -> (B, T) entropy of the next-token distribution, aligned like
    ``token_logprobs`` (column t: the distribution token t was drawn from)."""
    lp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    return nn.functional.pad(-(lp.exp() * lp).sum(-1), (1, 0))


# --------------------------------------------------------------------------- prompts


class PromptStream:
    """Seeded epochs of shuffled prompts; ``position`` counts prompts handed out."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.position = n, seed, 0

    def take(self, k: int) -> list[int]:
        out = []
        for _ in range(k):
            epoch, i = divmod(self.position, self.n)
            order = list(range(self.n))
            random.Random(f"rl-{self.seed}-{epoch}").shuffle(order)
            out.append(order[i])
            self.position += 1
        return out


# --------------------------------------------------------------------------- rollouts


def forget_inference_tensors(model) -> None:
    """The engine runs under ``torch.inference_mode``, so the RoPE tables the model cached
    there cannot take part in a backward pass: drop them (they are rebuilt lazily)."""
    model._rope = None


@dataclass
class Rollouts:
    records: list[dict]
    texts: list[str]
    ids: torch.Tensor          # (N, T) prompt + answer (+ end-of-turn), right-padded
    mask: torch.Tensor         # (N, T) 1 on the answer's tokens (the actions)
    finished: torch.Tensor     # (N,) 1 if the answer ended by itself
    score: torch.Tensor        # (N,) the reward model's / judge's reward
    reward: torch.Tensor       # (N,) score minus the unfinished penalty
    logp: torch.Tensor | None = None
    ref_logp: torch.Tensor | None = None
    values: torch.Tensor | None = None


def rollout(policy, tok, records: list[dict], reward, cfg: RLConfig, seed: int, device) -> Rollouts:
    """Answer every record once (engine, sampling), score the answers, build the batch."""
    keep = policy.config.max_position_embeddings - cfg.max_new_tokens - 1
    prompts = [render_prompt(tok, r["messages"])[-keep:] for r in records]
    engine = Engine(policy, tok)
    was = policy.training
    policy.eval()
    gens = engine.generate(prompts, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                           top_k=cfg.top_k, seed=seed, stop_token_ids=stop_token_ids(tok))
    policy.train(was)
    forget_inference_tensors(policy)
    finished = [f == "stop" for f in engine.last_finish_reasons]
    texts = [tok.decode(g, skip_special_tokens=True) for g in gens]
    end = tok.im_end_id if tok.im_end_id is not None else tok.eos_id
    rows, masks = [], []
    for p, g, done in zip(prompts, gens, finished):
        answer = list(g) + ([end] if done else [])
        rows.append(p + answer)
        masks.append([0] * len(p) + [1] * len(answer))
    ids, mask = pad_rows(rows, masks, tok.pad_id, device)
    score = torch.tensor(reward.score(records, texts), dtype=torch.float32, device=device)
    fin = torch.tensor(finished, dtype=torch.float32, device=device)
    return Rollouts(records, texts, ids, mask, fin, score, score - cfg.unfinished_penalty * (1 - fin))


@torch.no_grad()
def score_tokens(policy, ref, value_head, ro: Rollouts, rows: int = 32) -> None:
    """Fill the rollouts' per-token log-probs (policy, reference) and values (PPO)."""
    logp, ref_logp, values = [], [], []
    for i in range(0, ro.ids.shape[0], rows):
        ids = ro.ids[i:i + rows]
        logits, h = forward_with_hidden(policy, ids)
        logp.append(token_logprobs(policy, ids, logits))
        ref_logp.append(token_logprobs(ref, ids))
        if value_head is not None:
            values.append(_values(value_head, h))
    ro.logp, ro.ref_logp = torch.cat(logp) * ro.mask, torch.cat(ref_logp) * ro.mask
    ro.values = torch.cat(values) * ro.mask if value_head is not None else None


def _values(value_head, h: torch.Tensor) -> torch.Tensor:
    """V for the state before each token: column t reads the hidden state at t - 1."""
    return nn.functional.pad(value_head(h).squeeze(-1)[:, :-1].float(), (1, 0))


def ppo_advantages(ro: Rollouts, cfg: RLConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards (KL penalty on each token, the reward at the last) -> GAE."""
    kl = kl_per_token(ro.logp, ro.ref_logp) * ro.mask
    rewards = -cfg.kl_coef * kl
    last = ro.mask.shape[1] - 1 - ro.mask.flip(1).argmax(1)  # each row's last action
    rewards[torch.arange(len(last)), last] += ro.reward
    adv, ret = gae(rewards, ro.values, ro.mask, cfg.gamma, cfg.lam)
    return whiten(adv, ro.mask), ret


# --------------------------------------------------------------------------- update


def policy_loss(logp, old_logp, adv, mask, clip: float) -> tuple[torch.Tensor, dict]:
    ratio = torch.exp(logp - old_logp)
    surr = torch.maximum(-adv * ratio, -adv * ratio.clamp(1 - clip, 1 + clip))
    with torch.no_grad():
        clipfrac = masked_mean(((ratio - 1).abs() > clip).float(), mask)
        approx_kl = masked_mean(0.5 * (logp - old_logp) ** 2, mask)
    return masked_mean(surr, mask), {"clipfrac": float(clipfrac), "approx_kl": float(approx_kl)}


def update(policy, value_head, optimizer, params, ro: Rollouts, adv, ret, cfg: RLConfig,
           rng: random.Random) -> dict:
    """``ppo_epochs`` passes of shuffled minibatches; returns mean losses and diagnostics."""
    n = ro.ids.shape[0]
    logs: dict[str, list[float]] = {}
    for _ in range(cfg.ppo_epochs):
        order = list(range(n))
        rng.shuffle(order)
        for i in range(0, n, cfg.minibatch_size):
            idx = torch.tensor(order[i:i + cfg.minibatch_size], device=ro.ids.device)
            stats = _minibatch_step(policy, value_head, optimizer, params, ro, adv, ret, idx, cfg)
            for k, v in stats.items():
                logs.setdefault(k, []).append(v)
    return {k: sum(v) / len(v) for k, v in logs.items()}


def _minibatch_step(policy, value_head, optimizer, params, ro, adv, ret, idx, cfg) -> dict:
    ids, mask = ro.ids[idx], ro.mask[idx]
    width = int(mask.nonzero()[:, 1].max()) + 1  # drop columns that are padding everywhere
    ids, mask = ids[:, :width], mask[:, :width]
    logits, h = forward_with_hidden(policy, ids)
    logp = token_logprobs(policy, ids, logits)
    loss_pg, info = policy_loss(logp, ro.logp[idx, :width], adv[idx, :width], mask, cfg.clip)
    entropy = masked_mean(token_entropy(logits), mask)
    loss = loss_pg - cfg.entropy_coef * entropy
    out = {"loss_policy": float(loss_pg.detach()), "entropy": float(entropy.detach()), **info}
    if cfg.algo == "grpo":
        kl = masked_mean(kl_k3(logp, ro.ref_logp[idx, :width]), mask)
        loss = loss + cfg.kl_coef * kl
        out["loss_kl"] = float(kl.detach())
    else:
        v, old_v, r = _values(value_head, h), ro.values[idx, :width], ret[idx, :width]
        v_clip = old_v + (v - old_v).clamp(-cfg.clip, cfg.clip)
        loss_v = 0.5 * masked_mean(torch.maximum((v - r) ** 2, (v_clip - r) ** 2), mask)
        loss = loss + cfg.vf_coef * loss_v
        out["loss_value"] = float(loss_v.detach())
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if cfg.grad_clip:
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
    optimizer.step()
    return out


# --------------------------------------------------------------------------- eval


class GoldEval:
    """A fixed batch of held-out prompts answered greedily; the judge's mean score (gold),
    the proxy reward of the same answers, and the win rate over the init model's answers."""

    def __init__(self, world: str | None, per_category: int, tok, init_model, reward, cfg):
        self.records = []
        if world and per_category > 0:
            from gptlab.align.common import heldout_records
            from gptlab.judge import Judge
            self.records = heldout_records(world, per_category, seed=1)
            self.judge = Judge.from_dir(world)
        self.tok, self.reward, self.cfg = tok, reward, cfg
        self.init_answers = self._answers(init_model) if self.records else []

    def _answers(self, model) -> list[str]:
        was = model.training
        model.eval()
        out = generate_answers(model, self.tok, self.records, max_new_tokens=self.cfg.max_new_tokens)
        model.train(was)
        forget_inference_tensors(model)
        return out

    def __call__(self, model) -> dict:
        if not self.records:
            return {}
        answers = self._answers(model)
        gold = [self.judge.score_record(r, a).score for r, a in zip(self.records, answers)]
        wr = win_rate(answers, self.init_answers, self.records, self.judge)
        proxy = self.reward.score(self.records, answers)
        return {"gold": sum(gold) / len(gold), "eval_proxy": sum(proxy) / len(proxy),
                "win_rate": wr["win_rate"]}


# --------------------------------------------------------------------------- run


def validate_config(cfg: RLConfig) -> None:
    if cfg.algo not in ALGOS:
        raise ValueError(f"--algo must be one of {', '.join(ALGOS)}, got {cfg.algo!r}")
    if not cfg.init:
        raise ValueError("--init is required (the chat model to improve)")
    if not cfg.prompts:
        raise ValueError("--prompts is required (a miniworld dir or a jsonl of prompts)")
    for name in ("steps", "batch_size", "max_new_tokens", "ppo_epochs", "minibatch_size"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(cfg, name)}")
    if cfg.algo == "grpo" and (cfg.group_size < 2 or cfg.batch_size % cfg.group_size):
        raise ValueError(f"--group-size must be >= 2 and divide --batch-size {cfg.batch_size} for "
                         f"grpo, got {cfg.group_size}")


def _world_of(cfg: RLConfig) -> str | None:
    if cfg.world:
        return cfg.world
    p = Path(cfg.prompts)
    return str(p) if p.is_dir() and (p / "kb.json").is_file() else None


def run_rl(cfg: RLConfig, reward=None) -> Path:
    """Train as configured; returns out/final. ``reward``: any object with
    ``.score(records, responses) -> list[float]`` instead of ``cfg.reward``."""
    from tqdm.auto import tqdm


    validate_config(cfg)
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    ckpt = load_chat_model(cfg.init, device=device)
    tok, policy = ckpt.tokenizer, ckpt.model
    if tok is None:
        raise ValueError(f"{cfg.init} has no tokenizer.json")
    records = load_prompt_records(cfg.prompts)  # first: a wrong path is the likeliest mistake
    world = _world_of(cfg)
    reward_name = cfg.reward if reward is None else type(reward).__name__
    reward = reward if reward is not None else load_reward(cfg.reward, world_dir=world, device=str(device))
    ref = copy.deepcopy(policy).eval().requires_grad_(False)
    if cfg.train_layers is not None:
        from gptlab.train.lora import freeze_below
        freeze_below(policy, cfg.train_layers)
    value_head = None
    if cfg.algo == "ppo":
        value_head = nn.Linear(policy.config.hidden_size, 1).to(device)
        nn.init.zeros_(value_head.weight), nn.init.zeros_(value_head.bias)
    modules = nn.ModuleDict({"policy": policy, **({"value": value_head} if value_head else {})})
    optimizer = build_optimizer(modules, lr=cfg.lr, weight_decay=cfg.weight_decay)
    params = [p for p in modules.parameters() if p.requires_grad]
    stream = PromptStream(len(records), cfg.seed)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    start = _maybe_resume(cfg, policy, value_head, optimizer, stream)
    meta = {"stage": "rl", "algo": cfg.algo, "parent": str(cfg.init),
            "parent_stage": ckpt.meta.get("stage"), "reward": str(cfg.reward),
            "config": {k: v for k, v in dataclasses.asdict(cfg).items()
                       if k not in ("progress", "resume", "tensorboard", "wandb")}}
    if start >= cfg.steps and (out / "final" / "config.json").is_file():
        return out / "final"
    gold = GoldEval(world, cfg.eval_per_category, tok, ref, reward, cfg)
    logger = MetricsLogger(out / "metrics.jsonl", resume_step=start or None,
                           tensorboard_dir=out / "tb" if cfg.tensorboard else None,
                           wandb_project=cfg.wandb, wandb_config=dataclasses.asdict(cfg))
    print(f"rl: {cfg.algo}, {len(records)} prompts, {cfg.batch_size} answers per step"
          + (f" ({cfg.batch_size // cfg.group_size} prompts x {cfg.group_size})" if cfg.algo == "grpo" else "")
          + f", {cfg.steps} steps, reward {reward_name}, "
            f"kl_coef {cfg.kl_coef}, lr {cfg.lr:g}", flush=True)
    bar = tqdm(total=cfg.steps, initial=start, desc=cfg.algo, disable=not cfg.progress,
               dynamic_ncols=True)
    path = None
    try:
        if start == 0 and gold.records:
            logger.log({"step": 0, **gold(policy)})
        with StopSignal() as stop:
            for step in range(start, cfg.steps):
                t0 = time.perf_counter()
                for g in optimizer.param_groups:
                    g["lr"] = g["base_lr"] * min(1.0, (step + 1) / max(cfg.warmup_steps, 1))
                rec = rl_step(policy, ref, value_head, optimizer, params, tok, records, stream,
                              reward, cfg, step, device)
                done = step + 1
                rec = {"step": done, **rec, "dt": time.perf_counter() - t0}
                if gold.records and (done == cfg.steps or (cfg.eval_every and done % cfg.eval_every == 0)):
                    rec.update(gold(policy))
                    bar.write(f"step {done}: gold {rec['gold']:.3f}, win rate {rec['win_rate']:.3f}, "
                              f"proxy {rec['eval_proxy']:.3f}, kl {rec['kl']:.3f}")
                logger.log(rec)
                bar.set_postfix({k: f"{rec[k]:.3g}" for k in ("reward", "kl", "entropy", "length")},
                                refresh=False)
                bar.update(1)
                stopping = stop.should_stop()
                if done == cfg.steps or stopping or (cfg.save_every and done % cfg.save_every == 0):
                    path = _save(cfg, policy, value_head, tok, optimizer, stream, done,
                                 done == cfg.steps, {**meta, "metrics": rec})
                if stopping and done < cfg.steps:
                    bar.close()
                    print(f"stopped at step {done}; checkpoint saved to {path}; rerun with --resume")
                    stop.raise_if_stopping()
        if start >= cfg.steps:
            path = _save(cfg, policy, value_head, tok, optimizer, stream, start, True, meta)
    finally:
        bar.close()
        logger.close()
    return path


def rl_step(policy, ref, value_head, optimizer, params, tok, records, stream: PromptStream,
            reward, cfg: RLConfig, step: int, device) -> dict:
    """One batch of rollouts and its update; returns the step's metrics."""
    if cfg.algo == "grpo":
        idx = [i for i in stream.take(cfg.batch_size // cfg.group_size) for _ in range(cfg.group_size)]
    else:
        idx = stream.take(cfg.batch_size)
    batch = [records[i] for i in idx]
    ro = rollout(policy, tok, batch, reward, cfg, seed=cfg.seed * 1_000_003 + step, device=device)
    score_tokens(policy, ref, value_head, ro)
    if cfg.algo == "ppo":
        adv, ret = ppo_advantages(ro, cfg)
    else:
        adv, ret = group_advantages(ro.reward, cfg.group_size)[:, None] * ro.mask, None
    stats = update(policy, value_head, optimizer, params, ro, adv, ret, cfg,
                   random.Random(f"rl-mb-{cfg.seed}-{step}"))
    lengths = ro.mask.sum(1)
    kl_tok = kl_per_token(ro.logp, ro.ref_logp)
    return {"reward": float(ro.score.mean()), "reward_total": float(ro.reward.mean()),
            "kl": float(kl_tok.sum() / lengths.sum()), "kl_seq": float(kl_tok.sum(1).mean()),
            "length": float(lengths.mean()), "unfinished": float(1 - ro.finished.mean()),
            "lr": optimizer.param_groups[0]["lr"], **stats}


# --------------------------------------------------------------------------- checkpoints


def _save(cfg, policy, value_head, tok, optimizer, stream, step: int, final: bool, meta: dict) -> Path:
    out = Path(cfg.out)
    state = {"step": step, "optimizer": optimizer.state_dict(), "rng": rng_state(),
             "position": stream.position, "config": dataclasses.asdict(cfg),
             "value_head": value_head.state_dict() if value_head is not None else None}
    path = save_checkpoint(checkpoint_path(out / "ckpt", step), policy, tok, train_state=state,
                           meta={**meta, "step": step})
    prune_checkpoints(out / "ckpt", cfg.keep_checkpoints)
    if not final:
        return path
    final_dir = save_checkpoint(out / "final", policy, tok, meta={**meta, "step": step})
    if value_head is not None:
        tmp = final_dir / "value_head.pt.tmp"
        torch.save(value_head.state_dict(), tmp)
        tmp.replace(final_dir / "value_head.pt")
    return final_dir


def _maybe_resume(cfg: RLConfig, policy, value_head, optimizer, stream: PromptStream) -> int:
    def restore_data(st: dict) -> None:   # the value head counts as data here: not in the weights
        if value_head is not None:
            value_head.load_state_dict(st["value_head"])
        stream.position = int(st["position"])

    return resume_run(cfg, policy, optimizer, ("algo", "init", "prompts", "seed", "batch_size", "group_size"),
                      restore_data=restore_data)
