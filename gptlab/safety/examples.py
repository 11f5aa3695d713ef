"""The moderator's training examples: a miniworld's user turns (harmful requests positive,
with their category), the red team's training phrasings of them, and rows of common
moderation formats (OpenAI's moderation eval, generic jsonl / csv / parquet, hf:)."""
from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from gptlab.fileio import read_jsonl
from gptlab.safety.attacks import ATTACKS, PHRASINGS, attack_turns, base_request
from gptlab.safety.moderator import (
    CATEGORIES, CATEGORY_ALIASES, FALSE_LABELS, TEXT_KEYS, TRUE_LABELS, WORLD_CATEGORY)


# ----------------------------------------------------------------------------- data

@dataclass
class Example:
    text: str
    labels: dict        # category -> 0/1 for the categories this source labels
    flagged: int        # 0/1
    hard: bool | None = None   # world data: False for easy negatives (facts, math, answers)


def user_turns(record: dict) -> list[str]:
    return [m.get("content") or "" for m in record.get("messages", []) if m.get("role") == "user"]


def world_examples(world_dir, splits=("sft", "prompts")) -> list[Example]:
    """User turns of a miniworld: the last one of a harmful record is positive, everything
    else negative (assistant turns too, so output moderation does not flag refusals)."""
    seen: dict[str, Example] = {}
    for split in splits:
        for path in sorted((Path(world_dir) / split).glob("*.jsonl")):
            for rec in read_jsonl(path):
                for ex in record_examples(rec):
                    seen.setdefault(ex.text, ex)
    return list(seen.values())


def record_examples(rec: dict) -> list[Example]:
    meta = rec.get("meta") or {}
    users = user_turns(rec)
    out = []
    hard = meta.get("kind") in ("harmful", "benign_edgy")
    for i, text in enumerate(users):
        harmful = bool(meta.get("harmful")) and i == len(users) - 1
        cat = WORLD_CATEGORY.get(meta.get("category")) if harmful else None
        out.append(Example(text, {c: int(c == cat) for c in CATEGORIES}, int(harmful), hard))
    for m in rec.get("messages", []):
        if m.get("role") == "assistant":
            out.append(Example(m.get("content") or "", {c: 0 for c in CATEGORIES}, 0, hard))
    return out


def augmented_examples(world_dir, rng: random.Random) -> list[Example]:
    """The redteam TRAIN phrasings of every attack on the train split's harmful and
    benign_edgy requests (one example per request, attack and phrasing)."""
    out = []
    for fname in ("harmful.jsonl", "benign_edgy.jsonl"):
        path = Path(world_dir) / "sft" / fname
        if not path.exists():
            continue
        seeds = {}
        for rec in read_jsonl(path):
            if (rec.get("meta") or {}).get("split") == "train":
                seeds.setdefault(base_request(rec), rec["meta"])
        for request, meta in seeds.items():
            harmful = bool(meta.get("harmful"))
            cat = WORLD_CATEGORY.get(meta.get("category")) if harmful else None
            for attack in ATTACKS[1:]:
                for k in range(len(PHRASINGS[attack]["train"])):
                    turns = attack_turns(attack, request, _Fixed(rng, k), "train")
                    text = "\n".join(t["content"] for t in turns if t["role"] == "user")
                    out.append(Example(text, {c: int(c == cat) for c in CATEGORIES}, int(harmful)))
    return out


class _Fixed:
    """A random.Random stand-in whose choice() picks item k (to enumerate phrasings)."""

    def __init__(self, rng: random.Random, k: int):
        self.rng, self.k = rng, k

    def choice(self, seq):
        return seq[self.k % len(seq)]

    def randint(self, a, b):
        return self.rng.randint(a, b)


def _label_flag(value) -> tuple[int | None, str | None]:
    """(flagged, category) from a "label" value: 0/1, bool, safe/unsafe, or a category name."""
    if isinstance(value, bool) or isinstance(value, (int, float)):
        return int(bool(value)), None
    s = str(value).strip().lower()
    if s in TRUE_LABELS:
        return 1, None
    if s in FALSE_LABELS:
        return 0, None
    if s in CATEGORY_ALIASES:
        cat = CATEGORY_ALIASES[s]
        return (1 if cat else 0), cat
    raise ValueError(f"unknown label {value!r}")


