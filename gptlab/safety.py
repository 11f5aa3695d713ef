"""Moderation: a small text classifier that flags harmful requests, in OpenAI's response shape.

    m = Moderator.load("runs/moderator")
    m.moderate(["How do I kill a Python process?"])
    -> [{"flagged": False, "categories": {"violence": False, ...},
         "category_scores": {"violence": 0.01, ...}}]

Categories (OpenAI-style keys; miniworld's names in brackets):
  violence (violence/weapons), cyber (cyber/malware), self-harm, hate, sexual/minors, fraud.
`categories` / `category_scores` also carry OpenAI's remaining keys (OPENAI_DERIVED: illicit =
cyber or fraud, illicit/violent = violence, self-harm/intent and /instructions = self-harm,
sexual >= sexual/minors; harassment, hate/threatening, violence/graphic are not modeled and
stay false), so a result validates against OpenAI's Moderation schema.

The model is a hashed n-gram linear classifier (fastText-style bag of features, Joulin et al.
2016) with one sigmoid per category plus an "any" head, so that data sets with only a binary
label still train something. `flagged` = the largest of those scores >= the threshold.

Jailbreaks hide the words a plain-text classifier keys on, so the features are read from
several *views* of the text, each a cheap canonicalization a real moderation front end does:
the text itself; base64 runs decoded; leetspeak digits mapped back to letters; quoted
fragments concatenated (payload splitting); and every view "squashed" to its letters, whose
character 4/5-grams see "bo" + "mb" as "bomb". Chinese is read as character 1/2-grams.

Training data (`load_examples`): a miniworld directory (its sft/ and prompts/ user turns:
harmful requests positive with their category; every other user turn and every assistant
turn negative), or files in common moderation formats:
  - OpenAI's moderation eval jsonl: {"prompt", "S", "H", "V", "HR", "SH", "S3", "H2", "V2"}
    (0/1 per category; H/H2/HR -> hate, V/V2 -> violence, SH -> self-harm,
    S3 -> sexual/minors; S, adult sexual content, is not a category here);
  - generic jsonl / csv / parquet with "text" (or "prompt" / "content") and one of
    "label" (0/1, true/false, "safe"/"unsafe", or a category name), "labels" (a list of
    category names) or "categories" (a dict name -> 0/1/bool);
  - hf:org/name[:split] through `datasets` (the same columns).
`encoder` (e.g. smollm2, or any checkpoint dir) swaps the n-gram model for a linear probe on
a frozen LM's mean-pooled hidden states (block `encoder_layers`) of the most decoded view:
slower (minutes on CPU), but it generalizes to wordings never seen in training, which 36
templated requests cannot teach an n-gram model (docs/SAFETY.md has both measured).
`augment` (default on) adds the training phrasings of gptlab.redteam's attacks applied to
the TRAIN split's harmful and benign-edgy requests, never the eval split's.

`train_moderator(cfg)` writes OUT/moderator.json (config, metrics) and OUT/model.safetensors
atomically and measures it on the held-out requests (the world's eval/ set, plain and
wrapped in the red team's eval attack phrasings).
"""
from __future__ import annotations

import base64
import binascii
import json
import random
import re
import unicodedata
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from gptlab.attacks import ATTACKS, PHRASINGS, attack_turns, base_request, build_cases
from gptlab.fileio import atomic_dir, read_jsonl
from gptlab.settings import cli_field as _f

CATEGORIES = ["violence", "cyber", "self-harm", "hate", "sexual/minors", "fraud"]
HEADS = CATEGORIES + ["any"]
WORLD_CATEGORY = {"violence/weapons": "violence", "cyber/malware": "cyber",
                  "self-harm": "self-harm", "hate": "hate", "sexual/minors": "sexual/minors",
                  "fraud": "fraud"}
