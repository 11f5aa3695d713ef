"""The serving worker's batch KV cache: one ``KVCache`` whose rows are the running requests.

Rows join (a new request's prompt keys/values, right-aligned at the batch's write
position) and leave (a finished request). The cache's tensors are views of the first
``batch`` rows of a larger allocation, so a join fills spare rows and a retire moves the
tail rows into the holes: each copies only the rows that come and go. A new allocation is
made only when there is no spare row, when a newcomer is longer than the batch's position,
or when the columns run out (``select_rows`` then drops the leading columns no row uses).
Before, every join and every retire copied every row's cache into a new zero-filled one,
which under a flood of short requests cost the other rows more than their decode steps
(docs/PERFORMANCE.md, "Serving under attack").
"""

from __future__ import annotations

import torch

from gptlab.model import KVCache

HEADROOM = 64  # cache columns allocated ahead, so the cache is regrown every 64 steps only
# at most this many rows allocated beyond the batch, so that joins and retires copy only the
# rows that come and go (a client that sends one short request after another otherwise costs
# two copies of every row's cache per request: docs/PERFORMANCE.md, "Serving under attack")
SPARE_ROWS = 8


def valid_mask(cache: KVCache) -> torch.Tensor:
    """(B, max_len) True where a row holds a real token (the cache's own mask, or all True)."""
    if cache.valid is not None:
        return cache.valid
    return torch.ones(cache.batch_size, cache.max_len, dtype=torch.bool, device=cache.k.device)


def new_cache(like: KVCache, batch: int, max_len: int, spare: int = 0) -> KVCache:
    """A zero-filled cache of ``batch`` rows whose tensors are views of ``batch + spare``
    allocated rows: later joins fill the spare rows in place (``join_rows``)."""
    L, _, H, _, D = like.k.shape
    k = like.k.new_zeros(L, batch + spare, H, max_len, D)
    v = like.v.new_zeros(L, batch + spare, H, max_len, D)
    valid = torch.zeros(batch + spare, max_len, dtype=torch.bool, device=like.k.device)
    return rows_view(k, v, valid, batch, 0)


def rows_view(k: torch.Tensor, v: torch.Tensor, valid: torch.Tensor, batch: int, pos: int) -> KVCache:
    """A KVCache over the first ``batch`` rows of the allocated k, v, valid."""
    c = KVCache.__new__(KVCache)
    c.k, c.v, c.valid = k[:, :batch], v[:, :batch], valid[:batch]
    c.batch_size, c.max_len, c.pos = batch, k.shape[3], pos
    c.rows_alloc = (k, v, valid)
    return c


def borrowed(k: torch.Tensor, v: torch.Tensor) -> KVCache:
    """A full one-row KVCache over keys/values (layers, kv_heads, n, head_dim) kept elsewhere
    (the prefix cache), without copying them: only to be read (``join_rows``, ``select_rows``)."""
    c = KVCache.__new__(KVCache)
    c.k, c.v, c.valid = k[:, None], v[:, None], None
    c.batch_size, c.max_len, c.pos = 1, k.shape[2], k.shape[2]
    return c


def spare_rows(cache: KVCache) -> int:
    alloc = getattr(cache, "rows_alloc", None)
    return 0 if alloc is None else alloc[0].shape[1] - cache.batch_size


def select_rows(cache: KVCache, rows: list[int], spare: int = 0) -> KVCache:
    """Keep ``rows`` (repeats allowed), drop leading columns no kept row uses, and leave
    HEADROOM free columns after the write position (and ``spare`` rows for later joins)."""
    idx = torch.tensor(rows, device=cache.k.device)
    valid = valid_mask(cache)[idx, :cache.pos]
    used = valid.any(0).nonzero()
    first = int(used[0]) if len(used) else cache.pos
    width = cache.pos - first
    new = new_cache(cache, len(rows), width + HEADROOM, spare)
    new.k[:, :, :, :width] = cache.k[:, idx, :, first:cache.pos]
    new.v[:, :, :, :width] = cache.v[:, idx, :, first:cache.pos]
    new.valid[:, :width] = valid[:, first:]
    new.pos = width
    return new


def unused_columns(cache: KVCache, rows: list[int]) -> int:
    """Leading cache columns none of ``rows`` uses."""
    used = valid_mask(cache)[rows, :cache.pos].any(0).nonzero()
    return int(used[0]) if len(used) else cache.pos


def drop_rows(cache: KVCache, keep: list[int]) -> tuple[KVCache, list[int]]:
    """Keep rows ``keep`` (ascending) in place: each kept row past the new batch size moves
    into a dropped row's place, so a retire copies the rows it moves, not the batch.
    Returns the cache and, for each of its rows, the old row index it holds."""
    n, kept = len(keep), set(keep)
    order = list(range(n))
    holes = [i for i in range(n) if i not in kept]
    movers = [j for j in keep if j >= n]
    k, v, valid = cache.rows_alloc
    for hole, mover in zip(holes, movers):
        k[:, hole, :, :cache.pos] = k[:, mover, :, :cache.pos]
        v[:, hole, :, :cache.pos] = v[:, mover, :, :cache.pos]
        valid[hole] = valid[mover]
        order[hole] = mover
    return rows_view(k, v, valid, n, cache.pos), order


def join_rows(a: KVCache, b: KVCache) -> KVCache:
    """Stack two caches along the batch, right-aligned at the same write position. When ``a``
    has spare rows for ``b`` and ``b`` is no longer than ``a``'s position, ``b`` is copied
    into them and nothing else moves; otherwise both are copied into a new cache with spare
    rows (as many as the batch, at most ``SPARE_ROWS``) for the next joins."""
    if spare_rows(a) >= b.batch_size and b.pos <= a.pos:
        k, v, valid = a.rows_alloc
        new = rows_view(k, v, valid, a.batch_size + b.batch_size, a.pos)
        rows, off = slice(a.batch_size, None), a.pos - b.pos
        new.k[:, rows, :, :off] = 0   # rows a retired one left: their old keys/values
        new.v[:, rows, :, :off] = 0
        new.k[:, rows, :, off:a.pos] = b.k[:, :, :, :b.pos]
        new.v[:, rows, :, off:a.pos] = b.v[:, :, :, :b.pos]
        new.valid[rows] = False
        new.valid[rows, off:a.pos] = valid_mask(b)[:, :b.pos]
        return new
    P = max(a.pos, b.pos)
    batch = a.batch_size + b.batch_size
    new = new_cache(a, batch, P + HEADROOM, min(batch, SPARE_ROWS))
    for src, rows in ((a, slice(0, a.batch_size)), (b, slice(a.batch_size, None))):
        off = P - src.pos
        new.k[:, rows, :, off:P] = src.k[:, :, :, :src.pos]
        new.v[:, rows, :, off:P] = src.v[:, :, :, :src.pos]
        new.valid[rows, off:P] = valid_mask(src)[:, :src.pos]
    new.pos = P
    return new
