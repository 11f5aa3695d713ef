"""Training and measuring the moderator: `ModeratorConfig`, `train_moderator` (n-gram
classifier or a probe on a frozen LM's hidden states), held-out metrics, their printing."""
from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from gptlab.fileio import atomic_dir, read_jsonl
from gptlab.safety.attacks import ATTACKS, build_cases
from gptlab.safety.examples import (
    Example, augmented_examples, load_examples, record_examples, user_turns)
from gptlab.safety.moderator import (
    CATEGORIES, HEADS, HashedClassifier, HiddenEncoder, Moderator, batch_features, feature_ids,
    resolve_encoder)
from gptlab.settings import cli_field as _f


# ----------------------------------------------------------------------------- training

@dataclass
class ModeratorConfig:
    data: str = _f("runs/base/world", "training data: a miniworld dir, a .jsonl/.csv/.parquet file or dir of moderation data, or hf:org/name[:split]; several separated by commas")
    out: str = _f("runs/moderator", "output directory (moderator.json, model.safetensors)")
    eval_world: str | None = _f(None, "miniworld dir whose eval/ requests measure the classifier (default: --data when it is one)")
    augment: bool = _f(True, "add the red team's TRAIN attack phrasings applied to the world's train-split harmful and benign-edgy requests")
    dim_bits: int = _f(18, "hash table size 2^bits")
    hidden: int = _f(0, "hidden units of a one-layer MLP (0 = linear model)")
    epochs: int = _f(8, "passes over the training data")
    batch_size: int = _f(64, "examples per step")
    lr: float = _f(0.2, "Adagrad learning rate")
    threshold: float = _f(0.5, "flag when a score reaches this")
    encoder: str | None = _f(None, "also read a frozen LM's hidden states (a checkpoint dir, or smollm2): better on unseen wordings, slower")
    encoder_layers: int = _f(10, "hidden states after this many blocks of --encoder (0 = all)")
    encoder_max_tokens: int = _f(64, "tokens of each text the encoder reads")
    probe_l2: float = _f(1e-3, "L2 penalty of the hidden-state probe")
    max_negatives: int | None = _f(None, "train on at most this many negatives besides benign-edgy and attack-wrapped ones (a seeded sample; default: all, 2000 with --encoder)")
    seed: int = _f(0, "random seed")
    progress: bool = _f(True, "show a progress bar")


def _targets(examples: list[Example]) -> tuple[torch.Tensor, torch.Tensor]:
    y = torch.zeros(len(examples), len(HEADS))
    mask = torch.zeros(len(examples), len(HEADS))
    for i, e in enumerate(examples):
        for j, c in enumerate(CATEGORIES):
            if c in e.labels:
                y[i, j], mask[i, j] = e.labels[c], 1
        y[i, -1], mask[i, -1] = e.flagged, 1
    return y, mask