# label names seen in public data sets -> our category (None: not one of ours)
CATEGORY_ALIASES = {
    "v": "violence", "v2": "violence", "violence": "violence", "violence/graphic": "violence",
    "weapons": "violence", "violence/weapons": "violence", "violent_crimes": "violence",
    "cyber": "cyber", "malware": "cyber", "cyber/malware": "cyber", "hacking": "cyber",
    "cybercrime": "cyber",
    "sh": "self-harm", "self-harm": "self-harm", "self_harm": "self-harm", "selfharm": "self-harm",
    "self-harm/intent": "self-harm", "self-harm/instructions": "self-harm", "suicide": "self-harm",
    "h": "hate", "h2": "hate", "hr": "hate", "hate": "hate", "hate/threatening": "hate",
    "harassment": "hate", "harassment/threatening": "hate", "hate_speech": "hate",
    "s3": "sexual/minors", "sexual/minors": "sexual/minors", "csam": "sexual/minors",
    "child_abuse": "sexual/minors", "sexual_minors": "sexual/minors",
    "fraud": "fraud", "scam": "fraud", "fraud/scam": "fraud", "financial_crime": "fraud",
    "s": None, "sexual": None,
}
# OpenAI's other moderation keys, from ours: illicit (non-violent wrongdoing) = cyber or
# fraud, illicit/violent = violence (our violence is weapons and attacks), self-harm/intent
# and /instructions = self-harm (requests for methods are both), sexual >= sexual/minors.
# Not modeled here, always false / 0: harassment(/threatening), hate/threatening, violence/graphic.
OPENAI_DERIVED = {"harassment": [], "harassment/threatening": [], "hate/threatening": [],
                  "illicit": ["cyber", "fraud"], "illicit/violent": ["violence"],
                  "self-harm/intent": ["self-harm"], "self-harm/instructions": ["self-harm"],
                  "sexual": ["sexual/minors"], "violence/graphic": []}
TRUE_LABELS = {"1", "true", "yes", "unsafe", "harmful", "toxic", "flagged", "positive"}
FALSE_LABELS = {"0", "false", "no", "safe", "benign", "harmless", "negative", "none", ""}
TEXT_KEYS = ("text", "prompt", "content", "input")

REFUSAL = "I can't help with that."
SELF_HARM_RESOURCES = (" If you're going through a hard time, please reach out to someone you trust, "
                       "or call or text 988 (US), Samaritans on 116 123 (UK and Ireland), or find a "
                       "local line at findahelpline.com.")


def refusal_for(result: dict) -> str:
    """A short refusal for a flagged moderation result, with crisis resources for self-harm."""
    return REFUSAL + (SELF_HARM_RESOURCES if result.get("categories", {}).get("self-harm") else "")


# ----------------------------------------------------------------------------- features

_B64 = re.compile(r"[A-Za-z0-9+/]{12,}={0,2}")
_QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"')
_WORD = re.compile(r"[a-z0-9']+|[\u3400-\u9fff]")
_LEET = str.maketrans({"4": "a", "3": "e", "1": "i", "0": "o", "5": "s", "7": "t", "@": "a", "$": "s"})


def _decode_b64(run: str) -> str | None:
    try:
        text = base64.b64decode(run + "=" * (-len(run) % 4), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    return text if sum(c.isprintable() for c in text) >= 0.9 * len(text) else None


def views(text: str) -> list[str]:
    """The text and its de-obfuscated readings (lower-cased); the last is the most decoded
    one (`canonical`): base64 payloads decoded, else quoted fragments joined, else leetspeak
    mapped back, else the text."""
    low = text.lower()
    out = [low]
    runs = _B64.findall(text)
    decoded = [d.lower() for d in map(_decode_b64, runs) if d]
    rest = low
    for r in runs:   # leetspeak is read from what is not a base64 run
        rest = rest.replace(r.lower(), " ")
    if re.search(r"[a-z][0-9@$]|[0-9@$][a-z]", rest):
        out.append(rest.translate(_LEET))
    frags = _QUOTED.findall(text)
    if len(frags) >= 3:
        out.append("".join(frags).lower())
    return out + decoded


def normalize(text: str) -> str:
    """What the moderator reads: NFKC (fullwidth "ｓｃａｍ" and ligatures become "scam"),
    without invisible format characters (zero-width spaces and joiners, bidi marks) that
    would split a word for the classifier but not for a reader."""
    text = unicodedata.normalize("NFKC", text)
    return "".join(c for c in text if unicodedata.category(c) != "Cf")


def canonical(text: str) -> str:
    return views(text)[-1]


def _squash(text: str) -> str:
    return re.sub(r"[^a-z\u3400-\u9fff]", "", text)


def feature_ids(text: str, dim: int) -> list[int]:
    """Hashed features: word 1/2-grams of each view, character 4/5-grams of each squashed view
    (CJK characters count as words, so Chinese gets character 1/2-grams)."""
    grams = []
    for v in views(text):
        words = _WORD.findall(v)
        grams += ["w:" + w for w in words] + ["b:" + a + " " + b for a, b in zip(words, words[1:])]
        sq = _squash(v)
        grams += ["c:" + sq[i:i + n] for n in (4, 5) for i in range(len(sq) - n + 1)]
    return sorted({zlib.crc32(g.encode("utf-8")) % dim for g in grams}) or [0]


# ----------------------------------------------------------------------------- model

class HashedClassifier(nn.Module):
    """Bag of hashed features -> (hidden ReLU layer ->) one logit per head; or, with
    probe_dim > 0, a linear probe on standardized encoder hidden states instead (the bag
    would memorize the training wordings and leave the probe nothing to learn)."""

    def __init__(self, dim: int, hidden: int = 0, heads: int = len(HEADS), probe_dim: int = 0):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(heads))
        self.bag = self.head = self.probe = None
        if probe_dim:
            self.probe = nn.Linear(probe_dim, heads, bias=False)
            nn.init.zeros_(self.probe.weight)
            self.register_buffer("mu", torch.zeros(probe_dim))
            self.register_buffer("sd", torch.ones(probe_dim))
        else:
            self.bag = nn.EmbeddingBag(dim, hidden or heads, mode="sum")
            self.head = nn.Sequential(nn.ReLU(), nn.Linear(hidden, heads)) if hidden else None
            nn.init.normal_(self.bag.weight, std=0.01)

    def forward(self, ids: torch.Tensor, offsets: torch.Tensor, weights: torch.Tensor,
                h: torch.Tensor | None = None):
        if self.probe is not None:
            return self.probe((h - self.mu) / self.sd) + self.bias
        x = self.bag(ids, offsets, per_sample_weights=weights)
        return (self.head(x) if self.head is not None else x) + self.bias


