"""Constrained decoding for ``response_format`` (json_object / json_schema) with xgrammar.

xgrammar (Dong et al. 2024, arXiv:2411.15100) compiles a JSON schema into a grammar over
the model's tokenizer; a ``GrammarMatcher`` per sequence fills a token bitmask before
each step, and masked logits (-inf outside the bitmask) make every sampled token keep the
text a prefix of a valid document. Special tokens other than the stop tokens are masked
too (their text, e.g. ``<|im_start|>``, would otherwise be legal inside a JSON string).

What is guaranteed, and how (a tiny model rarely closes its JSON on its own):
the *closing length* of a state is the number of tokens a fixed greedy closer needs to
reach a state where the document is complete (the grammar accepts a stop token). The
closer ends an open string first (``"`` when ``~``, legal only inside strings, is
allowed), else prefers a stop token, then ``}``, ``]``, ``"``, ``0``, then the lowest
allowed id; in compact JSON (no free whitespace) this ends for the usual schemas. Before every sampled token is
accepted, the closing length after it is computed on a fork of the matcher; if it would
not fit in the tokens left (``max_tokens``), the closer's token is taken instead. So with
``max_tokens >= closing length of the empty document`` (checked up front, else a 400)
the reply always parses and fits the schema, whether it ended with the stop token
("stop") or ran out of tokens ("length"). Schemas the closer cannot finish within
``CLOSER_LIMIT`` tokens (e.g. a pattern with a long required minimum) are refused with a
400 at request time.
"""

from __future__ import annotations

import json

import numpy as np
import torch
import xgrammar as xgr

CLOSER_LIMIT = 512
CLOSER_CHARS = ("}", "]", '"', "0")


class GrammarError(ValueError):
    """A response_format that cannot be compiled or enforced."""


class GrammarFactory:
    """Compiles response formats for one model's tokenizer (thread-safe, cached)."""

    def __init__(self, tokenizer, vocab_size: int, stop_ids: list[int]):
        from transformers import PreTrainedTokenizerFast

        hf = PreTrainedTokenizerFast(tokenizer_object=tokenizer._tok)
        self.vocab_size = vocab_size
        self.stop_ids = list(stop_ids)
        self.info = xgr.TokenizerInfo.from_huggingface(hf, vocab_size=vocab_size, stop_token_ids=self.stop_ids)
        self.compiler = xgr.GrammarCompiler(self.info, max_threads=1)
        specials = {i for i, t in tokenizer._tok.get_added_tokens_decoder().items() if t.special}
        self.banned_list = sorted(t for t in specials - set(self.stop_ids) if t < vocab_size)
        singles = [tokenizer.encode(ch) for ch in CLOSER_CHARS]
        self.closer_ids = self.stop_ids + [ids[0] for ids in singles if len(ids) == 1]
        # "~" is legal in compact JSON only inside a string: if it is allowed, close the string
        probe, quote = tokenizer.encode("~"), tokenizer.encode('"')
        self.in_string_probe = probe[0] if len(probe) == 1 else None
        self.quote = quote[0] if len(quote) == 1 else None

    def compile(self, response_format) -> xgr.CompiledGrammar | None:
        """None for plain text; a compiled grammar for json_object / json_schema."""
        kind = getattr(response_format, "type", None)
        if kind in (None, "text"):
            return None
        if kind == "json_object":
            schema = {"type": "object"}
        else:
            spec = response_format.json_schema
            if spec is None or spec.schema_ is None:
                raise GrammarError("response_format json_schema needs json_schema.schema")
            schema = spec.schema_
        try:
            return self.compiler.compile_json_schema(json.dumps(schema), any_whitespace=False,
                                                     strict_mode=True)
        except Exception as exc:  # xgrammar raises RuntimeError/ValueError on bad schemas
            raise GrammarError(f"response_format schema cannot be compiled: {str(exc)[:300]}") from exc

    def constraint(self, compiled) -> "Constraint":
        return Constraint(self, compiled)


class Constraint:
    """One sequence's grammar state."""

    def __init__(self, factory: GrammarFactory, compiled):
        self.f = factory
        self.matcher = xgr.GrammarMatcher(compiled)
        self._mask = xgr.allocate_token_bitmask(1, factory.vocab_size)

    def _bits(self, matcher) -> "np.ndarray":
        """The next-token bitmask as uint32 words (bit t = token t allowed), specials cleared."""
        matcher.fill_next_token_bitmask(self._mask)
        words = self._mask[0].numpy().view(np.uint32).copy()
        for t in self.f.banned_list:
            words[t >> 5] &= ~np.uint32(1 << (t & 31))
        return words

    def mask_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """logits (V,) with disallowed tokens at -inf (a new tensor)."""
        words = torch.from_numpy(self._bits(self.matcher).view(np.int32)).to(logits.device)
        out = logits.clone()[None]
        xgr.apply_token_bitmask_inplace(out, words[None], vocab_size=logits.shape[-1])
        return out[0]

    def _closer_token(self, matcher) -> int | None:
        words = self._bits(matcher)

        def ok(t):
            return t is not None and (int(words[t >> 5]) >> (t & 31)) & 1

        if ok(self.f.in_string_probe) and ok(self.f.quote):
            return self.f.quote
        for t in self.f.closer_ids:
            if ok(t):
                return t
        nz = np.flatnonzero(words)
        if not len(nz):
            return None
        w = int(words[nz[0]])
        return int(nz[0]) * 32 + ((w & -w).bit_length() - 1)

    def closing_length(self, matcher=None) -> int | None:
        """Tokens the greedy closer needs before a stop token is allowed (None: gave up)."""
        m = (matcher or self.matcher).fork()
        for n in range(CLOSER_LIMIT + 1):
            t = self._closer_token(m)
            if t is None:
                return None
            if t in self.f.stop_ids:
                return n
            if not m.accept_token(t):
                return None
        return None

    def choose(self, sampled: int, budget_left: int) -> int:
        """Accept ``sampled`` if the document can still be closed in ``budget_left - 1``
        tokens after it, else the closer's token. Returns the token taken (accepted)."""
        if sampled not in self.f.stop_ids:
            trial = self.matcher.fork()
            if trial.accept_token(sampled):
                need = self.closing_length(trial)
                if need is not None and need <= budget_left - 1:
                    self.matcher.accept_token(sampled)
                    return sampled
        else:
            if self.matcher.accept_token(sampled):
                return sampled
        t = self._closer_token(self.matcher)
        if t is None:
            raise GrammarError("the grammar reached a dead end")
        self.matcher.accept_token(t)
        return t