def fit(examples: list[Example], cfg: ModeratorConfig, encoder: HiddenEncoder | None = None
        ) -> HashedClassifier:
    """Weighted BCE per head (positives up-weighted to balance them), Adagrad."""
    from tqdm.auto import trange
    torch.manual_seed(cfg.seed)
    dim = 2 ** cfg.dim_bits
    y, mask = _targets(examples)
    pos = (y * mask).sum(0)
    neg = ((1 - y) * mask).sum(0)
    pos_weight = (neg / pos.clamp(min=1)).clamp(1, 50)
    model = HashedClassifier(dim, cfg.hidden, probe_dim=encoder.dim if encoder else 0)
    if encoder is not None:
        return fit_probe(model, encoder([e.text for e in examples], progress=cfg.progress),
                         y, mask, pos_weight, cfg.probe_l2)
    feats = [feature_ids(e.text, dim) for e in examples]
    opt = torch.optim.Adagrad(model.parameters(), lr=cfg.lr)
    rng = random.Random(cfg.seed)
    order = list(range(len(examples)))
    for _ in trange(cfg.epochs, desc="moderator", disable=not cfg.progress, leave=False):
        rng.shuffle(order)
        for b in range(0, len(order), cfg.batch_size):
            idx = order[b:b + cfg.batch_size]
            logits = model(*batch_features([feats[i] for i in idx]))
            loss = nn.functional.binary_cross_entropy_with_logits(
                logits, y[idx], pos_weight=pos_weight, reduction="none")
            loss = (loss * mask[idx]).sum() / mask[idx].sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def fit_probe(model: HashedClassifier, hs: torch.Tensor, y, mask, pos_weight, l2: float
              ) -> HashedClassifier:
    """Full-batch L-BFGS on the L2-regularized, positive-weighted BCE of a linear probe."""
    model.mu.copy_(hs.mean(0))
    model.sd.copy_(hs.std(0) + 1e-5)
    x = (hs - model.mu) / model.sd
    w, b = model.probe.weight, model.bias
    opt = torch.optim.LBFGS([w, b], max_iter=300, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = nn.functional.binary_cross_entropy_with_logits(
            x @ w.T + b, y, pos_weight=pos_weight, reduction="none")
        loss = (loss * mask).sum() / mask.sum() + l2 * (w ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return model.eval()


def cap_negatives(examples: list[Example], cap: int | None, seed: int) -> list[Example]:
    """Keep every positive and every negative that is hard (benign-edgy, attack-wrapped, or
    from a non-world source); sample at most `cap` of the other negatives."""
    if cap is None:
        return examples
    easy = [i for i, e in enumerate(examples) if not e.flagged and e.hard is False]
    if len(easy) <= cap:
        return examples
    drop = set(easy) - set(random.Random(seed).sample(easy, cap))
    return [e for i, e in enumerate(examples) if i not in drop]


def prf(pred: list[bool], gold: list[bool]) -> dict:
    tp = sum(p and g for p, g in zip(pred, gold))
    fp = sum(p and not g for p, g in zip(pred, gold))
    fn = sum(g and not p for p, g in zip(pred, gold))
    prec = tp / (tp + fp) if tp + fp else 0.0
    rec = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
    return {"precision": prec, "recall": rec, "f1": f1, "n": len(gold), "positives": sum(gold)}


def evaluate_world(mod: Moderator, world_dir) -> dict:
    """Held-out measures on the world's eval/ set: plain requests (harmful vs every other eval
    request), the benign-edgy false-positive rate, category accuracy, and the same requests
    wrapped in the red team's EVAL attack phrasings."""
    examples = []
    for path in sorted((Path(world_dir) / "eval").glob("*.jsonl")):
        for rec in read_jsonl(path):
            if rec.get("messages"):
                examples += [(e, (rec.get("meta") or {}).get("kind")) for e in record_examples(rec)
                             if e.text in user_turns(rec)]
    res = mod.moderate([e.text for e, _ in examples])
    pred = [r["flagged"] for r in res]
    out = {"plain": prf(pred, [bool(e.flagged) for e, _ in examples])}
    edgy = [p for p, (_, k) in zip(pred, examples) if k == "benign_edgy"]
    out["plain"]["benign_edgy_flag_rate"] = sum(edgy) / max(1, len(edgy))
    cats = [(max(r["category_scores"], key=r["category_scores"].get),
             next(c for c, v in e.labels.items() if v)) for r, (e, _) in zip(res, examples) if e.flagged]
    out["plain"]["category_accuracy"] = sum(a == b for a, b in cats) / max(1, len(cats))
    cases = build_cases(world_dir, ATTACKS, None, seed=0)
    texts = [[m["content"] for m in c["messages"] if m["role"] == "user"][-1] for c in cases]
    flags = [r["flagged"] for r in mod.moderate(texts)]
    out["attacked"] = prf(flags, [c["type"] == "harmful" for c in cases])
    out["by_attack"] = {}
    for a in ATTACKS:
        sel = [(f, c["type"]) for f, c in zip(flags, cases) if c["meta"]["attack"] == a]
        out["by_attack"][a] = {
            "recall": sum(f for f, t in sel if t == "harmful") / max(1, sum(t == "harmful" for _, t in sel)),
            "benign_flag_rate": sum(f for f, t in sel if t == "benign") / max(1, sum(t == "benign" for _, t in sel))}
    return out


def train_moderator(cfg: ModeratorConfig) -> Path:
    """Train on cfg.data, measure on the held-out world requests, write cfg.out; returns it."""
    from safetensors.torch import save_file

    sources = [s.strip() for s in cfg.data.split(",") if s.strip()]
    if not sources:
        raise ValueError("--data is empty")
    examples = [e for s in sources for e in load_examples(s)]
    worlds = [s for s in sources if Path(s, "sft").is_dir()]
    if cfg.augment:
        for w in worlds:
            examples += augmented_examples(w, random.Random(cfg.seed))
    examples = cap_negatives(examples, cfg.max_negatives if cfg.max_negatives is not None
                             else (2000 if cfg.encoder else None), cfg.seed)
    encoder = None
    if cfg.encoder:
        encoder = HiddenEncoder(cfg.encoder, cfg.encoder_layers, cfg.encoder_max_tokens)
    model = fit(examples, cfg, encoder)
    config = {"format": "gptlab-moderator", "version": 1,
              "kind": "hidden-probe" if encoder else "hashed-ngram",
              "categories": CATEGORIES, "heads": HEADS, "dim": 2 ** cfg.dim_bits,
              "hidden": cfg.hidden, "threshold": cfg.threshold, "train": asdict(cfg),
              "train_examples": len(examples),
              "train_positives": sum(e.flagged for e in examples)}
    if encoder:
        config["encoder"] = {"path": str(resolve_encoder(cfg.encoder).absolute()), "spec": cfg.encoder,
                             "layers": encoder.layers, "max_tokens": cfg.encoder_max_tokens}
    eval_world = cfg.eval_world or (worlds[0] if worlds else None)
    if eval_world:
        config["eval"] = evaluate_world(Moderator(model, config, encoder), eval_world)
        config["eval_world"] = str(eval_world)
    with atomic_dir(cfg.out, markers=("moderator.json",)) as tmp:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()},
                  str(tmp / "model.safetensors"))
        (tmp / "moderator.json").write_text(json.dumps(config, indent=1) + "\n", encoding="utf-8")
    return Path(cfg.out)


