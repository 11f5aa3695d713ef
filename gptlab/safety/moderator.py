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
`augment` (default on) adds the training phrasings of the red team's attacks (gptlab.safety.
attacks) applied to the TRAIN split's harmful and benign-edgy requests, never the eval split's.

`train_moderator(cfg)` writes OUT/moderator.json (config, metrics) and OUT/model.safetensors
atomically and measures it on the held-out requests (the world's eval/ set, plain and
wrapped in the red team's eval attack phrasings).
"""
from __future__ import annotations

import base64
import binascii
import json
import re
import unicodedata
import zlib
from pathlib import Path

import torch
from torch import nn

from gptlab.checkpoint import load_checkpoint
from gptlab.interop import ALIASES, ensure_model, models_home

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
    if spec in ALIASES and (models_home() / spec / "config.json").is_file():
        return models_home() / spec
    if spec in ALIASES:
        return ensure_model(spec)
    raise FileNotFoundError(f"encoder {spec}: no such checkpoint directory")


def batch_features(feats: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
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
        return torch.sigmoid(self.model(*batch_features([feature_ids(t, self.dim) for t in texts])))

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

