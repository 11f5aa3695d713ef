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

import json
import multiprocessing as mp
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import orjson

from gptlab.data.curate_hash import Batch, NearDupIndex, band_keys
from gptlab.fileio import atomic_dir, read_jsonl_numbered

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


def scrub_pii(text: str, maybe_phone: bool = True) -> tuple[str, dict]:
    """(text with PII replaced, {kind: count}). IPs before phones: 10.0.0.12 is an IP.
    `maybe_phone=False` skips the phone rule (`pii_candidates` found no digits around a separator)."""
    counts: dict = {}
    for kind, pattern, repl, maybe in PII_RULES:
        if (maybe_phone or kind != "phone") and maybe(text):
            text, n = pattern.subn(repl, text)
            if n:
                counts[kind] = counts.get(kind, 0) + n
    return text, counts


# The phone pre-test regex starts with \d, so it is tried at every character (~120 MB/s).
# Any match of it holds 3 digits, a separator [ .-], 3 digits; numpy finds the separators
# with a digit on both sides in the UTF-8 bytes of a whole batch at once. \d is Unicode: a
# digit is an ASCII digit or a multi-byte character, whose first byte is one of those that
# start a Unicode decimal digit (tests/test_curate.py checks the list against `re`) and
# whose last byte is a continuation byte.
_DIGIT_LEADS = (0xD9, 0xDB, 0xDF, 0xE0, 0xE1, 0xEA, 0xEF, 0xF0, 0xF1, 0xF2, 0xF3, 0xF4)
_SEPARATOR = bytes(c in b" .-" for c in range(256))
_DIGIT_END = bytes(48 <= c <= 57 or 0x80 <= c <= 0xBF for c in range(256))
_DIGIT_START = bytes(48 <= c <= 57 or c in _DIGIT_LEADS for c in range(256))
_DIGIT_BYTE = np.array([48 <= c <= 57 or c >= 0x80 for c in range(256)])


