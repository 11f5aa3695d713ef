"""Prefix caching: keep the keys and values of finished sequences, so that a new prompt that
starts with one of them (the next turn of a conversation, a shared system message) skips
recomputing that part in its prompt pass.

When a request finishes, the worker stores the keys/values of every token it fed the model
(prompt + reply), keyed by those token ids. A new prompt is matched against the stored
sequences token by token; the longest common prefix (at least ``MIN_TOKENS``, and at least
one prompt token left to compute, since the prompt pass must produce the next token's
logits) is copied into the new request's cache, and only the rest of the prompt is run.
Keys are stored after RoPE at their absolute positions, which a shared prefix keeps, so the
copied values are exactly what the prompt pass would compute (up to float rounding).
llama.cpp's server (``cache_prompt``) and vLLM (automatic prefix caching) do the same; the
OpenAI API reports the reuse as ``usage.prompt_tokens_details.cached_tokens``.

Entries are partitioned by *tenant* (the API key; one partition when auth is off): a prompt
is matched only against sequences of its own tenant, since ``cached_tokens`` (and the time to
first token) would otherwise tell a caller how much of its prompt matches what another key
sent, which lets it guess another key's prompt token by token. The price: a system message
shared by many keys is cached once per key. Entries are evicted least recently used first,
within one byte budget for all tenants (``--prefix-cache-mb``), so one key's traffic can
evict another's entries: that reveals how much others send, not what.
A plain list scan finds the match: a server keeps tens to hundreds of entries, and comparing
token lists is microseconds next to a prompt pass.
"""

from __future__ import annotations

import os
from collections import OrderedDict

import torch

MIN_TOKENS = 8  # shorter matches save less than the copy costs


class PrefixCache:
    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        # (tenant, token ids) -> (keys, values)
        self.entries: OrderedDict[tuple, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        self.bytes = 0
        self.hits = self.lookups = self.tokens_saved = 0

    def put(self, ids: list[int], k: torch.Tensor, v: torch.Tensor, tenant: str = "") -> None:
        """Store one sequence's keys/values, (layers, kv_heads, len(ids), head_dim) each."""
        key = tuple(ids)
        if len(key) < MIN_TOKENS or self.max_bytes <= 0:
            return
        size = 2 * k.numel() * k.element_size()
        if size > self.max_bytes:
            return
        for who, old in list(self.entries):
            if who != tenant:
                continue
            if key[:len(old)] == old:  # a stored sequence this one extends: superseded
                self._drop((who, old))
            elif old[:len(key)] == key:  # already covered by a longer one
                self.entries.move_to_end((who, old))
                return
        self.entries[(tenant, key)] = (k, v)
        self.bytes += size
        while self.bytes > self.max_bytes:
            self._drop(next(iter(self.entries)))

    def covers(self, ids: list[int], tenant: str = "") -> bool:
        """Whether ``tenant`` already stores ``ids`` or a sequence that extends it: then ``put``
        would keep nothing new, and the caller can skip copying the keys/values out (a client
        re-sending one prompt would otherwise cost a copy of its cache per request)."""
        key = tuple(ids)
        return any(who == tenant and old[:len(key)] == key for who, old in self.entries)

    def lookup(self, prompt: list[int], tenant: str = "") -> tuple[int, torch.Tensor, torch.Tensor] | None:
        """(n, keys, values) of the longest prefix of ``prompt`` stored by ``tenant`` that
        leaves at least one prompt token to compute, or None."""
        self.lookups += 1
        best, best_key, prompt = 0, None, tuple(prompt)
        for key in self.entries:
            if key[0] != tenant:
                continue
            n = len(os.path.commonprefix([key[1], prompt]))
            if n > best:
                best, best_key = n, key
        best = min(best, len(prompt) - 1)
        if best < MIN_TOKENS:
            return None
        self.entries.move_to_end(best_key)
        self.hits += 1
        self.tokens_saved += best
        k, v = self.entries[best_key]
        return best, k[:, :, :best], v[:, :, :best]

    def _drop(self, key: tuple) -> None:
        k, _ = self.entries.pop(key)
        self.bytes -= 2 * k.numel() * k.element_size()

    def stats(self) -> dict:
        return {"entries": len(self.entries), "tenants": len({t for t, _ in self.entries}), "bytes": self.bytes, "lookups": self.lookups,
                "hits": self.hits, "tokens_saved": self.tokens_saved}
