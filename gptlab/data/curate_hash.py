"""The hashing side of data curation, vectorized with numpy over a batch of documents:
normalized text (`Batch`, `normalize`), per-document statistics for the quality rules
(byte-class counts, repeated n-grams, the share of given words), word n-gram hashes for
decontamination, MinHash signatures of byte 8-grams and their LSH band keys, and
`NearDupIndex`, the near-duplicate lookup. See gptlab.data.curate for the rules that use
them."""
from __future__ import annotations

import hashlib
import re

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
_MAP_BYTES = _MAP.tobytes()                   # for bytes.translate
# each byte's class, counted per document: d digit, s symbol, c UTF-8 continuation byte,
# j lead byte of a CJK character
_CLASS = bytearray(b" " * 256)
_CLASS[48:58] = b"d" * 10
for _c in _SYMBOL:
    _CLASS[_c] = ord("s")
_CLASS[128:192] = b"c" * 64
_CLASS[0xE3:0xEA] = b"j" * 7
_CLASS = bytes(_CLASS)
_IS_CJK_LEAD = bytes(1 if 0xE3 <= c <= 0xE9 else 0 for c in range(256))

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


def _mix_inplace(h: np.ndarray) -> None:
    """`_mix`, overwriting h (no temporary arrays but one)."""
    t = h >> np.uint64(30)
    h ^= t
    h *= np.uint64(0xBF58476D1CE4E5B9)
    np.right_shift(h, np.uint64(27), out=t)
    h ^= t
    h *= np.uint64(0x94D049BB133111EB)
    np.right_shift(h, np.uint64(31), out=t)
    h ^= t


def _mix(h: np.ndarray) -> np.ndarray:
    """A 64-bit finalizer (splitmix64's), so every bit of the result depends on every input bit."""
    h = h ^ (h >> np.uint64(30))
    h = h * np.uint64(0xBF58476D1CE4E5B9)
    h = h ^ (h >> np.uint64(27))
    h = h * np.uint64(0x94D049BB133111EB)
    return h ^ (h >> np.uint64(31))


