"""The hashing side of data curation, vectorized with numpy over a batch of documents:
normalized text (`Batch`, `normalize`), per-document statistics for the quality rules
(`DocStats`), word n-gram hashes for decontamination, MinHash signatures of byte 8-grams and
their LSH band keys, and `NearDupIndex`, the near-duplicate lookup. See gptlab.data.curate
for the rules that use them."""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np


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
HAS_CJK = re.compile(f"[{_CJK}]")
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
