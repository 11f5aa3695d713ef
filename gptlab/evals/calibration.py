"""The calibration suite: multiple-choice questions answered by the next-token
probabilities of the option letters; accuracy, confidence, Brier score, ECE and the
reliability diagram's bins."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from gptlab.chat import record_prompt
from gptlab.evals import metrics as M
from gptlab.evals import tasks as T


# ----------------------------------------------------------------------------- calibration

def letter_token_ids(tokenizer) -> list[list[int]]:
    """For each letter, the ids of its single-token spellings ("A", " A")."""
    out = []
    for letter in T.LETTERS:
        ids = sorted({t[0] for t in (tokenizer.encode(letter), tokenizer.encode(" " + letter))
                      if len(t) == 1})
        if not ids:
            raise ValueError(f"the tokenizer has no single token for the letter {letter!r}")
        out.append(ids)
    return out


@torch.no_grad()
def next_token_probs(model, prompts: list[list[int]], batch_size: int = 16) -> torch.Tensor:
    """(N, V) next-token distributions after each prompt (left-padded batches)."""
    device = next(model.parameters()).device
    out = []
    for b in range(0, len(prompts), batch_size):
        chunk = prompts[b:b + batch_size]
        L = max(len(p) for p in chunk)
        ids = torch.zeros(len(chunk), L, dtype=torch.long)
        mask = torch.zeros(len(chunk), L, dtype=torch.bool)
        for i, p in enumerate(chunk):
            ids[i, L - len(p):] = torch.tensor(p)
            mask[i, L - len(p):] = True
        pos = (mask.long().cumsum(1) - 1).clamp(min=0)
        logits = model(ids.to(device), attention_mask=mask.to(device), position_ids=pos.to(device),
                       logits_to_keep=1)[:, -1]
        out.append(logits.float().softmax(-1).cpu())
    return torch.cat(out)


def letter_probs(probs: torch.Tensor, letter_ids: list[list[int]]) -> tuple[list[list[float]], list[float]]:
    """Per item: the four letter probabilities renormalized, and their total raw mass."""
    raw = torch.stack([probs[:, ids].sum(-1) for ids in letter_ids], dim=1)  # (N, 4)
    mass = raw.sum(-1)
    norm = raw / mass.clamp_min(1e-30)[:, None]
    return norm.tolist(), mass.tolist()


def suite_calibration(model, tokenizer, kind, world_dir, *, limit, shots, seed, batch_size,
                      plot_path: Path | None) -> dict:
    kb = json.loads((Path(world_dir) / "kb.json").read_text(encoding="utf-8"))
    items = T.mc_items(kb, heldout=True, limit=limit, seed=seed)
    if not items:
        raise ValueError("no multiple-choice items: the kb has no held-out countries")
    examples = T.mc_items(kb, heldout=False, seed=seed + 1)[:shots]
    if kind == "chat":
        prompts = [record_prompt(tokenizer, {"messages": T.mc_chat_messages(it, examples)})
                   for it in items]
    else:
        prompts = [record_prompt(tokenizer, {"prompt": T.mc_base_prompt(it, examples)})
                   for it in items]
    max_len = int(model.config.max_position_embeddings)
    prompts = [p[-max_len:] for p in prompts]
    probs, mass = letter_probs(next_token_probs(model, prompts, batch_size),
                               letter_token_ids(tokenizer))
    answers = [it["answer"] for it in items]
    cal = M.calibration_metrics(probs, answers)
    cal["mc_letter_mass"] = sum(mass) / len(mass)
    conf = [max(p) for p in probs]
    correct = [max(range(4), key=p.__getitem__) == a for p, a in zip(probs, answers)]
    bins = [vars(b) for b in M.reliability_bins(conf, correct)]
    res = {"metrics": cal, "counts": {k: len(items) for k in cal}, "bins": bins,
           "shots": len(examples), "items": len(items)}
    if plot_path is not None:
        from gptlab.evals.plots import reliability_plot
        reliability_plot(bins, cal["ece"], plot_path, title=f"{len(items)} kb questions")
        res["plot"] = plot_path.name
    return res