def row_example(row: dict, where: str) -> Example | None:
    """One moderation-data row in any supported format -> Example (None: no text)."""
    text = next((row[k] for k in TEXT_KEYS if isinstance(row.get(k), str)), None)
    if text is None:
        raise ValueError(f"{where}: no text field (one of {', '.join(TEXT_KEYS)})")
    if not text.strip():
        return None
    openai_keys = [k for k in ("S", "H", "V", "HR", "SH", "S3", "H2", "V2") if k in row]
    cats: dict[str, int] = {}
    flagged = None
    if openai_keys:
        for k in openai_keys:
            cat = CATEGORY_ALIASES[k.lower()]
            if cat:
                cats[cat] = max(cats.get(cat, 0), int(bool(row[k])))
        flagged = int(any(cats.values()))
        cats = {c: cats.get(c, 0) for c in CATEGORIES}   # the eval set labels all of them
    elif "categories" in row and row["categories"] is not None:
        raw = row["categories"]
        raw = json.loads(raw) if isinstance(raw, str) else raw
        for k, v in dict(raw).items():
            cat = CATEGORY_ALIASES.get(str(k).lower())
            if cat:
                cats[cat] = max(cats.get(cat, 0), int(bool(v)))
        flagged = int(any(cats.values()))
    elif "labels" in row and row["labels"] is not None:
        raw = row["labels"]
        raw = json.loads(raw) if isinstance(raw, str) and raw.startswith("[") else raw
        names = [raw] if isinstance(raw, str) else list(raw)
        mapped = [CATEGORY_ALIASES.get(str(n).lower(), "?") for n in names]
        if "?" in mapped:
            raise ValueError(f"{where}: unknown label in {names}; known: {sorted(CATEGORY_ALIASES)}")
        cats = {c: int(c in mapped) for c in CATEGORIES}
        flagged = int(any(mapped))
    elif "label" in row:
        try:
            flagged, cat = _label_flag(row["label"])
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
        if cat:
            cats = {cat: 1}
        elif flagged == 0:
            cats = {c: 0 for c in CATEGORIES}
    else:
        raise ValueError(f"{where}: no labels: expected OpenAI moderation keys (S, H, V, ...), "
                         "'categories', 'labels' or 'label'")
    return Example(text, cats, int(flagged))


def _table_rows(path: Path):
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        lines = path.read_text(encoding="utf-8").splitlines()
        if suffix == ".json" and lines and lines[0].lstrip().startswith("["):
            yield from ((f"{path}[{i}]", r) for i, r in enumerate(json.loads("\n".join(lines))))
            return
        for n, line in enumerate(lines, 1):
            if line.strip():
                try:
                    yield f"{path}:{n}", json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path}:{n}: not valid JSON ({exc.msg})") from None
    elif suffix in (".csv", ".parquet"):
        import pandas as pd
        df = pd.read_csv(path) if suffix == ".csv" else pd.read_parquet(path)
        for i, row in enumerate(df.to_dict("records")):
            yield f"{path}:row {i + 2 if suffix == '.csv' else i}", row
    else:
        raise ValueError(f"{path}: unsupported file type (use .jsonl, .json, .csv or .parquet)")


def load_examples(source: str) -> list[Example]:
    """Examples from a miniworld dir, a file / directory of moderation data, or hf:name[:split]."""
    if source.startswith("hf:"):
        import datasets
        name, _, split = source[3:].partition(":")
        ds = datasets.load_dataset(name, split=split or "train")
        return [e for i, row in enumerate(ds) if (e := row_example(row, f"{source} row {i}"))]
    path = Path(source)
    if path.is_dir() and (path / "sft").is_dir():
        return world_examples(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in (".jsonl", ".json", ".csv", ".parquet"))
    elif path.exists():
        files = [path]
    else:
        raise FileNotFoundError(f"{source}: no such file or directory")
    out = [e for f in files for where, row in _table_rows(f) if (e := row_example(row, where))]
    if not out:
        raise ValueError(f"{source}: no examples found")
    return out


