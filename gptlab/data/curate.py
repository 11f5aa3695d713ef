"""Data curation: raw text -> deduplicated, filtered, PII-scrubbed, decontaminated text.

`curate(CurateConfig(input=SRC, out=DIR, world=WORLD))` streams the documents of SRC (any
source `gptlab.data.loaders.iter_texts` reads: .txt/.jsonl/.parquet, a directory, `hf:`)
and writes, atomically (DIR appears complete or not at all):

    DIR/corpus/part_000.jsonl   {"text"} the kept documents (what the tokenizer and pretrain read)
    DIR/removed/<reason>.jsonl  {"index", "text", "detail"} one file per removal reason
    DIR/report.json, report.md  counts and bytes per rule, PII counts, examples, throughput

Each document goes through, in this order (the first rule that fires names the reason):

1. PII scrubbing (never a removal): e-mail addresses, phone numbers written with separators,
   IPv4 and IPv6 addresses are replaced by [EMAIL], [PHONE], [IP].
2. exact_dup: blake2b of the normalized text (ASCII lowercased, other ASCII bytes -> space,
   runs of spaces -> one, non-ASCII kept; each CJK character is a word) was seen before.
3. quality: too_short (words), symbols (share of characters that are ASCII symbols: not
   letters, digits, whitespace or common punctuation), digits (share of digits), repetition
   (duplicate lines, or duplicate word 5-grams; 10-grams with CJK), language (CLD2, shipped
   inside pycld2, is sure of a language not in `languages`, and the text is not English by
   its function words; Chinese is kept by default).
4. contamination: the document shares a word 13-gram with a held-out eval item (every
   eval/*.jsonl of the world plus `evals`); items shorter than 13 words are counted in the
   report, not checked (with `min_eval_words` < 13 they are checked by their
   min_eval_words-grams; on miniworld that flags corpus sentences that state the same fact
   as a short fact-completion item). A CJK character counts as a word, so items with CJK
   text use 26-grams.
5. near_dup: MinHash of the byte 8-gram shingles of the normalized text, one-permutation
   hashing with densification (one hash per shingle instead of one per shingle and
   permutation), LSH in `bands` bands as a candidate filter, then the candidate's signature
   must agree in at least `near_dup_threshold` of the positions (the estimated Jaccard).

The per-document work (everything but the two dedup lookups) runs in `workers` processes
on batches of documents, vectorized across each batch (`Batch`); the parent reads, keeps
the order, the exact-hash set and the LSH tables, and writes, so the result does not depend
on the number of workers or on the batch size.
"""
from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

REASONS = ("exact_dup", "too_short", "symbols", "digits", "repetition", "language",
           "contamination", "near_dup")


@dataclass
class CurateConfig:
    input: str = field(metadata={"help": "text source: .txt/.jsonl/.parquet file, directory, or hf:org/name"})
    out: str = field(metadata={"help": "output directory (corpus/, removed/, report.json, report.md)"})
    world: str | None = field(default=None, metadata={"help": "miniworld directory: its eval/*.jsonl are the decontamination reference"})
    evals: tuple[str, ...] = field(default=(), metadata={"help": "more held-out sets (jsonl files or directories)"})
    text_field: str = field(default="text", metadata={"help": "field/column holding the text"})
    languages: str = field(default="en,zh", metadata={"help": "languages to keep (CLD2 codes)"})
    min_words: int = 5
    max_symbol_ratio: float = 0.15
    max_digit_ratio: float = 0.5
    max_dup_line_fraction: float = 0.3
    max_dup_ngram_fraction: float = 0.3
    ngram: int = 13
    min_eval_words: int = 13
    num_perm: int = 128
    bands: int = 32
    near_dup_threshold: float = 0.7
    workers: int = 2
    batch_docs: int = 256
    shard_docs: int = 20000
    examples: int = 3
    progress: bool = True


# ---------------------------------------------------------------------------- normalizing

# Normalizing works on the UTF-8 bytes with numpy, no regular expressions: ASCII letters are
# lowercased, ASCII digits kept, every other ASCII byte becomes a space, non-ASCII bytes
# (whole UTF-8 sequences: accented letters, CJK, other punctuation) are kept as they are;
# runs of spaces become one space. Words are the runs between spaces, and each CJK
# character (a 3-byte sequence led by 0xE3..0xE9: U+3000..U+9FFF) is a word of its own.
_MAP = np.full(256, 32, np.uint8)
_MAP[48:58] = np.arange(48, 58)
_MAP[97:123] = np.arange(97, 123)
_MAP[65:91] = np.arange(97, 123)
_MAP[128:] = np.arange(128, 256)
_CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_HAS_CJK = re.compile(f"[{_CJK}]")
_PUNCT = b".,;:!?'\"()-/%&[]"
_SYMBOL = np.array([c for c in list(range(0, 9)) + [11, 12] + list(range(14, 32)) + list(range(33, 127))
                    if not chr(c).isalnum() and c not in _PUNCT], np.intp)
_SPACE = np.array([9, 10, 13, 32], np.intp)

# Polynomial prefix hashes mod 2**64 make the hash of any byte span (a word n-gram of the
# normalized text is one contiguous span) two lookups and a multiply, for all spans at once.
_P = np.uint64(0x100000001B3)                 # odd, so invertible mod 2**64
_P_INV = np.uint64(pow(int(_P), -1, 2**64))
_POW = np.ones(1, np.uint64)
_INV = np.ones(1, np.uint64)