# ----------------------------------------------------------------------------- command line

def print_moderation(results: list[dict], texts: list[str], as_json: bool = False) -> None:
    """What `gptlab moderate TEXT` prints: one line per text, or OpenAI-shaped JSON."""
    if as_json:
        print(json.dumps({"results": results}, indent=1, ensure_ascii=False))
        return
    for text, r in zip(texts, results):
        top = max(r["category_scores"], key=r["category_scores"].get)
        cats = ", ".join(c for c, v in r["categories"].items() if v) or "-"
        print(f"{'FLAGGED' if r['flagged'] else 'ok':<7} {cats:<24} "
              f"(top {top} {r['category_scores'][top]:.3f})  {text[:80]!r}")


def format_eval(ev: dict) -> str:
    p, a = ev["plain"], ev["attacked"]
    lines = [f"held-out requests: F1 {p['f1']:.3f} (precision {p['precision']:.3f}, recall "
             f"{p['recall']:.3f}, n {p['n']}, {p['positives']} harmful); benign-edgy flagged "
             f"{p['benign_edgy_flag_rate']:.1%}; category accuracy {p['category_accuracy']:.1%}",
             f"wrapped in red-team attacks: F1 {a['f1']:.3f} (precision {a['precision']:.3f}, "
             f"recall {a['recall']:.3f}, n {a['n']})"]
    for name, r in ev["by_attack"].items():
        lines.append(f"  {name:<17} recall {r['recall']:6.1%}  benign flagged {r['benign_flag_rate']:6.1%}")
    return "\n".join(lines)
