"""Pieces every alignment stage shares (reward model, best-of-N, RL, DPO).

- ``load_prompt_records``: the prompts RL and simulated feedback answer;
- ``heldout_records``: a balanced sample of miniworld's held-out chat records;
- ``generate_answers``: one batched reply per record (the KV-cache engine);
- ``win_rate``: gold-judge win rate of one set of answers over another (ties count 1/2, as
  AlpacaFarm and the DESIGN's metric define it);
- ``render_response``, ``pad_batch``, ``sequence_logprobs``: token-level helpers for
  losses over responses (DPO, PPO, the reward model).
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Sequence

import torch

from gptlab.chat import render_chat
from gptlab.evals.runner import ModelResponder
from gptlab.evals.tasks import CHAT_KINDS
from gptlab.fileio import read_jsonl

TIE_EPS = 1e-9


# --------------------------------------------------------------------------- records

def chat_categories() -> list[str]:
    return list(CHAT_KINDS)


def prompt_messages(record_or_messages) -> list[dict]:
    """The conversation a reply continues: a record's ``messages`` (or a bare message
    list) without a trailing assistant turn (a reference answer)."""
    messages = record_or_messages.get("messages") if isinstance(record_or_messages, dict) \
        else record_or_messages
    if not messages:
        raise ValueError(f"expected chat messages or a record with 'messages', got "
                         f"{str(record_or_messages)[:80]!r}")
    messages = list(messages)
    if messages[-1].get("role") == "assistant":
        messages = messages[:-1]
    return messages


def load_prompt_records(source: str | Path, *, train_only: bool = False) -> list[dict]:
    """The {"messages", "meta"} records to answer (RL rollouts, simulated feedback): a
    miniworld dir's prompts/*.jsonl (with ``train_only``, its "train" split only), any
    other dir's *.jsonl, or one jsonl file. Each record needs a non-empty messages list
    that, once a trailing reference answer is cut (``prompt_messages``), ends with a user
    turn; a bad record is an error naming its file and line."""
    path = Path(source)
    if path.is_dir():
        folder = path / "prompts" if (path / "prompts").is_dir() else path
        files = sorted(folder.glob("*.jsonl"))
        if not files:
            raise FileNotFoundError(f"no prompts/*.jsonl or *.jsonl under {path} (is it a miniworld dir?)")
    elif path.is_file():
        files = [path]
    else:
        raise FileNotFoundError(f"prompt source {path}: no such file or directory")
    out = []
    for f in files:
        for n, rec in enumerate(read_jsonl(f), 1):
            if not isinstance(rec, dict) or not isinstance(rec.get("messages"), list) \
                    or not rec["messages"]:
                raise ValueError(f"{f}:{n}: a prompt record needs a non-empty 'messages' list")
            meta = rec.get("meta") or {}
            if train_only and path.is_dir() and meta.get("split", "train") != "train":
                continue
            messages = prompt_messages(rec)
            if messages[-1].get("role") != "user":
                raise ValueError(f"{f}:{n}: the prompt must end with a user message")
            out.append({"messages": messages, "meta": meta})
    return out


def heldout_records(world_dir, n_per_category: int = 20, seed: int = 0,
                    categories: Sequence[str] | None = None) -> list[dict]:
    """Up to ``n_per_category`` records of each chat category of WORLD/eval (a seeded
    sample, the same for every caller with the same seed), categories in a fixed order."""
    eval_dir = Path(world_dir) / "eval"
    if not eval_dir.is_dir():
        raise FileNotFoundError(f"{eval_dir} does not exist (is {world_dir} a miniworld dir?)")
    cats = list(categories) if categories else chat_categories()
    out = []
    for cat in cats:
        path = eval_dir / f"{cat}.jsonl"
        if not path.is_file():
            if categories:
                raise FileNotFoundError(f"no held-out file {path}")
            continue
        recs = [r for r in read_jsonl(path) if r.get("messages")]
        rng = random.Random(f"heldout-{seed}-{cat}")
        out += rng.sample(recs, min(n_per_category, len(recs)))
    return out


# --------------------------------------------------------------------------- generation

def generate_answers(model, tok, records: Sequence, max_new_tokens: int = 96,
                     temperature: float = 0.0, seed: int = 0, batch_size: int = 32,
                     progress: bool = False, desc: str = "generate") -> list[str]:
    """One reply per record (or message list), batched through the engine; prompts are
    rendered exactly as SFT tokenized them. Sampling is seeded per batch."""
    recs = [{"messages": prompt_messages(r)} for r in records]
    if not recs:
        return []
    responder = ModelResponder(model, tok, batch_size=batch_size, progress=progress)
    return responder(recs, max_new_tokens=max_new_tokens, temperature=temperature,
                     seed=None if temperature == 0 else seed, desc=desc)


# --------------------------------------------------------------------------- judging

def win_rate(policy_answers: Sequence[str], ref_answers: Sequence[str],
             records: Sequence[dict], judge) -> dict:
    """Gold-judge win rate of policy over reference answers, record by record.
    A tie (equal judge scores) counts one half; ``win_rate_no_ties`` leaves ties out
    (None when every record is a tie)."""
    n = len(records)
    if not (len(policy_answers) == len(ref_answers) == n):
        raise ValueError(f"win_rate needs one policy and one reference answer per record: "
                         f"{len(policy_answers)}, {len(ref_answers)}, {n} records")
    if n == 0:
        raise ValueError("win_rate needs at least one record")
    wins = ties = 0
    sp_sum = sr_sum = 0.0
    for rec, a, b in zip(records, policy_answers, ref_answers):
        sp, sr = judge.score_record(rec, a).score, judge.score_record(rec, b).score
        sp_sum, sr_sum = sp_sum + sp, sr_sum + sr
        if abs(sp - sr) <= TIE_EPS:
            ties += 1
        elif sp > sr:
            wins += 1
    decided = n - ties
    return {"win_rate": (wins + 0.5 * ties) / n, "wins": wins, "ties": ties,
            "losses": n - wins - ties, "n": n, "mean_policy": sp_sum / n, "mean_ref": sr_sum / n,
            "win_rate_no_ties": wins / decided if decided else None}


def win_rate_tiebroken(policy, ref, records: Sequence[dict], judge, *, samples: int = 4,
                       temperature: float = 0.8, max_new_tokens: int = 64, seed: int = 0,
                       batch_size: int = 32) -> dict:
    """Greedy win rate of ``policy`` over ``ref`` (each a loaded chat model with .model and
    .tokenizer), then every greedy tie decided by sampling: both models answer a tied
    prompt ``samples`` times (seeded, the same seeds for both), and the higher mean judge
    score wins. Two models whose greedy answers are identical on most prompts would
    otherwise measure almost nothing; sampling shows which one puts more of its mass on
    better answers. Returns the tie-broken counts, with the greedy ones under "greedy"."""
    def answers(ck, recs, temp, s):
        return generate_answers(ck.model, ck.tokenizer, recs, max_new_tokens=max_new_tokens,
                                temperature=temp, seed=s, batch_size=batch_size)

    greedy_p, greedy_r = answers(policy, records, 0.0, 0), answers(ref, records, 0.0, 0)
    greedy = win_rate(greedy_p, greedy_r, records, judge)
    score = lambda rec, text: judge.score_record(rec, text).score  # noqa: E731
    tied = [i for i, rec in enumerate(records)
            if abs(score(rec, greedy_p[i]) - score(rec, greedy_r[i])) <= TIE_EPS]
    diff = {i: 0.0 for i in tied}
    if tied and samples > 0:
        recs = [records[i] for i in tied]
        for s in range(samples):
            sp = answers(policy, recs, temperature, seed + 1 + s)
            sr = answers(ref, recs, temperature, seed + 1 + s)
            for i, rec, a, b in zip(tied, recs, sp, sr):
                diff[i] += score(rec, a) - score(rec, b)
    return merge_tiebreak(greedy, list(diff.values()), samples, temperature)


def merge_tiebreak(greedy: dict, diffs: Sequence[float], samples: int, temperature: float) -> dict:
    """Counts after the tie-break: greedy wins and losses stay; each greedy tie becomes a
    win or a loss by the sign of its summed sampled score difference (policy - reference)."""
    if len(diffs) != greedy["ties"]:
        raise ValueError(f"one score difference per greedy tie: {len(diffs)} for {greedy['ties']}")
    wins = greedy["wins"] + sum(d > TIE_EPS for d in diffs)
    losses = greedy["losses"] + sum(d < -TIE_EPS for d in diffs)
    n = greedy["n"]
    ties = n - wins - losses
    return {"win_rate": (wins + 0.5 * ties) / n, "wins": wins, "ties": ties, "losses": losses,
            "n": n, "win_rate_no_ties": wins / (wins + losses) if wins + losses else None,
            "tiebreak": {"samples": samples, "temperature": temperature,
                         "greedy_ties_decided": sum(abs(d) > TIE_EPS for d in diffs)},
            "greedy": greedy}


# --------------------------------------------------------------------------- tokens

def render_response(tok, messages: Sequence[dict], response: str,
                    max_len: int | None = None) -> tuple[list[int], list[int]]:
    """Ids of prompt + reply rendered as a chat, and a mask that is 1 exactly on the reply's
    tokens and its end-of-turn token (earlier assistant turns are context, mask 0).
    Over ``max_len`` the oldest tokens are cut (the reply is kept whole when it fits)."""
    prompt = prompt_messages(messages)
    earlier = [i for i, m in enumerate(prompt) if m["role"] == "assistant"]
    ids, mask = render_chat(tok, prompt + [{"role": "assistant", "content": response}],
                            masked_turns=earlier)
    last = max(i for i, m in enumerate(mask) if m) + 1   # drop the template's trailing "\n"
    ids, mask = ids[:last], mask[:last]
    if max_len is not None and len(ids) > max_len:
        ids, mask = ids[-max_len:], mask[-max_len:]
    return ids, mask


def pad_batch(rows: Sequence[Sequence[int]], pad_id: int,
              masks: Sequence[Sequence[int]] | None = None,
              device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token rows into (ids, mask) int64 tensors (B, T). ``mask`` is the given
    per-token mask (or 1 on every real token), 0 on padding. With causal attention the
    padding after a row never changes what its real tokens see."""
    if not rows:
        raise ValueError("pad_batch needs at least one row")
    T = max(len(r) for r in rows)
    ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), T), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.as_tensor(list(r), dtype=torch.long)
        m = masks[i] if masks is not None else [1] * len(r)
        if len(m) != len(r):
            raise ValueError(f"row {i}: {len(r)} ids but {len(m)} mask values")
        mask[i, :len(r)] = torch.as_tensor(list(m), dtype=torch.long)
    return (ids, mask) if device is None else (ids.to(device), mask.to(device))


def sequence_logprobs(model, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sum over each row of log p(token_t | tokens_<t) for the tokens where mask is 1
    (the first token has no prediction and is never counted). ids, mask: (B, T) -> (B,).
    Gradients flow when called outside ``torch.no_grad``."""
    logits = model(ids[:, :-1])                       # (B, T-1, V) float32
    target = ids[:, 1:]
    picked = logits.gather(-1, target.unsqueeze(-1)).squeeze(-1)
    logp = picked - torch.logsumexp(logits, dim=-1)   # no (B, T, V) log-softmax copy
    return (logp * mask[:, 1:].to(logp.dtype)).sum(dim=1)