class Batch:
    """Many documents normalized and hashed at once: the texts are joined with a newline
    (a space once normalized, so no word spans two documents) and every step is one numpy
    call for the whole batch; results do not depend on which documents share a batch.
    `encoded`: the texts' UTF-8 bytes, when the caller has them already."""

    def __init__(self, texts: list[str], encoded: list[bytes] | None = None):
        with np.errstate(over="ignore"):
            self._build([t.encode("utf-8") for t in texts] if encoded is None else encoded)

    def _build(self, enc: list[bytes]) -> None:
        self.n_docs = D = len(enc)
        lens = np.fromiter(map(len, enc), np.int64, D)
        # per document, its bytes mapped to one letter per class, counted: C loops, no arrays
        classes = [e.translate(_CLASS) for e in enc]
        self.chars = lens - np.fromiter((c.count(b"c") for c in classes), np.int64, D)  # minus continuation bytes
        self.digits = np.fromiter((c.count(b"d") for c in classes), np.int64, D)
        self.symbols = np.fromiter((c.count(b"s") for c in classes), np.int64, D)
        self.cjk = np.fromiter((b"j" in c for c in classes), bool, D)
        # every document ends with a newline, so document i is m[off[i]:off[i + 1]]
        m = np.frombuffer((b"\n".join(enc) + b"\n").translate(_MAP_BYTES), np.uint8)
        off = np.zeros(D + 1, np.int64)
        np.cumsum(lens + 1, out=off[1:])
        ws = m == 32
        keep = np.empty_like(ws)
        keep[0] = not ws[0]
        np.logical_and(ws[1:], ws[:-1], out=keep[1:])
        np.logical_not(keep[1:], out=keep[1:])                    # drop a space after a space
        norm_off = np.zeros(D + 1, np.int64)                      # documents in normalized bytes
        if D:
            np.cumsum(np.add.reduceat(keep, off[:-1], dtype=np.int64), out=norm_off[1:])
        self.norm_off = norm_off
        self.m = m = m[keep]
        self.data = m.tobytes()
        n = len(m)
        ws = m == 32
        lead = np.frombuffer(self.data.translate(_IS_CJK_LEAD), bool)
        edge = np.empty(n + 1, bool)
        edge[0] = edge[n] = True
        edge[1:n] = ws[1:] | ws[:-1] | lead[1:]
        if n >= 3:
            edge[3:] |= lead[:n - 2]                              # a CJK character ends 3 bytes after its lead
        b = np.flatnonzero(edge)
        word = ~ws[b[:-1]] if n else np.zeros(0, bool)
        self.starts, self.ends = b[:-1][word], b[1:][word]
        bounds = np.searchsorted(self.starts, norm_off)           # each document's first word
        first, last = bounds[:-1], bounds[1:]
        self.first_word, self.words = first, last - first
        self.word_doc = np.repeat(np.arange(D), self.words)
        has = self.words > 0
        # each document's normalized text: from its first word's start to its last word's end
        self.lo = np.where(has, self.starts[np.minimum(first, len(self.starts) - 1)] if len(self.starts) else 0, 0)
        self.hi = np.where(has, self.ends[np.maximum(last - 1, 0)] if len(self.ends) else 0, 0)
        pw, self.inv = _powers(n + 1)
        self.prefix = np.zeros(n + 1, np.uint64)
        np.multiply(m, pw[:n], out=self.prefix[1:])               # no uint64 copy of m
        np.cumsum(self.prefix[1:], out=self.prefix[1:])

    def norm(self, i: int) -> bytes:
        return self.data[self.lo[i]:self.hi[i]]

    def digests(self) -> list[bytes]:
        """blake2b (16 bytes) of each document's normalized text: the exact-dup key."""
        view = memoryview(self.data)
        return [hashlib.blake2b(view[lo:hi], digest_size=16).digest()
                for lo, hi in zip(self.lo.tolist(), self.hi.tolist())]

    def ngrams(self, n: int | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(hash, document) of every word n-gram of every document, in document and then
        position order; `n` may differ per document (an array of D sizes)."""
        if np.ndim(n) == 0:     # one size: every run of n words, less those across documents
            W = len(self.starts)
            if W < n:
                return np.zeros(0, np.uint64), np.zeros(0, np.int64)
            same = self.word_doc[: W - n + 1] == self.word_doc[n - 1:]
            s, e, d = self.starts[: W - n + 1][same], self.ends[n - 1:][same], self.word_doc[: W - n + 1][same]
        else:                   # a run of n-grams per document, from its first word on
            count = np.maximum(self.words - n + 1, 0)
            first = np.repeat(self.first_word - (np.cumsum(count) - count), count) + np.arange(count.sum())
            s, e = self.starts[first], self.ends[first + np.repeat(n - 1, count)]
            d = np.repeat(np.arange(self.n_docs), count)
        with np.errstate(over="ignore"):
            return (self.prefix[e] - self.prefix[s]) * self.inv[s], d

    def word_shares(self, vocabulary: frozenset[bytes], limit: int = 1000) -> tuple[np.ndarray, np.ndarray]:
        """Per document: (how many of the words of its first `limit` normalized bytes are in
        `vocabulary`, how many words there are), words as `norm[:limit].split()` has them
        (a CJK run is one word here) and `vocabulary` words of ASCII letters, 8 at most."""
        D = self.n_docs
        cut = np.minimum(self.hi, self.lo + limit)
        count = np.where(self.words > 0, np.searchsorted(self.starts, cut) - self.first_word, 0)
        idx = np.repeat(self.first_word - (np.cumsum(count) - count), count) + np.arange(count.sum())
        doc = np.repeat(np.arange(D), count)
        s, e = self.starts[idx], np.minimum(self.ends[idx], cut[doc])      # the cut ends a word too
        padded = np.append(self.m, np.zeros(8, np.uint8))
        # a space-separated word starts where a word starts after a space (or at the text's start)
        first = (s == self.lo[doc]) | (padded[s - 1] == 32)
        # and it is a vocabulary word when the word also ends it: a space, or the cut, after it
        alone = first & ((e == cut[doc]) | (padded[e] == 32)) & (e - s <= 8)
        s, e = s[alone], e[alone]
        packed = np.ndarray((len(padded) - 7,), "<u8", padded.data, strides=(1,))[s] & _LOW_BYTES[e - s]
        hits = np.bincount(doc[alone][np.isin(packed, _pack(vocabulary))], minlength=D)
        return hits, np.bincount(doc[first], minlength=D)

    def dup_ngrams(self) -> tuple[np.ndarray, np.ndarray]:
        """Per document: share of word n-grams that repeat an earlier one, and their number
        (5-grams; 10-grams for documents with CJK, where a "word" is one character)."""
        h, d = self.ngrams(np.where(self.cjk, 10, 5))
        # the document id in the low bits of the key: one sort finds the repeats per document
        bits = np.uint64(max(int(self.n_docs).bit_length(), 1))
        key = np.sort((h << bits) | d.astype(np.uint64))
        first = np.ones(len(key), bool)
        first[1:] = key[1:] != key[:-1]
        mask = (np.uint64(1) << bits) - np.uint64(1)
        uniq = np.bincount((key[first] & mask).astype(np.int64), minlength=self.n_docs)
        total = np.bincount(d, minlength=self.n_docs)
        return (total - uniq) / np.maximum(total, 1), total

    def signatures(self, num_perm: int) -> tuple[np.ndarray, np.ndarray]:
        """(uint32[D, num_perm] one-permutation MinHash of each document's byte 8-grams,
        bool[D] has a signature); see `minhash` for one document."""
        D, K = self.n_docs, num_perm
        sig = np.full((D + 1) * K, np.iinfo(np.uint32).max, np.uint32)
        count = len(self.data) - 7
        if count > 0:
            # Every 8-byte window is hashed (one contiguous pass, no gather); the windows that
            # are not inside one document's text (its leading or trailing space, or across
            # the boundary) go to a spare row, D, so each window's row is a plain repeat.
            span = self.hi - self.lo
            inside = np.where(span >= 8, span - 7, 0)
            before = np.where(inside > 0, self.lo - self.norm_off[:-1], 0)
            after = np.diff(self.norm_off) - before - inside
            slot = np.stack([np.full(D, D * K), np.arange(D) * K, np.full(D, D * K)], 1).ravel()
            runs = np.stack([before, inside, after], 1).ravel()
            base = np.repeat(slot, runs)[:count]
            windows = np.ndarray((count,), dtype="<u8", buffer=self.data, strides=(1,))
            with np.errstate(over="ignore"):
                h = windows * _SALT_BIN
                _mix_inplace(h)
            vals = h.view(np.uint32)[::2]                          # the low 32 bits (little-endian)
            bits = K.bit_length() - 1
            bins = h >> np.uint64(64 - bits)
            np.add(bins.view(np.int64), base, out=base)
            np.minimum.at(sig, base, vals)
        sig = sig[: D * K].reshape(D, K)
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


_LOW_BYTES = np.array([(1 << 8 * k) - 1 for k in range(8)] + [2**64 - 1], np.uint64)


def _pack(words: frozenset[bytes]) -> np.ndarray:
    """Words of up to 8 bytes as little-endian integers (zero-padded), as `word_shares` reads them."""
    return np.array([int.from_bytes(w, "little") for w in words if len(w) <= 8], np.uint64)


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
        table, n = self.table, self.n
        for key in keys:                                    # a band key names its latest document
            table[key] = n
        self.n += 1
        return None


# ---------------------------------------------------------------------------- writing
