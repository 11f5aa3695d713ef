"""Generation with a KV cache: batching, sampling, stop tokens and strings, streaming.

``Engine(model, tokenizer)`` wraps a ``gptlab.model.GPT``. One prefill pass fills a
preallocated ``KVCache`` with the (left-padded) prompts, then each step feeds one token per
row. Sampling: greedy when ``temperature == 0``, else temperature, top-k, and nucleus
(top-p, Holtzman et al. 2019, arXiv:1904.09751) sampling from a seeded ``torch.Generator``.

Conventions (the same in ``generate`` and ``stream``):

- A completion ends at a stop token (``tokenizer.eos_id`` by default; ``stop_token_ids``
  replaces that set, and ``[]`` disables it), at a stop string, or after
  ``max_new_tokens``. Stop tokens and stop strings are *not* part of the output, as in the
  OpenAI API. ``Engine.last_finish_reasons`` then holds ``"stop"`` or ``"length"`` per row.
- ``generate`` returns token ids, so a stop string is cut at token granularity: the
  completion keeps the longest run of tokens whose text ends before the stop string (a
  token carrying text on both sides of the stop string's start is dropped with it).
  ``stream`` yields text and cuts exactly before the stop string.
- ``stream`` deltas are always whole characters: the completion is re-decoded after each
  token and only its stable prefix is emitted; a trailing U+FFFD (an incomplete UTF-8 byte
  sequence) and any tail that could still grow into a stop string are held back.
  Joined, the deltas equal the decoded completion.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from gptlab.model import GPT, KVCache


class Engine:
    def __init__(self, model: GPT, tokenizer=None):
        self.model = model
        self.tokenizer = tokenizer
        self.last_finish_reasons: list[str] = []

    # ------------------------------------------------------------------ public API

    def generate(self, prompts: list[list[int]], max_new_tokens: int = 256, temperature: float = 0.0,
                 top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
                 stop_token_ids=None, stop_strings=None) -> list[list[int]]:
        """Complete each prompt (a list of token ids); returns the completion ids only."""
        self._check(temperature, stop_strings)
        stops, stop_strings = self._stop_ids(stop_token_ids), list(stop_strings or [])
        out = [[] for _ in prompts]
        done = [False] * len(prompts)
        reasons = ["length"] * len(prompts)
        for tokens in self._steps(prompts, max_new_tokens, temperature, top_k, top_p, seed, done):
            for i, t in enumerate(tokens):
                if done[i]:
                    continue
                if t in stops:
                    done[i], reasons[i] = True, "stop"
                    continue
                out[i].append(t)
                if stop_strings and self._ends_with_stop(out[i], stop_strings):
                    self._drop_stop_string(out[i], stop_strings)
                    done[i], reasons[i] = True, "stop"
        self.last_finish_reasons = reasons
        return out

    def stream(self, prompt_ids: list[int], max_new_tokens: int = 256, temperature: float = 0.0,
               top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
               stop_token_ids=None, stop_strings=None) -> Iterator[str]:
        """Yield the completion of one prompt as text deltas (whole characters only)."""
        self._check(temperature, stop_strings, need_tokenizer=True)
        stops, stop_strings = self._stop_ids(stop_token_ids), list(stop_strings or [])
        ids, emitted, done = [], "", [False]
        self.last_finish_reasons = ["length"]
        for (t,) in self._steps([prompt_ids], max_new_tokens, temperature, top_k, top_p, seed, done):
            if t in stops:
                self.last_finish_reasons = ["stop"]
                break
            ids.append(t)
            text, hit = _cut_at_stop(self.tokenizer.decode(ids), stop_strings)
            stable = text if hit else _stable_prefix(text, stop_strings)
            if len(stable) > len(emitted) and stable.startswith(emitted):
                yield stable[len(emitted):]
                emitted = stable
            if hit:
                self.last_finish_reasons = ["stop"]
                done[0] = True
                return
        text, _ = _cut_at_stop(self.tokenizer.decode(ids), stop_strings)
        if len(text) > len(emitted):  # flush what was held back (e.g. an unfinished character)
            yield text[len(emitted):]

    # ------------------------------------------------------------------ internals

    def _check(self, temperature, stop_strings, need_tokenizer=False) -> None:
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        if (stop_strings or need_tokenizer) and self.tokenizer is None:
            raise ValueError("stop strings and streaming need a tokenizer")

    def _stop_ids(self, stop_token_ids) -> set[int]:
        if stop_token_ids is not None:
            return set(stop_token_ids)
        eos = getattr(self.tokenizer, "eos_id", None)
        return set() if eos is None else {eos}

    def _ends_with_stop(self, ids: list[int], stop_strings: list[str]) -> bool:
        """Does the decoded completion now contain a stop string? Only the tail is decoded:
        a stop string of L characters spans at most 4L byte-level tokens."""
        window = 4 * max(len(s) for s in stop_strings) + 8
        tail = self.tokenizer.decode(ids[-window:])
        return any(s in tail for s in stop_strings)

    def _drop_stop_string(self, ids: list[int], stop_strings: list[str]) -> None:
        """Pop tokens until the decoded ids end before the stop string."""
        before, _ = _cut_at_stop(self.tokenizer.decode(ids), stop_strings)
        while ids and not before.startswith(self.tokenizer.decode(ids)):
            ids.pop()

    @torch.inference_mode()
    def _steps(self, prompts, max_new_tokens, temperature, top_k, top_p, seed, done) -> Iterator[list[int]]:
        """Yield one new token per row per step until max_new_tokens or all rows ``done``
        (a list the caller updates)."""
        if not prompts or any(len(p) == 0 for p in prompts):
            raise ValueError("every prompt needs at least one token")
        if max_new_tokens <= 0:
            return
        param = next(self.model.parameters())
        gen = None if seed is None else torch.Generator(param.device).manual_seed(seed)
        ids, mask, positions = _left_pad(prompts, param.device)
        cache = KVCache(self.model.config, len(prompts), ids.shape[1] + max_new_tokens,
                        device=param.device, dtype=param.dtype)
        logits = self.model(ids, kv_cache=cache, attention_mask=mask, position_ids=positions,
                            logits_to_keep=1)[:, -1]
        next_pos = None if positions is None else positions[:, -1:] + 1
        for step in range(max_new_tokens):
            token = sample(logits, temperature, top_k, top_p, gen)
            yield token.tolist()
            if all(done) or step == max_new_tokens - 1:
                return
            logits = self.model(token[:, None], kv_cache=cache, position_ids=next_pos)[:, -1]
            if next_pos is not None:
                next_pos += 1


def _left_pad(prompts, device):
    """(B, T) ids left-padded with 0; the mask and RoPE positions, or None, None if all
    prompts have the same length."""
    T = max(len(p) for p in prompts)
    ids = torch.zeros(len(prompts), T, dtype=torch.long)
    mask = torch.zeros(len(prompts), T, dtype=torch.bool)
    for i, p in enumerate(prompts):
        ids[i, T - len(p):] = torch.tensor(p, dtype=torch.long)
        mask[i, T - len(p):] = True
    ids = ids.to(device)
    if all(len(p) == T for p in prompts):
        return ids, None, None
    positions = (mask.long().cumsum(1) - 1).clamp(min=0)
    return ids, mask.to(device), positions.to(device)


def sample(logits: torch.Tensor, temperature: float = 0.0, top_k: int | None = None,
           top_p: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """(B, V) logits -> (B,) token ids."""
    if temperature == 0.0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k and top_k < logits.shape[-1]:  # None or 0: no top-k
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        drop = probs.cumsum(dim=-1) - probs > top_p  # keep the smallest set reaching top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(1, order, sorted_logits)
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


def _cut_at_stop(text: str, stop_strings: list[str]) -> tuple[str, bool]:
    """Text before the earliest stop string, and whether one was found."""
    cuts = [i for i in (text.find(s) for s in stop_strings) if i >= 0]
    return (text[:min(cuts)], True) if cuts else (text, False)


def _stable_prefix(text: str, stop_strings: list[str]) -> str:
    """Drop a trailing incomplete character (U+FFFD) and any tail that is the beginning
    of a stop string (it may still complete into one)."""
    text = text.rstrip("\ufffd")
    hold = 0
    for s in stop_strings:
        for n in range(min(len(s) - 1, len(text)), hold, -1):
            if text.endswith(s[:n]):
                hold = n
                break
    return text[:len(text) - hold]