def pii_candidates(encoded: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """Per document (its UTF-8 bytes), numpy over the whole batch: (may any PII pre-test of
    `scrub_pii` pass, may the phone one). False means it cannot; True, that the regular
    expressions decide. E-mail needs an @; IPv4 a dot then a digit twice, 13 bytes apart at
    most; IPv6 "::" or 3 colons, 5 bytes apart at most; a phone 3 digits, separator, 3 digits."""
    joined = b"\n".join(encoded) + b"\n"
    raw = np.frombuffer(joined, np.uint8)
    starts = np.frombuffer(joined.translate(_DIGIT_START), bool)
    at = np.flatnonzero(np.frombuffer(joined.translate(_SEPARATOR), bool)[3:-3]
                        & np.frombuffer(joined.translate(_DIGIT_END), bool)[2:-4] & starts[4:-2]) + 3
    for k in (-3, -2, 2, 3):        # digits take one byte at least: 3 digit bytes each side
        at = at[_DIGIT_BYTE[raw[at + k]]]
    dots = np.flatnonzero((raw[:-1] == 46) & starts[1:])
    colons = np.flatnonzero(raw == 58)
    gaps = np.diff(colons)
    others = [np.flatnonzero(raw == 64), dots[:-1][np.diff(dots) <= 13],
              colons[:-2][(gaps[:-1] <= 5) & (gaps[1:] <= 5)], colons[:-1][gaps == 1]]
    off = np.cumsum([len(e) + 1 for e in encoded])
    phone = np.zeros(len(encoded), bool)
    phone[np.searchsorted(off, at, side="right")] = True
    any_pii = phone.copy()
    any_pii[np.searchsorted(off, np.concatenate(others), side="right")] = True
    return any_pii, phone


# ---------------------------------------------------------------------------- quality

def _lang(text: str, english: float, allowed: frozenset) -> str | None:
    """The detected language when CLD2 is sure it is not an allowed one, else None.
    `english`: the share of English function words among the first words (`_EN_WORDS`)."""
    import pycld2
    # English function words first: cheaper than CLD2, and CLD2 takes short English text
    # full of place names for Malay or Guarani ("Kuala Lumpur is located in Malaysia.").
    if "en" in allowed and english >= 0.1:
        return None
    try:
        reliable, _, details = pycld2.detect(text[:2000])
    except pycld2.error:          # e.g. control characters; other rules judge such text
        return None
    code = details[0][1]
    if not reliable or code == "un" or code.split("-")[0] in allowed:
        return None
    return code


# counted among the words of the first 1000 normalized bytes (Batch.word_shares)
_EN_WORDS = frozenset(b"the of and a an in is are was to for with by on at as from it its this that "
                      b"which has have be or not also about than".split())


def quality_reasons(texts: list[str], batch: Batch, cfg: CurateConfig,
                    allowed: frozenset) -> list[tuple[str, str] | None]:
    """Per document: (reason, detail) of the first quality rule it fails, or None. The
    ratios are numpy over the batch; lines and language are looked at one by one."""
    words, chars = batch.words.tolist(), batch.chars
    with np.errstate(divide="ignore", invalid="ignore"):
        symbols = (batch.symbols / chars).tolist()
        digits = (batch.digits / chars).tolist()
    dup, ngrams = batch.dup_ngrams()
    dup_ngrams = ((ngrams >= 10) & (dup > cfg.max_dup_ngram_fraction)).tolist()
    dup = dup.tolist()
    hits, words_seen = batch.word_shares(_EN_WORDS, 1000)
    english = (hits / np.maximum(words_seen, 1)).tolist()
    out: list[tuple[str, str] | None] = []
    for i, text in enumerate(texts):
        if words[i] < cfg.min_words:
            out.append(("too_short", f"{words[i]} words"))
        elif symbols[i] > cfg.max_symbol_ratio:
            out.append(("symbols", f"symbol ratio {symbols[i]:.2f}"))
        elif digits[i] > cfg.max_digit_ratio:
            out.append(("digits", f"digit ratio {digits[i]:.2f}"))
        elif (lines := _dup_lines(text)) is not None and lines > cfg.max_dup_line_fraction:
            out.append(("repetition", f"{lines:.0%} duplicate lines"))
        elif dup_ngrams[i]:
            out.append(("repetition", f"{dup[i]:.0%} duplicate word n-grams"))
        else:
            lang = _lang(text, english[i], allowed)
            out.append(("language", lang) if lang else None)
    return out


def _dup_lines(text: str) -> float | None:
    """Share of the non-blank lines that repeat an earlier one; None under 3 lines."""
    if text.count("\n") < 2:
        return None
    lines = [s for s in (line.strip() for line in text.splitlines()) if s]
    return 1 - len(set(lines)) / len(lines) if len(lines) >= 3 else None


# ---------------------------------------------------------------------------- eval n-grams

def eval_texts(record: dict) -> str:
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
        numbered = read_jsonl_numbered(f)
        lines = [lineno for lineno, _ in numbered]
        texts = [eval_texts(rec) if isinstance(rec, dict) else str(rec) for _, rec in numbered]
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
    encoded = [t.encode("utf-8") for t in texts]
    clean, clean_encoded, scrubbed, pii = list(texts), list(encoded), [None] * len(texts), [{}] * len(texts)
    maybe, phones = pii_candidates(encoded)
    for i in np.flatnonzero(maybe).tolist():
        c, counts = scrub_pii(texts[i], phones[i])
        if counts:
            clean[i] = scrubbed[i] = c
            clean_encoded[i] = c.encode("utf-8")
            pii[i] = counts
    batch = Batch(clean, clean_encoded)
    reasons = quality_reasons(clean, batch, cfg, allowed)
    leaks = _leaks(batch, evals)
    sig, has_sig = batch.signatures(cfg.num_perm)
    return {"scrubbed": scrubbed, "pii": pii, "digest": batch.digests(), "reason": reasons,
            "leak": [leak if r is None else None for leak, r in zip(leaks, reasons)],
            "sig": sig, "has_sig": has_sig.tolist(), "keys": band_keys(sig, cfg.bands),
            # the parent only counts and writes: the sizes come from here
            "bytes": list(map(len, encoded)), "clean_bytes": list(map(len, clean_encoded))}


class _JsonlShards:
    def __init__(self, folder: Path, shard_docs: int):
        self.folder, self.shard_docs = folder, shard_docs
        folder.mkdir(parents=True, exist_ok=True)
        self.n, self._f = 0, None

    def write_lines(self, lines: list[bytes]) -> None:
        """Append JSON lines, UTF-8 encoded."""
        while lines:
            if self.n % self.shard_docs == 0:
                self.close()
                self._f = open(self.folder / f"part_{self.n // self.shard_docs:03d}.jsonl", "wb")
            room = self.shard_docs - self.n % self.shard_docs
            self._f.write(b"".join(lines[:room]))
            self.n += len(lines[:room])
            lines = lines[room:]

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
    from gptlab.data.loaders import batched, iter_texts  # deferred: loaders imports torch

    batches = batched(iter_texts(cfg.input, cfg.text_field), cfg.batch_docs)
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
                first = total["docs"]
                total["docs"] += len(texts)
                total["bytes"] += sum(res["bytes"])
                for counts in filter(None, res["pii"]):
                    pii["docs"] += 1
                    for k, v in counts.items():
                        pii[k] += v
                keep = []
                for i, verdict in enumerate(_verdicts(res, seen, index, evals)):
                    if verdict:
                        removed.add(verdict[0], first + i, res["scrubbed"][i] or texts[i],
                                    res["bytes"][i], verdict[1])
                    else:
                        keep.append(i)
                # orjson writes what json.dumps(..., ensure_ascii=False) does (checked for every
                # code point), 5x faster: cheaper here than passing the lines from the workers
                scrubbed = res["scrubbed"]
                corpus.write_lines([b'{"text": ' + orjson.dumps(scrubbed[i] or texts[i]) + b'}\n' for i in keep])
                kept["docs"] += len(keep)
                kept["bytes"] += sum(res["clean_bytes"][i] for i in keep)
                bar.update(sum(res["bytes"]))
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


def _verdicts(res: dict, seen: set, index: NearDupIndex, evals: dict) -> list[tuple[str, str] | None]:
    """Per document of the batch, in order: (reason, detail) when it is removed, else None
    (and then it is indexed for the documents after it)."""
    out: list[tuple[str, str] | None] = []
    reasons, leaks, has_sig, sigs, keys = res["reason"], res["leak"], res["has_sig"], res["sig"], res["keys"]
    for i, digest in enumerate(res["digest"]):
        if digest in seen:
            out.append(("exact_dup", "same normalized text as an earlier document"))
            continue
        seen.add(digest)
        if reasons[i]:
            out.append(reasons[i])
        elif leaks[i] is not None:
            out.append(("contamination", f"13-gram of {evals['where'].get(leaks[i], 'an eval item')}"))
        elif has_sig[i] and (hit := index.query_insert(sigs[i], keys[i])):
            out.append(("near_dup", f"~{hit[1]:.2f} Jaccard with kept document #{hit[0]} (in kept order)"))
        else:
            out.append(None)
    return out


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
