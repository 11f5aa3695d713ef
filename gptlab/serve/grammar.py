"""Constrained decoding for ``response_format`` (json_object / json_schema) with xgrammar.

xgrammar (Dong et al. 2024, arXiv:2411.15100) compiles a JSON schema into a grammar over
the model's tokenizer; a ``GrammarMatcher`` per sequence fills a token bitmask before
each step, and masked logits (-inf outside the bitmask) make every sampled token keep the
text a prefix of a valid document. Special tokens other than the stop tokens are masked
too (their text, e.g. ``<|im_start|>``, would otherwise be legal inside a JSON string).

What is guaranteed, and how (a tiny model rarely closes its JSON on its own):
the *closing length* of a state is the number of tokens a fixed greedy closer needs to
reach a state where the document is complete (the grammar accepts a stop token). The
closer takes a stop token when one is allowed, else ends an open string (``"`` when ``~``,
legal only inside strings, is allowed), else prefers ``}``, ``]``, ``"``, ``0``, then the
shortest allowed token if it completes the reply, else the longest (the most of a fixed key
or tag per step: with the lowest id, one byte per step, a SmolLM2 lookup call after
``<tool_call>`` took 69 tokens instead of 28, and ``auto`` refused calls that fitted
``max_tokens=64``); in compact JSON (no free whitespace) this ends for the usual schemas.
Before every sampled token is accepted, the closing length after it is computed on a fork
of the matcher; if it would not fit in the tokens left (``max_tokens``), the closer's token is taken instead. So with
``max_tokens >= closing length of the empty document`` (checked up front, else a 400)
the reply always parses and fits the schema, whether it ended with the stop token
("stop") or ran out of tokens ("length"). Schemas the closer cannot finish within
``CLOSER_LIMIT`` tokens (e.g. a pattern with a long required minimum) are refused with a
400 at request time.

Costly schemas: compiling takes time that grows fast with nesting (arrays nested 128 deep
take 0.1 s, 500 deep 6 s, 900 deep 37 s on our CPU). So a schema is first checked for
size and depth (``check_schema``: at most ``MAX_SCHEMA_BYTES`` of JSON, ``MAX_SCHEMA_DEPTH``
levels of nested objects/arrays, ``MAX_SCHEMA_NODES`` values; else a 400), and then
compiled -- with its closing length -- in a small pool of ``compile_workers`` threads
(xgrammar releases the GIL while it compiles), given ``timeout_s`` from submission: a
schema that is not ready in time (also when it waited for a busy pool) is a 400, and a
queued compile is then dropped. The server admits a request (key, rate limits, the key's
concurrency limit) before any of this.
"""

from __future__ import annotations

import json
import os
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout

import numpy as np
import torch
import xgrammar as xgr

CLOSER_LIMIT = 512
CLOSER_CHARS = ("}", "]", '"', "0")
MAX_SCHEMA_BYTES = 32_768
MAX_SCHEMA_DEPTH = 32       # nested objects/arrays of the schema document (OpenAI allows 10 schema levels)
MAX_SCHEMA_NODES = 5_000
COMPILE_CACHE_BYTES = 64 * 2**20
COMPILE_NICE = 10           # compile threads' nice value (the rest of the server keeps its own)
MAX_PATTERN_REPEAT = 256    # a regex repeat count above this ("(a|b){1,4000}": 12 s) is refused,
MAX_PATTERN_REPEATS = 1024  # and so are a schema's patterns whose counts add up to more


# xgrammar 0.2.9 writes the characters of a string with minLength / maxLength as [^"\\\r\n]:
# raw control characters (invalid in JSON) pass, so a reply could fail to parse. Such a class is
# replaced by one without them (what its unbounded strings allow, escapes aside).
LOOSE_STRING_CHARS = '[^\\"\\\\\\r\\n]'
JSON_STRING_CHARS = '[^\\0-\\x1f\\"\\\\]'


def json_schema_ebnf(schema) -> str:
    """The grammar (EBNF text) of compact JSON fitting ``schema``, as xgrammar writes it
    (strict: no property the schema does not name), its length-bounded strings fixed."""
    grammar = xgr.Grammar.from_json_schema(json.dumps(schema), any_whitespace=False, strict_mode=True)
    return str(grammar).replace(LOOSE_STRING_CHARS, JSON_STRING_CHARS)


class GrammarError(ValueError):
    """A response_format that cannot be compiled or enforced."""


