"""Simulated feedback: the model answers, the gold judge ranks, the store keeps both.

``simulate_feedback`` samples K answers per prompt from a chat model (batched through the
engine, temperature 1 by default) and stores them with the gold judge's ranking, the way
InstructGPT's labelers ranked K samples per prompt (Ouyang et al. 2022) and AlpacaFarm's
simulated annotators stand in for people (Dubois et al. 2023).

Label noise (``noise`` = p) is the judge's (gptlab/judge/, ``Judge.rank``): each
of the C(K, 2) pairwise comparisons flips its strict preference with probability p (ties
stay ties), and the ranking orders responses by their number of pairwise wins (a Copeland
count), ties broken by the noiseless score, then the shorter response. Pairs with equal
judge scores are stored as ties of the ranking (a rater's "about the same"): the noise
never breaks them, and they are no preference, so `pairs()` and the reward model skip them. So p is the flip
rate of each underlying vote, not of the pairs the final ranking implies: aggregating
K - 1 votes per response corrects some flips (the measured rate is in docs/ALIGNMENT.md).

Resumable: prompts of the same source that already have a ranking are skipped, and each
prompt's prompt + responses + ranking is written in one transaction.
"""
from __future__ import annotations

import random
import time
from collections import Counter
from pathlib import Path

import torch

from gptlab.align.common import generate_answers, load_prompt_records
from gptlab.chat import load_chat_model
from gptlab.judge import Judge
from gptlab.train.dist import resolve_dtype


def pick_prompts(records: list[dict], n: int | None, seed: int) -> list[dict]:
    """A seeded shuffle, then the first n: the same prompts on every (resumed) run."""
    order = list(range(len(records)))
    random.Random(f"feedback-{seed}").shuffle(order)
    return [records[i] for i in order[:n or len(order)]]


def simulate_feedback(model: str | Path, prompts: str | Path, db: str, *, k: int = 4,
                      n: int | None = None, noise: float = 0.25, temperature: float = 1.0,
                      max_new_tokens: int = 96,
                      batch_size: int = 64, seed: int = 0, world: str | Path | None = None,
                      clean_db: str | None = None, progress: bool = True,
                      device: str = "cpu", dtype: str = "float32") -> dict:
    """Sample K answers for up to n prompts, store the judge's ranking (with `noise`) in
    `db`, and the noiseless ranking of the same answers in `clean_db` if given."""
    from tqdm.auto import tqdm

    from gptlab.feedback import FeedbackStore, prompt_key  # deferred: needs sqlalchemy (not on GPU boxes)
    if k < 2:
        raise ValueError(f"--k must be >= 2 (a ranking needs two answers), got {k}")
    if not 0 <= noise <= 0.5:
        raise ValueError(f"--noise must be in [0, 0.5], got {noise}")
    source = Path(prompts).as_posix()
    world = Path(world) if world else Path(prompts)
    if not (world / "kb.json").is_file():
        raise FileNotFoundError(f"the judge needs a miniworld kb.json: pass --world "
                                f"(looked in {world})")
    judge = Judge.from_dir(world)
    chosen = pick_prompts(load_prompt_records(prompts, train_only=True), n, seed)
    stores = [FeedbackStore(db)] + ([FeedbackStore(clean_db)] if clean_db else [])
    done = stores[0].ranked_prompt_keys(source)
    todo = [r for r in chosen if prompt_key(r["messages"]) not in done]
    ckpt = load_chat_model(model, device=device, dtype=resolve_dtype(dtype, torch.device(device)))
    sampling = {"temperature": temperature, "max_new_tokens": max_new_tokens, "seed": seed, "k": k}
    per_chunk = max(1, batch_size // k)
    t0 = time.time()
    with tqdm(total=len(todo), desc="feedback", disable=not progress, dynamic_ncols=True) as bar:
        for c in range(0, len(todo), per_chunk):
            chunk = todo[c:c + per_chunk]
            rows = [r for r in chunk for _ in range(k)]
            chunk_seed = seed * 1_000_003 + c   # fresh samples per chunk, same on a rerun
            answers = generate_answers(ckpt.model, ckpt.tokenizer, rows, max_new_tokens,
                                       temperature=temperature, seed=chunk_seed,
                                       batch_size=batch_size)
            for i, rec in enumerate(chunk):
                _store_one(stores, judge, rec, answers[i * k:(i + 1) * k], noise, seed, source,
                           str(model), sampling)
            bar.update(len(chunk))
    counts = stores[0].counts()
    return {"prompts": len(chosen), "skipped": len(chosen) - len(todo), "new": len(todo),
            "pairs_new": len(todo) * k * (k - 1) // 2, "seconds": round(time.time() - t0, 1),
            "store": counts, "pairs": len(stores[0].pairs())}


def _store_one(stores, judge, rec, answers, noise, seed, source, model, sampling) -> None:
    from gptlab.feedback import prompt_key  # deferred: needs sqlalchemy (not on GPU boxes)
    msgs, meta = rec["messages"], rec.get("meta") or None
    rng = random.Random(f"{seed}-{prompt_key(msgs)}")   # the same labels on a rerun
    order = judge.rank(msgs, answers, meta, noise=noise, rng=rng)
    # the judge's noise never breaks a tie, so the rater calls equal scores a tie
    scores = [judge.score(msgs, a, meta).score for a in answers]
    ties = [(i, j) for i in range(len(answers)) for j in range(i + 1, len(answers))
            if abs(scores[i] - scores[j]) < 1e-9]
    stores[0].add_ranked(msgs, answers, order, source=source, meta=meta, model=model,
                         sampling=sampling, rater=f"judge(noise={noise})", kind="judge",
                         ties=ties)
    if len(stores) > 1:
        clean = judge.rank(msgs, answers, meta, noise=0.0)
        stores[1].add_ranked(msgs, answers, clean, source=source, meta=meta, model=model,
                             sampling=sampling, rater="judge(noise=0)", kind="judge", ties=ties)


def feedback_stats(db: str) -> dict:
    """Row counts, pairs by rater kind, prompt sources."""
    from gptlab.feedback import FeedbackStore  # deferred: needs sqlalchemy (not on GPU boxes)
    store = FeedbackStore(db)
    pairs = store.pairs()
    return {"counts": store.counts(), "pairs": len(pairs),
            "pairs_by_kind": dict(Counter(p["kind"] for p in pairs)), "sources": store.sources()}