def _powers(n: int) -> tuple[np.ndarray, np.ndarray]:
    global _POW, _INV
    if len(_POW) < n:
        size = max(n, 2 * len(_POW), 4096)
        with np.errstate(over="ignore"):
            _POW = np.cumprod(np.full(size, _P, np.uint64)) * _P_INV   # P**0 .. P**(size-1)
            _INV = np.cumprod(np.full(size, _P_INV, np.uint64)) * _P
    return _POW, _INV


def _mix(h: np.ndarray) -> np.ndarray:
    """A 64-bit finalizer (splitmix64's), so every bit of the result depends on every input bit."""
    h = h ^ (h >> np.uint64(30))
    h = h * np.uint64(0xBF58476D1CE4E5B9)
    h = h ^ (h >> np.uint64(27))
    h = h * np.uint64(0x94D049BB133111EB)
    return h ^ (h >> np.uint64(31))


@dataclass
class DocStats:
    """What the quality rules read about one document."""
    norm: bytes            # normalized text
    words: int
    chars: int
    digits: int
    symbols: int
    cjk: bool
    dup_ngrams: float      # share of word 5-grams (10-grams for CJK) that repeat an earlier one
    ngrams: int            # how many such n-grams


class Batch:
    """Many documents normalized and hashed at once: the texts are joined with a newline
    (a space once normalized, so no word spans two documents) and every step is one numpy
    call for the whole batch; results do not depend on which documents share a batch."""

    def __init__(self, texts: list[str]):
        with np.errstate(over="ignore"):
            self._build(texts)

    def _build(self, texts: list[str]) -> None:
        enc = [t.encode("utf-8") for t in texts]
        self.n_docs = D = len(texts)
        lens = np.array([len(e) for e in enc], np.int64)
        raw = np.frombuffer(b"\n".join(enc), np.uint8)
        doc_of = np.repeat(np.arange(D), lens + 1)[: len(raw)]
        counts = np.bincount(doc_of * 256 + raw, minlength=D * 256).reshape(D, 256)
        counts[:-1, 10] -= 1                                      # the joining newlines
        self.chars = lens - counts[:, 128:192].sum(1)             # minus continuation bytes
        self.digits = counts[:, 48:58].sum(1)
        self.symbols = counts[:, _SYMBOL].sum(1)
        m = _MAP[raw]
        ws = m == 32
        keep = ~ws
        keep[1:] |= ~ws[:-1]                                      # the first space of a run
        self.m, self.doc_of = m[keep], doc_of[keep]
        self.data = self.m.tobytes()
        n = len(self.m)
        ws = self.m == 32
        lead = (self.m >= 0xE3) & (self.m <= 0xE9)
        self.cjk = np.bincount(self.doc_of[lead], minlength=D) > 0
        edge = np.zeros(n + 1, bool)
        edge[0] = edge[n] = True
        edge[1:n] = ws[1:] | ws[:-1] | lead[1:]
        if n >= 3:
            edge[3:] |= lead[:n - 2]                              # a CJK character ends 3 bytes after its lead
        b = np.flatnonzero(edge)
        word = ~ws[b[:-1]] if n else np.zeros(0, bool)
        self.starts, self.ends = b[:-1][word], b[1:][word]
        self.word_doc = self.doc_of[self.starts]
        first = np.searchsorted(self.word_doc, np.arange(D))
        last = np.searchsorted(self.word_doc, np.arange(D), side="right")
        self.words = last - first
        has = self.words > 0
        # each document's normalized text: from its first word's start to its last word's end
        self.lo = np.where(has, self.starts[np.minimum(first, len(self.starts) - 1)] if len(self.starts) else 0, 0)
        self.hi = np.where(has, self.ends[np.maximum(last - 1, 0)] if len(self.ends) else 0, 0)
        pw, self.inv = _powers(n + 1)
        self.prefix = np.zeros(n + 1, np.uint64)
        np.cumsum(self.m.astype(np.uint64) * pw[:n], out=self.prefix[1:])

    def norm(self, i: int) -> bytes:
        return self.data[self.lo[i]:self.hi[i]]

    def ngrams(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(hash, document) of every word n-gram of every document."""
        W = len(self.starts)
        if W < n:
            return np.zeros(0, np.uint64), np.zeros(0, np.int64)
        with np.errstate(over="ignore"):
            s, e = self.starts[: W - n + 1], self.ends[n - 1:]
            same = self.word_doc[: W - n + 1] == self.word_doc[n - 1:]
            h = (self.prefix[e] - self.prefix[s]) * self.inv[s]
        return h[same], self.word_doc[: W - n + 1][same]

    def dup_ngrams(self) -> tuple[np.ndarray, np.ndarray]:
        """Per document: share of word n-grams that repeat an earlier one, and their number
        (5-grams; 10-grams for documents with CJK, where a "word" is one character)."""
        h, d = self.ngrams(5)
        if self.cjk.any():
            h10, d10 = self.ngrams(10)
            pick5, pick10 = ~self.cjk[d], self.cjk[d10]
            h = np.concatenate([h[pick5], h10[pick10]])
            d = np.concatenate([d[pick5], d10[pick10]])
        # the document id in the low bits of the key: one sort finds the repeats per document
        bits = np.uint64(max(int(self.n_docs).bit_length(), 1))
        key = np.sort((h << bits) | d.astype(np.uint64))
        first = np.ones(len(key), bool)
        first[1:] = key[1:] != key[:-1]
        mask = (np.uint64(1) << bits) - np.uint64(1)
        uniq = np.bincount((key[first] & mask).astype(np.int64), minlength=self.n_docs)
        total = np.bincount(d, minlength=self.n_docs)
        return (total - uniq) / np.maximum(total, 1), total

    def stats(self) -> list[DocStats]:
        frac, total = self.dup_ngrams()
        return [DocStats(self.norm(i), int(self.words[i]), int(self.chars[i]), int(self.digits[i]),
                         int(self.symbols[i]), bool(self.cjk[i]), float(frac[i]), int(total[i]))
                for i in range(self.n_docs)]

    def signatures(self, num_perm: int) -> tuple[np.ndarray, np.ndarray]:
        """(uint32[D, num_perm] one-permutation MinHash of each document's byte 8-grams,
        bool[D] has a signature); see `minhash` for one document."""
        D, K = self.n_docs, num_perm
        sig = np.full(D * K, np.iinfo(np.uint32).max, np.uint32)
        count = len(self.data) - 7
        if count > 0:
            windows = np.ndarray((count,), dtype="<u8", buffer=self.data, strides=(1,))
            d = self.doc_of[:count]
            pos = np.arange(count)
            ok = (pos >= self.lo[d]) & (pos + 8 <= self.hi[d])    # inside one document's text
            d = d[ok]
            with np.errstate(over="ignore"):
                h = _mix(windows[ok] * _SALT_BIN)
            bits = K.bit_length() - 1
            bins = (h >> np.uint64(64 - bits)).astype(np.int64)
            np.minimum.at(sig, d * K + bins, (h & np.uint64(0xFFFFFFFF)).astype(np.uint32))
        sig = sig.reshape(D, K)
        filled = sig != np.iinfo(np.uint32).max
        has = filled.any(1)
        sparse = np.flatnonzero(has & ~filled.all(1))
        if len(sparse):              # densify by rotation, as `minhash` does
            f2 = np.concatenate([filled[sparse], filled[sparse]], 1)
            idx = np.where(f2, np.arange(2 * K), 2 * K)
            nxt = np.minimum.accumulate(idx[:, ::-1], axis=1)[:, ::-1][:, :K]
            rows = sig[sparse]
            with np.errstate(over="ignore"):
                sig[sparse] = np.take_along_axis(rows, nxt % K, 1) + \
                    (nxt - np.arange(K)).astype(np.uint32) * np.uint32(0x9E3779B1)
        for i in np.flatnonzero(~has & (self.hi > self.lo)):    # under 8 bytes: padded
            sig[i] = minhash(self.norm(i), K)
            has[i] = True
        return sig, has


def normalize(text: str) -> str:
    """The normalized text (lowercase ASCII words and non-ASCII runs, single spaces)."""
    return Batch([text]).norm(0).decode("utf-8")


# ---------------------------------------------------------------------------- PII

_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
_IPV4 = re.compile(
    r"(?<!\w)(?<!\d\.)(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?!\w|\.\d)")
_IPV6 = re.compile(
    r"(?<![\w:])(?:[0-9A-Fa-f]{1,4}:){7}[0-9A-Fa-f]{1,4}(?![\w:])"
    r"|(?<![\w:])(?:[0-9A-Fa-f]{1,4}:){1,6}:(?:[0-9A-Fa-f]{1,4}(?::[0-9A-Fa-f]{1,4}){0,5})?(?![\w:])")
# Phone numbers need separators between the groups, so plain numbers (a population, a year)
# are never taken for one: +1 555 123 4567, (555) 123-4567, 020 7946 0958, 555.123.4567.
_PHONE = re.compile(r"(?<![\w+])(?:\+\d{1,3}[ .-]?)?(?:\(\d{2,4}\)[ .-]?|\d{2,4}[ .-])\d{3,4}[ .-]\d{3,5}(?![\w])")
# Each pattern runs only when a cheap test says it may match (the full patterns, with their
# look-behinds, scan at 10-40 MB/s; the tests at hundreds).
_MAYBE_IPV4 = re.compile(r"\.\d{1,3}\.\d")
_MAYBE_PHONE = re.compile(r"\d[ .)-] ?\d{3,4}[ .-]\d{3}")
_MAYBE_IPV6 = re.compile(r":[0-9A-Fa-f]{1,4}:[0-9A-Fa-f]{1,4}:")
PII_RULES = (("email", _EMAIL, "[EMAIL]", lambda t: "@" in t),
             ("ip", _IPV4, "[IP]", lambda t: _MAYBE_IPV4.search(t) is not None),
             ("ip", _IPV6, "[IP]", lambda t: "::" in t or _MAYBE_IPV6.search(t) is not None),
             ("phone", _PHONE, "[PHONE]", lambda t: _MAYBE_PHONE.search(t) is not None))


def scrub_pii(text: str) -> tuple[str, dict]:
    """(text with PII replaced, {kind: count}). IPs before phones: 10.0.0.12 is an IP."""
    counts: dict = {}
    for kind, pattern, repl, maybe in PII_RULES:
        if maybe(text):
            text, n = pattern.subn(repl, text)
            if n:
                counts[kind] = counts.get(kind, 0) + n
    return text, counts


# ---------------------------------------------------------------------------- quality

def _lang(text: str, doc: DocStats, allowed: frozenset) -> str | None:
    """The detected language when CLD2 is sure it is not an allowed one, else None."""
    import pycld2
    # English function words first: cheaper than CLD2, and CLD2 takes short English text
    # full of place names for Malay or Guarani ("Kuala Lumpur is located in Malaysia.").
    if "en" in allowed and _english_share(doc) >= 0.1:
        return None
    try:
        reliable, _, details = pycld2.detect(text[:2000])
    except pycld2.error:          # e.g. control characters; other rules judge such text
        return None
    code = details[0][1]
    if not reliable or code == "un" or code.split("-")[0] in allowed:
        return None
    return code


_EN_WORDS = frozenset(b"the of and a an in is are was to for with by on at as from it its this that "
                      b"which has have be or not also about than".split())


def _english_share(doc: DocStats) -> float:
    words = doc.norm[:1000].split()
    return sum(map(_EN_WORDS.__contains__, words)) / max(len(words), 1)


def quality_reason(text: str, doc: DocStats, cfg: CurateConfig, allowed: frozenset) -> tuple[str, str] | None:
    """(reason, detail) of the first quality rule the document fails, or None."""
    if doc.words < cfg.min_words:
        return "too_short", f"{doc.words} words"
    symbols = doc.symbols / doc.chars
    if symbols > cfg.max_symbol_ratio:
        return "symbols", f"symbol ratio {symbols:.2f}"
    digits = doc.digits / doc.chars
    if digits > cfg.max_digit_ratio:
        return "digits", f"digit ratio {digits:.2f}"
    if text.count("\n") >= 2:
        lines = [s for s in (line.strip() for line in text.splitlines()) if s]
        if len(lines) >= 3:
            dup = 1 - len(set(lines)) / len(lines)
            if dup > cfg.max_dup_line_fraction:
                return "repetition", f"{dup:.0%} duplicate lines"
    if doc.ngrams >= 10 and doc.dup_ngrams > cfg.max_dup_ngram_fraction:
        return "repetition", f"{doc.dup_ngrams:.0%} duplicate word n-grams"
    lang = _lang(text, doc, allowed)
    if lang:
        return "language", lang
    return None


# ---------------------------------------------------------------------------- MinHash

_SALT_BIN = np.uint64(0x9E3779B97F4A7C15)


def minhash(norm: bytes, num_perm: int) -> np.ndarray | None:
    """One-permutation MinHash (uint32[num_perm]) of the byte 8-grams of `norm`, densified by
    rotation (an empty bin takes the next non-empty bin's value, offset by the distance)."""
    if not norm:
        return None
    buf = norm if len(norm) >= 8 else norm.ljust(8, b" ")
    count = len(buf) - 7
    # each 8-byte window read as one little-endian uint64: shingle = its bytes, exactly
    windows = np.ndarray((count,), dtype="<u8", buffer=buf, strides=(1,))
    h = _mix(windows * _SALT_BIN)
    bits = num_perm.bit_length() - 1
    bins = (h >> np.uint64(64 - bits)).astype(np.intp)
    vals = (h & np.uint64(0xFFFFFFFF)).astype(np.uint32)
    sig = np.full(num_perm, np.iinfo(np.uint32).max, np.uint32)
    np.minimum.at(sig, bins, vals)
    filled = np.flatnonzero(sig != np.iinfo(np.uint32).max)
    if len(filled) < num_perm:
        j = np.arange(num_perm)
        src = filled[np.searchsorted(filled, j) % len(filled)]
        dist = ((src - j) % num_perm).astype(np.uint32)
        sig = sig[src] + dist * np.uint32(0x9E3779B1)
    return sig


def band_keys(sig: np.ndarray, bands: int) -> np.ndarray:
    """LSH keys: one hash per band of `rows` signature values; sig may be [D, K] (-> [D, bands])."""
    rows = sig.shape[-1] // bands
    with np.errstate(over="ignore"):
        m = sig[..., : bands * rows].reshape(*sig.shape[:-1], bands, rows).astype(np.uint64)
        keys = (m * _BAND_MULT[:rows]).sum(axis=-1) + np.arange(bands, dtype=np.uint64) * _SALT_BIN
        return _mix(keys)


_BAND_MULT = _mix(np.arange(1, 65, dtype=np.uint64))


# ---------------------------------------------------------------------------- eval n-grams

def _eval_texts(record: dict) -> str:
    """The text of an eval record that it asks and expects: every string but its meta and
    the assistant turns given as context (those restate knowledge-base facts that the
    corpus teaches on purpose; the expected answer is the record's reference)."""
    parts: list[str] = []

    def walk(x):
        if isinstance(x, str):
            parts.append(x)
        elif isinstance(x, list):
            for y in x:
                walk(y)
        elif isinstance(x, dict) and x.get("role") != "assistant":
            for k, y in x.items():
                if k not in ("meta", "role", "id", "template"):
                    walk(y)
    walk(record)
    return "\n".join(parts)


def _eval_files(paths: Iterable[str | Path]) -> list[Path]:
    files = []
    for p in map(Path, paths):
        if not p.exists():
            raise FileNotFoundError(f"eval set {p} does not exist")
        files += sorted(p.rglob("*.jsonl")) if p.is_dir() else [p]
    return files


def load_eval_ngrams(paths: Iterable[str | Path], n: int = 13, min_words: int = 13) -> dict:
    """{"bitmap", "where": {n-gram hash: "file:line"}, "lengths": the n-gram sizes to check,
    "items": N checked, "too_short": M not checked} for every record of every .jsonl file
    under `paths`."""
    where: dict[int, str] = {}
    lengths, items, short = {n}, 0, 0
    for f in _eval_files(paths):
        texts, lines = [], []
        with open(f, encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{f}:{lineno}: malformed JSON ({e.msg})") from None
                texts.append(_eval_texts(rec) if isinstance(rec, dict) else str(rec))
                lines.append(lineno)
        if not texts:
            continue
        b = Batch(texts)
        # a CJK character is a word here, so those items take twice as many; items under
        # n words (with min_words < n) are checked by their min_words-grams
        scale = np.where(b.cjk, 2, 1)
        size = np.where(b.words >= n * scale, n * scale, min_words * scale)
        checked = b.words >= min_words * scale
        short += int((~checked).sum())
        items += int(checked.sum())
        for k in sorted(set(size[checked].tolist())):
            lengths.add(k)
            h, d = b.ngrams(k)
            mine = checked[d] & (size[d] == k)
            # each item's "file:line" built once, not once per n-gram
            where_item = [f"{f.parent.name}/{f.name}:{line}" for line in lines]
            for x, i in zip(h[mine].tolist(), d[mine].tolist()):
                where.setdefault(x, where_item[i])
    # A bitmap indexed by the top 24 bits of a hash answers "not an eval n-gram" for almost
    # every n-gram of a document with one vectorized lookup; the dict confirms the rest.
    bitmap = np.zeros(1 << _BITMAP_BITS, bool)
    bitmap[(np.array(list(where), dtype=np.uint64) >> np.uint64(64 - _BITMAP_BITS)).astype(np.intp)] = True
    return {"bitmap": bitmap, "ngrams": len(where), "lengths": sorted(lengths), "where": where,
            "items": items, "too_short": short, "files": len(_eval_files(paths))}


_BITMAP_BITS = 24


# ---------------------------------------------------------------------------- per document

_STATE: dict = {}       # set in each worker (and in-process): config + eval n-grams


def _init(cfg: CurateConfig, evals: dict) -> None:
    _STATE.update(cfg=cfg, evals=evals,
                  allowed=frozenset(x.strip() for x in cfg.languages.split(",") if x.strip()))


def _leaks(batch: Batch, evals: dict) -> list[int | None]:
    """Per document: the first n-gram hash it shares with an eval item, or None."""
    out: list[int | None] = [None] * batch.n_docs
    if not evals["ngrams"]:
        return out
    bitmap, where = evals["bitmap"], evals["where"]
    for size in evals["lengths"]:
        h, d = batch.ngrams(size)
        maybe = bitmap[(h >> np.uint64(64 - _BITMAP_BITS)).astype(np.intp)]
        for x, i in zip(h[maybe].tolist(), d[maybe].tolist()):
            if out[i] is None and x in where:
                out[i] = x
    return out


def _process(texts: list[str]) -> dict:
    """Everything about a batch of documents that does not depend on other documents."""
    cfg, evals, allowed = _STATE["cfg"], _STATE["evals"], _STATE["allowed"]
    scrubbed = [scrub_pii(t) for t in texts]
    clean = [c for c, _ in scrubbed]
    batch = Batch(clean)
    stats = batch.stats()
    reasons = [quality_reason(t, st, cfg, allowed) for t, st in zip(clean, stats)]
    leaks = _leaks(batch, evals)
    sig, has_sig = batch.signatures(cfg.num_perm)
    return {"scrubbed": [c if pii else None for c, pii in scrubbed],
            "pii": [pii for _, pii in scrubbed],
            "digest": [hashlib.blake2b(st.norm, digest_size=16).digest() for st in stats],
            "reason": reasons,
            "leak": [leak if r is None else None for leak, r in zip(leaks, reasons)],
            "sig": sig, "has_sig": has_sig.tolist(), "keys": band_keys(sig, cfg.bands),
            # the parent only counts and writes: sizes and the kept-record JSON come from here
            "bytes": [len(t.encode("utf-8")) for t in texts],
            "clean_bytes": [len(c.encode("utf-8")) for c in clean],
            # UTF-8 bytes: the encoding is done here, in parallel, and the parent writes bytes
            "line": [(json.dumps({"text": c}, ensure_ascii=False) + "\n").encode("utf-8") for c in clean]}


# ---------------------------------------------------------------------------- near-dup index

class NearDupIndex:
    """LSH over MinHash signatures: band keys find candidates, the signatures decide."""

    def __init__(self, num_perm: int, bands: int, threshold: float):
        self.bands, self.threshold = bands, threshold
        self.table: dict[int, int] = {}
        self.sigs = np.zeros((1024, num_perm), np.uint32)
        self.n = 0

    def query_insert(self, sig: np.ndarray, keys: list[int] | None = None) -> tuple[int, float] | None:
        """(index of a near-duplicate, estimated Jaccard), or None after indexing `sig`.
        `keys`: its band keys, when already computed (the workers compute them in batches)."""
        keys = band_keys(sig, self.bands).tolist() if keys is None else keys
        candidates = set(map(self.table.get, keys))          # dict lookups at C speed
        candidates.discard(None)
        for j in sorted(candidates):
            est = np.count_nonzero(self.sigs[j] == sig) / len(sig)
            if est >= self.threshold:
                return j, est
        if self.n == len(self.sigs):
            self.sigs = np.concatenate([self.sigs, np.zeros_like(self.sigs)])
        self.sigs[self.n] = sig
        self.table.update(dict.fromkeys(keys, self.n))      # a band key names its latest document
        self.n += 1
        return None


# ---------------------------------------------------------------------------- writing

class _JsonlShards:
    def __init__(self, folder: Path, shard_docs: int):
        self.folder, self.shard_docs = folder, shard_docs
        folder.mkdir(parents=True, exist_ok=True)
        self.n, self._f = 0, None

    def write_line(self, line: bytes) -> None:
        """Append one JSON line, UTF-8 encoded (the workers encode the records)."""
        if self.n % self.shard_docs == 0:
            self.close()
            self._f = open(self.folder / f"part_{self.n // self.shard_docs:03d}.jsonl", "wb")
        self._f.write(line)
        self.n += 1

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None


class _Removed:
    def __init__(self, folder: Path, examples: int):
        self.folder, self.examples = folder, examples
        folder.mkdir(parents=True, exist_ok=True)
        self.files: dict = {}
        self.stats = {r: {"docs": 0, "bytes": 0, "examples": []} for r in REASONS}

    def add(self, reason: str, index: int, text: str, nbytes: int, detail: str) -> None:
        if reason not in self.files:
            self.files[reason] = open(self.folder / f"{reason}.jsonl", "w", encoding="utf-8")
        self.files[reason].write(json.dumps({"index": index, "detail": detail, "text": text},
                                            ensure_ascii=False) + "\n")
        s = self.stats[reason]
        s["docs"] += 1
        s["bytes"] += nbytes
        if len(s["examples"]) < self.examples:
            s["examples"].append({"index": index, "detail": detail, "text": text[:300]})

    def close(self) -> None:
        for f in self.files.values():
            f.close()


# ---------------------------------------------------------------------------- the stage

def _batches(texts: Iterator[str], n: int) -> Iterator[list[str]]:
    batch: list[str] = []
    for t in texts:
        batch.append(t)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch


def _eval_paths(cfg: CurateConfig) -> list[str]:
    paths = list(cfg.evals)
    if cfg.world:
        ev = Path(cfg.world) / "eval"
        if not ev.is_dir():
            raise FileNotFoundError(f"{cfg.world} has no eval/ directory (write it with `gptlab data world`)")
        paths.insert(0, str(ev))
    return paths


def _results(cfg: CurateConfig, evals: dict) -> Iterator[tuple[list[str], dict]]:
    """(batch of texts, _process(batch)) in input order, from worker processes when asked."""
    from gptlab.data.loaders import iter_texts

    batches = _batches(iter_texts(cfg.input, cfg.text_field), cfg.batch_docs)
    if cfg.workers <= 0:
        _init(cfg, evals)
        for b in batches:
            yield b, _process(b)
        return
    # fork: the workers inherit the imported modules, and need no pickled eval table
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else None)
    with ctx.Pool(cfg.workers, initializer=_init, initargs=(cfg, evals)) as pool:
        pending: list = []
        for b in batches:              # at most 2 batches per worker in flight: bounded memory
            pending.append((b, pool.apply_async(_process, (b,))))
            if len(pending) > 2 * cfg.workers:
                texts, res = pending.pop(0)
                yield texts, res.get()
        for texts, res in pending:
            yield texts, res.get()


def curate(cfg: CurateConfig) -> dict:
    """Run the curation stage; returns the report (also written as DIR/report.json)."""
    from tqdm.auto import tqdm

    from gptlab.checkpoint import atomic_dir

    if cfg.num_perm & (cfg.num_perm - 1) or cfg.num_perm % cfg.bands:
        raise ValueError(f"num_perm ({cfg.num_perm}) must be a power of two divisible by bands ({cfg.bands})")
    t0 = time.time()
    evals = load_eval_ngrams(_eval_paths(cfg), cfg.ngram, cfg.min_eval_words)
    seen: set[bytes] = set()
    index = NearDupIndex(cfg.num_perm, cfg.bands, cfg.near_dup_threshold)
    total = {"docs": 0, "bytes": 0}
    kept = {"docs": 0, "bytes": 0}
    pii = {"docs": 0, "email": 0, "phone": 0, "ip": 0}
    with atomic_dir(cfg.out, markers=("report.json",)) as tmp:
        corpus, removed = _JsonlShards(tmp / "corpus", cfg.shard_docs), _Removed(tmp / "removed", cfg.examples)
        with tqdm(desc="curating", unit="B", unit_scale=True, delay=2.0, disable=not cfg.progress) as bar:
            for texts, res in _results(cfg, evals):
                # one array from the worker (a pickled buffer, not 32 ints per document), as
                # Python ints once per batch for the LSH dict
                res["keys"] = res["keys"].tolist()
                nbytes_batch = 0
                for i, text in enumerate(texts):
                    nbytes = res["bytes"][i]
                    nbytes_batch += nbytes
                    doc = total["docs"]
                    total["docs"] += 1
                    total["bytes"] += nbytes
                    clean = res["scrubbed"][i] or text
                    if res["pii"][i]:
                        pii["docs"] += 1
                        for k, v in res["pii"][i].items():
                            pii[k] += v
                    verdict = _verdict(res, i, seen, index, evals)
                    if verdict:
                        removed.add(verdict[0], doc, clean, nbytes, verdict[1])
                        continue
                    corpus.write_line(res["line"][i])
                    kept["docs"] += 1
                    kept["bytes"] += res["clean_bytes"][i]
                bar.update(nbytes_batch)
        corpus.close()
        removed.close()
        if total["docs"] == 0:
            raise ValueError(f"{cfg.input}: no documents to curate")
        seconds = time.time() - t0
        report = {
            "input": str(cfg.input), "total": total, "kept": kept,
            "removed": removed.stats, "pii": pii,
            "eval_sets": {"paths": _eval_paths(cfg), "files": evals["files"],
                          "items_checked": evals["items"], "items_too_short": evals["too_short"],
                          "ngrams": evals["ngrams"], "ngram": cfg.ngram,
                          "min_eval_words": cfg.min_eval_words},
            "seconds": round(seconds, 2),
            "mb_per_s": round(total["bytes"] / 1e6 / max(seconds, 1e-9), 2),
            "config": {k: v for k, v in asdict(cfg).items() if k not in ("progress",)},
        }
        (tmp / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n",
                                          encoding="utf-8")
        (tmp / "report.md").write_text(report_markdown(report), encoding="utf-8")
    return report


def _verdict(res: dict, i: int, seen: set, index: NearDupIndex, evals: dict) -> tuple[str, str] | None:
    """(reason, detail) when document i of the batch is removed; indexes it otherwise."""
    digest = res["digest"][i]
    if digest in seen:
        return "exact_dup", "same normalized text as an earlier document"
    seen.add(digest)
    if res["reason"][i]:
        return res["reason"][i]
    if res["leak"][i] is not None:
        return "contamination", f"13-gram of {evals['where'].get(res['leak'][i], 'an eval item')}"
    if res["has_sig"][i]:
        hit = index.query_insert(res["sig"][i], res["keys"][i])
        if hit:
            return "near_dup", f"~{hit[1]:.2f} Jaccard with kept document #{hit[0]} (in kept order)"
    return None


def curation_table(report: dict) -> list[str]:
    """Markdown table rows: one per rule, docs and bytes removed (REPORT.md uses it too)."""
    tot = report["total"]
    rows = ["| rule | docs | % docs | MB | % bytes |", "| --- | ---: | ---: | ---: | ---: |"]
    for reason in REASONS:
        s = report["removed"][reason]
        rows.append(f"| {reason} | {s['docs']} | {100 * s['docs'] / tot['docs']:.2f} | "
                    f"{s['bytes'] / 1e6:.3f} | {100 * s['bytes'] / max(tot['bytes'], 1):.2f} |")
    k = report["kept"]
    rows.append(f"| **kept** | {k['docs']} | {100 * k['docs'] / tot['docs']:.2f} | "
                f"{k['bytes'] / 1e6:.3f} | {100 * k['bytes'] / max(tot['bytes'], 1):.2f} |")
    return rows


def report_markdown(report: dict) -> str:
    tot, pii, ev = report["total"], report["pii"], report["eval_sets"]
    lines = [f"# Curation of `{report['input']}`", "",
             f"{tot['docs']} documents, {tot['bytes'] / 1e6:.2f} MB in {report['seconds']} s "
             f"({report['mb_per_s']} MB/s).", "", *curation_table(report), "",
             f"PII replaced (documents kept): {pii['docs']} documents; {pii['email']} e-mail "
             f"addresses, {pii['phone']} phone numbers, {pii['ip']} IP addresses.", "",
             f"Decontamination reference: {ev['items_checked']} eval items from {ev['files']} "
             f"files ({ev['ngrams']} distinct {ev['ngram']}-grams; {ev['items_too_short']} "
             f"items under {ev['min_eval_words']} words not checked).", "", "## Examples", ""]
    for reason in REASONS:
        for ex in report["removed"][reason]["examples"]:
            text = ex["text"].replace("\n", " ").replace("|", "\\|")[:160]
            lines.append(f"- **{reason}** (#{ex['index']}, {ex['detail']}): {text}")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------- measuring

_FOREIGN = ["La ville est située au bord de la rivière et compte de nombreux habitants qui travaillent dans les usines.",
            "Der Fluss fließt durch die Stadt, und im Sommer kommen viele Besucher aus dem ganzen Land hierher.",
            "El mercado abre todos los días por la mañana y los vecinos compran pan, fruta y pescado fresco.",
            "Il treno parte dalla stazione centrale ogni mattina e arriva in città dopo due ore di viaggio."]


def _junk(rng, kind: str) -> str:
    if kind == "symbols":
        return " ".join("".join(rng.choice("@#$%^&*<>{}|~=+") for _ in range(rng.randint(2, 6)))
                        + rng.choice(["", " data", " x"]) for _ in range(rng.randint(20, 60)))
    if kind == "digits":
        return "\n".join(" ".join(str(rng.randint(1000, 99999)) for _ in range(6)) for _ in range(rng.randint(5, 15)))
    if kind == "repetition":
        line = rng.choice(["Click here to subscribe to our newsletter", "Buy cheap watches online now",
                           "Best prices guaranteed, order today"]) + f" (offer {rng.randint(1, 10**6)})"
        return "\n".join([line] * rng.randint(8, 20))
    if kind == "too_short":
        return rng.choice(["Home | Login | {}", "Read more ({})", "Page {} of 90", "Share this {}"]).format(
            rng.randint(1, 10**6))
    if kind == "language":            # word salad from one language's sentence
        words = rng.choice(_FOREIGN).rstrip(".").split()
        return " ".join(rng.choice(words) for _ in range(rng.randint(25, 40))) + "."
    raise ValueError(kind)


def _near(rng, text: str) -> str:
    """An edited copy: one word edit per 25 words (at least one), then case or spacing."""
    zh = bool(_HAS_CJK.search(text))
    parts = list(text) if zh else text.split(" ")
    for _ in range(max(1, len(parts) // (60 if zh else 25))):
        i = rng.randrange(len(parts))
        op = rng.random()
        if op < 0.4:
            parts[i] = rng.choice(["很", "新"] if zh else ["very", "new", "old", "big"])
        elif op < 0.7 and len(parts) > 3:
            del parts[i]
        else:
            parts.insert(i, rng.choice(["也"] if zh else ["also", "really", "indeed"]))
    out = ("" if zh else " ").join(parts)
    return out.upper() if rng.random() < 0.3 else out.replace(". ", ".  ")


_PII = [("email", "Write to {} for details.", ["jane.doe@example.org", "info@mail.example.com", "b.smith+news@example.co.uk"]),
        ("phone", "Call {} to book.", ["+1 555 123 4567", "(555) 987-6543", "020 7946 0958", "+44 20 7946 0958"]),
        ("ip", "The mirror runs at {}.", ["192.168.10.24", "10.0.0.7", "2001:0db8:85a3:0000:0000:8a2e:0370:7334", "fe80::1ff:fe23:4567:890a"])]


def planted_corpus(world: str | Path, out: str | Path, seed: int = 0, n_exact: int = 40,
                   n_near: int = 100, n_junk: int = 10, n_pii: int = 30, n_leak: int = 40) -> dict:
    """A measuring fixture: miniworld's corpus (exact duplicates dropped) with planted
    exact duplicates, near duplicates, junk of each kind, PII and leaked eval items, shuffled,
    written to `out` (jsonl with {"text", "planted"}); returns {planted kind: count}. Leaks
    are eval items long enough to check, verbatim, appended to a copy of a clean document."""
    import random
    from gptlab.data.loaders import iter_texts
    from gptlab.fileio import atomic_write_text

    rng = random.Random(seed)
    world = Path(world)
    clean, seen = [], set()
    for t in iter_texts(world / "corpus"):
        key = normalize(t)
        if key not in seen:
            seen.add(key)
            clean.append(t)
    items = []
    for f in sorted((world / "eval").glob("*.jsonl")):
        for line in f.read_text(encoding="utf-8").splitlines():
            text = _eval_texts(json.loads(line))
            b = Batch([text])
            if b.words[0] >= (26 if b.cjk[0] else 13):
                items.append(text)
    rng.shuffle(clean)
    pii_base, leak_base, clean = clean[:n_pii], clean[n_pii:n_pii + n_leak], clean[n_pii + n_leak:]
    docs = [(t, "clean") for t in clean]
    docs += [(t if rng.random() < 0.5 else "  " + t.lower() + " ", "exact_dup") for t in rng.sample(clean, n_exact)]
    docs += [(_near(rng, t), "near_dup") for t in rng.sample(clean, n_near)]
    for kind in ("symbols", "digits", "repetition", "too_short", "language"):
        docs += [(_junk(rng, kind), kind) for _ in range(n_junk)]
    for i, t in enumerate(pii_base):         # these replace their clean originals
        _, template, values = _PII[i % 3]
        docs.append((t + " " + template.format(values[(i // 3) % len(values)]), "pii"))
    docs += [(t + "\n\n" + item, "contamination") for t, item in zip(leak_base, rng.sample(items, n_leak))]
    # originals come before their copies, so that the copy is the one counted as a duplicate
    first, rest = docs[:len(clean)], docs[len(clean):]
    rng.shuffle(rest)
    order = first + rest
    atomic_write_text(out, "".join(json.dumps({"text": t, "planted": k}, ensure_ascii=False) + "\n" for t, k in order))
    counts: dict = {}
    for _, k in order:
        counts[k] = counts.get(k, 0) + 1
    return counts


def score_planted(fixture: str | Path, out: str | Path) -> dict:
    """Per rule: recall (planted documents of that kind removed for that reason), precision
    (removals for that reason that were planted as such); plus the clean documents removed
    and, for PII, the share of planted documents kept with the PII replaced."""
    planted = [json.loads(line) for line in Path(fixture).read_text(encoding="utf-8").splitlines()]
    why: dict[int, str] = {}
    for f in (Path(out) / "removed").glob("*.jsonl"):
        for line in f.read_text(encoding="utf-8").splitlines():
            why[json.loads(line)["index"]] = f.stem
    kept = "\n".join(json.loads(line)["text"] for f in sorted((Path(out) / "corpus").glob("*.jsonl"))
                     for line in f.read_text(encoding="utf-8").splitlines())
    result = {}
    for rule in REASONS:
        truth = {i for i, r in enumerate(planted) if r["planted"] == rule}
        got = {i for i, r in why.items() if r == rule}
        if truth or got:
            result[rule] = {"planted": len(truth), "removed": len(got),
                            "recall": len(truth & got) / max(len(truth), 1),
                            "precision": len(truth & got) / max(len(got), 1)}
    clean = [i for i, r in enumerate(planted) if r["planted"] == "clean"]
    result["clean_removed"] = {"n": len(clean), "removed": sum(i in why for i in clean),
                               "fraction": sum(i in why for i in clean) / max(len(clean), 1),
                               "by_reason": {r: sum(why.get(i) == r for i in clean) for r in REASONS}}
    pii = [i for i, r in enumerate(planted) if r["planted"] == "pii"]
    values = [v for _, _, vs in _PII for v in vs]
    leaked = sum(v in kept for v in values)
    result["pii"] = {"planted": len(pii), "kept": sum(i not in why for i in pii),
                     "values_left_in_kept_text": leaked}
    return result