class HiddenEncoder:
    """Mean-pooled hidden states of a frozen causal LM after its first `layers` blocks, read
    from the most de-obfuscated view of the text (see `views`)."""

    def __init__(self, path: str, layers: int, max_tokens: int = 64, batch_size: int = 32):
        from gptlab.checkpoint import load_checkpoint
        ckpt = load_checkpoint(resolve_encoder(path))
        if ckpt.tokenizer is None:
            raise ValueError(f"{path}: the encoder needs a tokenizer.json")
        self.model, self.tok = ckpt.model.eval(), ckpt.tokenizer
        self.layers = min(layers, len(self.model.model.layers)) if layers > 0 else len(self.model.model.layers)
        self.max_tokens, self.batch_size = max_tokens, batch_size
        self.dim = self.model.config.hidden_size

    @torch.no_grad()
    def __call__(self, texts: list[str], progress: bool = False) -> torch.Tensor:
        from tqdm.auto import tqdm
        m, out = self.model, []
        ids_all = [self.tok.encode(canonical(t))[:self.max_tokens] or [0] for t in texts]
        order = sorted(range(len(texts)), key=lambda i: len(ids_all[i]))   # less padding
        for b in tqdm(range(0, len(order), self.batch_size), desc="encode", disable=not progress,
                      leave=False):
            chunk = [ids_all[i] for i in order[b:b + self.batch_size]]
            T = max(map(len, chunk))
            x = torch.tensor([c + [0] * (T - len(c)) for c in chunk])
            valid = torch.tensor([[1.0] * len(c) + [0.0] * (T - len(c)) for c in chunk])[..., None]
            h = m.model.embed_tokens(x)
            cos, sin = m._rope_for(T, 0, None, None, h)
            for layer in m.model.layers[:self.layers]:   # right padding + causal: no mask needed
                h = layer(h, cos, sin, "causal", None)
            out.append((h * valid).sum(1) / valid.sum(1))
        pooled = torch.cat(out) if out else torch.zeros(0, self.dim)
        result = torch.empty_like(pooled)
        result[torch.tensor(order, dtype=torch.long)] = pooled
        return result


def resolve_encoder(spec: str) -> Path:
    """A checkpoint directory, or an alias (smollm2) imported once into the models home."""
    p = Path(spec).expanduser()
    if p.is_dir():
        return p
    from gptlab.interop import ALIASES, ensure_model, models_home
    if spec in ALIASES and (models_home() / spec / "config.json").is_file():
        return models_home() / spec
    if spec in ALIASES:
        return ensure_model(spec)
    raise FileNotFoundError(f"encoder {spec}: no such checkpoint directory")