def check_schema(schema) -> None:
    """Raise GrammarError for a schema too large or too deeply nested to compile cheaply."""
    size = len(json.dumps(schema))
    if size > MAX_SCHEMA_BYTES:
        raise GrammarError(f"response_format schema is {size} bytes of JSON; this server accepts "
                           f"at most {MAX_SCHEMA_BYTES}")
    nodes, repeats, stack = 0, 0, [(schema, 1)]
    while stack:   # iterative: a deep schema must not hit Python's recursion limit here
        value, depth = stack.pop()
        nodes += 1
        if depth > MAX_SCHEMA_DEPTH and isinstance(value, (dict, list)):
            raise GrammarError(f"response_format schema nests objects/arrays more than "
                               f"{MAX_SCHEMA_DEPTH} levels deep")
        if nodes > MAX_SCHEMA_NODES:
            raise GrammarError(f"response_format schema has more than {MAX_SCHEMA_NODES} values")
        if isinstance(value, dict):
            named = value.get("patternProperties")
            for pattern in [value.get("pattern"), *(named if isinstance(named, dict) else ())]:
                if isinstance(pattern, str):
                    repeats += _repeats(pattern)
        if repeats > MAX_PATTERN_REPEATS:
            raise GrammarError(f"response_format schema: its patterns repeat more than "
                               f"{MAX_PATTERN_REPEATS} times in all (the counts in {{m,n}} add up)")
        children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
        stack.extend((c, depth + 1) for c in children)


_REPEAT = re.compile(r"\{\s*(\d+)\s*(?:,\s*(\d*)\s*)?\}")


def _repeats(pattern: str) -> int:
    """The sum of a regex's repeat counts ({m,n}: the larger); GrammarError for one count the
    compiler would expand at great cost."""
    total = 0
    for m in _REPEAT.finditer(pattern):
        count = max(int(g) for g in m.groups() if g)
        if count > MAX_PATTERN_REPEAT:
            raise GrammarError(f"response_format schema: a pattern repeat count {m.group(0)!r} is over "
                               f"this server's limit of {MAX_PATTERN_REPEAT}")
        total += count
    return total


def _lower_priority() -> None:
    """Run this pool thread at a lower CPU priority (Linux: nice is per thread), so a compile
    that runs long yields the cores to the engine workers and the event loop."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), COMPILE_NICE)
    except (AttributeError, OSError):  # not Linux, or not allowed: run at normal priority
        pass


def _clean_error(exc: Exception) -> str:
    """xgrammar's message without its log prefix ("[16:13:44] /project/cpp/x.cc:5082: "):
    the first line, at most 300 characters, no source paths."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    text = re.sub(r"^\[[\d:.]+\]\s*", "", text)
    text = re.sub(r"(?:[\w.-]*/)+[\w.-]+\.(?:cc|cpp|h|hpp|py):\d+:?\s*", "", text)
    return text[:300]


