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

Entries are evicted least recently used first, within a byte budget (``--prefix-cache-mb``).
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
        self.entries: OrderedDict[tuple, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        self.bytes = 0
        self.hits = self.lookups = self.tokens_saved = 0

    def put(self, ids: list[int], k: torch.Tensor, v: torch.Tensor) -> None:
        """Store one sequence's keys/values, (layers, kv_heads, len(ids), head_dim) each."""
        key = tuple(ids)
        if len(key) < MIN_TOKENS or self.max_bytes <= 0:
            return
        size = 2 * k.numel() * k.element_size()
        if size > self.max_bytes:
            return
        for old in list(self.entries):
            if key[:len(old)] == old:  # a stored sequence this one extends: superseded
                self._drop(old)
            elif old[:len(key)] == key:  # already covered by a longer one
                self.entries.move_to_end(old)
                return
        self.entries[key] = (k, v)
        self.bytes += size
        while self.bytes > self.max_bytes:
            self._drop(next(iter(self.entries)))

    def lookup(self, prompt: list[int]) -> tuple[int, torch.Tensor, torch.Tensor] | None:
        """(n, keys, values) of the longest stored prefix of ``prompt`` that leaves at least
        one prompt token to compute, or None."""
        self.lookups += 1
        best, best_key, prompt = 0, None, tuple(prompt)
        for key in self.entries:
            n = len(os.path.commonprefix([key, prompt]))
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
        return {"entries": len(self.entries), "bytes": self.bytes, "lookups": self.lookups,
                "hits": self.hits, "tokens_saved": self.tokens_saved}