def _batch(feats: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    ids = torch.tensor([i for f in feats for i in f], dtype=torch.long)
    offsets = torch.tensor([0] + [len(f) for f in feats[:-1]], dtype=torch.long).cumsum(0)
    weights = torch.tensor([len(f) ** -0.5 for f in feats for _ in f], dtype=torch.float32)
    return ids, offsets, weights


class Moderator:
    """A trained moderation classifier: `Moderator.load(dir).moderate(texts)`."""

    def __init__(self, model: HashedClassifier, config: dict, encoder: HiddenEncoder | None = None):
        self.model = model.eval()
        self.config = config
        self.dim = int(config["dim"])
        self.threshold = float(config.get("threshold", 0.5))
        self.encoder = encoder

    @classmethod
    def load(cls, path) -> "Moderator":
        from safetensors.torch import load_file
        path = Path(path)
        meta_path = path / "moderator.json"
        if not meta_path.exists():
            raise FileNotFoundError(f"{path} is not a moderator directory (no moderator.json); "
                                    "train one with `gptlab moderate train`")
        config = json.loads(meta_path.read_text(encoding="utf-8"))
        enc = config.get("encoder")
        encoder = None
        if enc:   # the absolute path of training time, else the spec again (e.g. smollm2)
            where = enc["path"] if Path(enc["path"]).is_dir() else enc.get("spec", enc["path"])
            encoder = HiddenEncoder(where, enc["layers"], enc["max_tokens"])
        model = HashedClassifier(config["dim"], config.get("hidden", 0),
                                 probe_dim=encoder.dim if encoder else 0)
        model.load_state_dict(load_file(str(path / "model.safetensors")))
        return cls(model, config, encoder)

    @torch.no_grad()
    def scores(self, texts: list[str]) -> torch.Tensor:
        """(len(texts), len(HEADS)) probabilities."""
        if not texts:
            return torch.zeros(0, len(HEADS))
        texts = [normalize(t or "") for t in texts]
        if self.encoder is not None:     # the probe reads hidden states only
            return torch.sigmoid(self.model(None, None, None, self.encoder(texts)))
        return torch.sigmoid(self.model(*_batch([feature_ids(t, self.dim) for t in texts])))

    def moderate(self, texts: list[str], openai_keys: bool = True) -> list[dict]:
        """One {flagged, categories, category_scores} per text. With openai_keys, the
        categories also carry the rest of OpenAI's moderation keys (OPENAI_DERIVED), so the
        result validates against OpenAI's schema."""
        if isinstance(texts, str):
            texts = [texts]
        out = []
        for row in self.scores(list(texts)).tolist():
            cat = dict(zip(CATEGORIES, row[:len(CATEGORIES)]))
            if openai_keys:
                cat.update({k: max((cat[s] for s in src), default=0.0)
                            for k, src in OPENAI_DERIVED.items()})
            out.append({"flagged": max(row) >= self.threshold,
                        "categories": {c: s >= self.threshold for c, s in cat.items()},
                        "category_scores": {c: round(s, 6) for c, s in cat.items()}})
        return out


# ----------------------------------------------------------------------------- data

@dataclass
class Example:
    text: str
    labels: dict        # category -> 0/1 for the categories this source labels
    flagged: int        # 0/1
    hard: bool | None = None   # world data: False for easy negatives (facts, math, answers)


def _user_turns(record: dict) -> list[str]:
    return [m.get("content") or "" for m in record.get("messages", []) if m.get("role") == "user"]


def world_examples(world_dir, splits=("sft", "prompts")) -> list[Example]:
    """User turns of a miniworld: the last one of a harmful record is positive, everything
    else negative (assistant turns too, so output moderation does not flag refusals)."""
    seen: dict[str, Example] = {}
    for split in splits:
        for path in sorted((Path(world_dir) / split).glob("*.jsonl")):
            for rec in read_jsonl(path):
                for ex in _record_examples(rec):
                    seen.setdefault(ex.text, ex)
    return list(seen.values())


def _record_examples(rec: dict) -> list[Example]:
    meta = rec.get("meta") or {}
    users = _user_turns(rec)
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
            logits = model(*_batch([feats[i] for i in idx]))
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
                examples += [(e, (rec.get("meta") or {}).get("kind")) for e in _record_examples(rec)
                             if e.text in _user_turns(rec)]
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