class GrammarFactory:
    """Compiles response formats for one model's tokenizer (thread-safe, cached)."""

    def __init__(self, tokenizer, vocab_size: int, stop_ids: list[int], compile_workers: int = 2,
                 timeout_s: float = 10.0):
        from transformers import PreTrainedTokenizerFast

        hf = PreTrainedTokenizerFast(tokenizer_object=tokenizer._tok)
        self.vocab_size = vocab_size
        self.stop_ids = list(stop_ids)
        self.info = xgr.TokenizerInfo.from_huggingface(hf, vocab_size=vocab_size, stop_token_ids=self.stop_ids)
        self.compiler = xgr.GrammarCompiler(self.info, max_threads=1, cache_limit_bytes=COMPILE_CACHE_BYTES)
        self.timeout_s = timeout_s
        self.pool = ThreadPoolExecutor(compile_workers, thread_name_prefix="gptlab-grammar",
                                       initializer=_lower_priority)
        specials = {i for i, t in tokenizer._tok.get_added_tokens_decoder().items() if t.special}
        self.banned_list = sorted(t for t in specials - set(self.stop_ids) if t < vocab_size)
        singles = [tokenizer.encode(ch) for ch in CLOSER_CHARS]
        self.closer_ids = self.stop_ids + [ids[0] for ids in singles if len(ids) == 1]
        # "~" is legal in compact JSON only inside a string: if it is allowed, close the string
        probe, quote = tokenizer.encode("~"), tokenizer.encode('"')
        self.in_string_probe = probe[0] if len(probe) == 1 else None
        self.quote = quote[0] if len(quote) == 1 else None
        # bytes per token id (0 past the decoded vocabulary): the closer's last resort is the longest
        lengths = [len(b) for b in self.info.decoded_vocab][:vocab_size]
        self.token_bytes = np.zeros(vocab_size, dtype=np.int32)
        self.token_bytes[:len(lengths)] = lengths

    def submit(self, response_format):
        """A future of (compiled grammar, closing length of the empty document) for
        json_object / json_schema, computed in the pool; None for plain text. Raises
        GrammarError at once for a schema over the size/depth limits. The caller waits at
        most ``timeout_s`` and then cancels it: a queued compile is dropped, a running one
        keeps its pool thread until it ends (a C++ call cannot be interrupted), so costly
        schemas take at most ``compile_workers`` cores."""
        kind = getattr(response_format, "type", None)
        if kind in (None, "text"):
            return None
        spec = response_format.json_schema if kind == "json_schema" else None
        if spec is not None and spec.schema_ is not None:
            check_schema(spec.schema_)
        return self.pool.submit(self._prepare, response_format)

    def prepare(self, response_format):
        """``submit`` and wait (for callers outside the server's event loop)."""
        future = self.submit(response_format)
        if future is None:
            return None
        try:
            return future.result(timeout=self.timeout_s)
        except FutureTimeout:
            future.cancel()
            raise GrammarError(self.timeout_message()) from None

    def timeout_message(self) -> str:
        return (f"response_format schema did not compile within {self.timeout_s:g} s "
                "(the server may be busy compiling others); use a simpler schema or retry")

    def _prepare(self, response_format):
        compiled = self.compile(response_format)
        return compiled, self.constraint(compiled).closing_length()

    def compile(self, response_format) -> xgr.CompiledGrammar | None:
        """None for plain text; a compiled grammar for json_object / json_schema (in the
        caller's thread: the server calls ``prepare``)."""
        kind = getattr(response_format, "type", None)
        if kind in (None, "text"):
            return None
        if kind == "structural_tag":  # tool calls (gptlab.serve.tools builds the tag)
            try:
                return self.compiler.compile_structural_tag(response_format.structural_tag)
            except Exception as exc:
                raise GrammarError(f"tools: the function schemas cannot be compiled: {_clean_error(exc)}") from None
        if kind == "json_object":
            schema = {"type": "object"}
        else:
            spec = response_format.json_schema
            if spec is None or spec.schema_ is None:
                raise GrammarError("response_format json_schema needs json_schema.schema")
            schema = spec.schema_
        try:
            ebnf = json_schema_ebnf(schema)
            if JSON_STRING_CHARS in ebnf:  # it had length-bounded strings: compile the fixed text
                return self.compiler.compile_grammar(ebnf)
            return self.compiler.compile_json_schema(json.dumps(schema), any_whitespace=False,
                                                     strict_mode=True)
        except Exception as exc:  # xgrammar raises RuntimeError/ValueError on bad schemas
            raise GrammarError(f"response_format schema cannot be compiled: {_clean_error(exc)}") from None

    def constraint(self, compiled) -> "Constraint":
        return Constraint(self, compiled)


def _allowed(words, t: int | None) -> bool:
    """Whether token t's bit is set in a bitmask of uint32 words."""
    return t is not None and bool((int(words[t >> 5]) >> (t & 31)) & 1)


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
            return _allowed(words, t)

        # a stop token first: where it is allowed the reply is complete (in JSON, never inside
        # a string; in a tool grammar's free text, "~" and '"' are allowed too)
        for t in self.f.stop_ids:
            if ok(t):
                return t
        if ok(self.f.in_string_probe) and ok(self.f.quote):
            return self.f.quote
        for t in self.f.closer_ids:
            if ok(t):
                return t
        allowed = np.flatnonzero(np.unpackbits(words.view(np.uint8), bitorder="little")[:self.f.vocab_size])
        if not len(allowed):
            return None
        # the shortest token if it completes the reply (the ">" that ends "</tool_call", not
        # ">'," with free text after it), else the longest
        sizes = self.f.token_bytes[allowed]
        shortest = int(allowed[np.argmin(sizes)])
        trial = matcher.fork()
        if trial.accept_token(shortest):
            after = self._bits(trial)
            if any(_allowed(after, t) for t in self.f.stop_ids):
                return shortest
        return int(allowed[np.argmax(sizes)])

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
