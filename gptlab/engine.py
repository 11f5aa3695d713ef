"""Generation with a KV cache: batching, sampling, stop tokens and strings, streaming.

``Engine(model, tokenizer)`` wraps a ``gptlab.model.GPT``. One prefill pass fills a
preallocated ``KVCache`` with the (left-padded) prompts, then each step feeds one token per
row. Sampling: greedy when ``temperature == 0``, else temperature, top-k, and nucleus
(top-p, Holtzman et al. 2019, arXiv:1904.09751) sampling from a seeded ``torch.Generator``.
Padding, sampling, stop strings and streamed text come from ``gptlab.decode``, which the
server's worker (gptlab.serve.worker) uses too.

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

Decode speed on CPU (docs/PERFORMANCE.md): for small float32 models every decode step after
the prefill runs through ``FusedDecoder`` (fused q/k/v and gate/up matmuls over a decode-time
weight copy, no module calls; ``fuse=False`` turns it off), which halves the tensor ops of a
step -- at batch 1 on a few-million-parameter model a step costs its op count, not its FLOPs.
``Engine(model, tok, weights=...)`` optionally
runs the linear layers from a weight-only quantized copy that shares every other tensor
with ``model`` (which is left untouched):

- ``"int4"``: the transformer blocks' projections as 4-bit integers with one scale and one
  offset per group of 32 input weights (asymmetric round-to-nearest; this is llama.cpp's
  Q4_1 layout, so weights imported from a Q4_1 GGUF such as ``smollm2`` are represented
  *exactly*, up to bf16 scales), through ``torch._weight_int4pack_mm_for_cpu``; the
  output head stays in the model's dtype. CPU only.
- ``"int4+int8"``: the blocks as in ``"int4"``, the output head as in ``"int8"``. With
  SmolLM2's tied 49152 x 576 head, the f32 head is two thirds of the bytes an ``"int4"``
  step reads; in int8 it is a quarter of that, and a step is ~1.4x faster (docs/PERFORMANCE.md).
  The head is then re-quantized (per row, where the GGUF has Q8_0 groups), so greedy output
  may drift from float32 where two tokens are nearly tied.
- ``"int8"``: every projection including the head as int8 with one scale per output row
  (``torch._weight_int8pack_mm``).
- ``"bf16"``: every projection's weights in bfloat16.

The matmuls of all three take bfloat16 activations (the fast kernels need them); norms,
RoPE, attention, the KV cache and the logits stay in the model's dtype. Their error
against the full-precision model is measured in docs/PERFORMANCE.md.
"""

from __future__ import annotations

import copy
import functools
import time
import warnings
from collections.abc import Iterator
from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from gptlab.decode import TextStream, cut_at_stop, left_pad, mask_rows, sample
from gptlab.model import GPT, KVCache, rope_tables

WEIGHT_MODES = (None, "int4", "int4+int8", "int8", "bf16")


# fuse=None fuses models whose q/k/v + gate/up copy is at most this (SmolLM2-135M: ~270 MB):
# the scripted step is ~25% faster at batch 1 there (docs/PERFORMANCE.md) and never waits
# for the GIL between ops; a larger model's step is bound by reading weights, and its copy
# would mostly cost memory
FUSE_AUTO_MAX_BYTES = 512 * 2**20
# dtypes FusedDecoder runs in (the model's, one throughout)
FUSED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# models whose fused copy is at most this have a step that is per-op overhead: one torch thread
ONE_THREAD_MAX_BYTES = 64 * 2**20


class Engine:
    """``weights``: None (the model as it is), or "int4" / "int4+int8" / "int8" / "bf16" to decode from a
    weight-only quantized copy of the linear layers (see the module docstring).

    ``fuse``: decode steps through ``FusedDecoder`` (a ``GPT`` in one of ``FUSED_DTYPES``
    with ``weights=None`` only). None = when its weight copy is at most ``FUSE_AUTO_MAX_BYTES`` (512 MiB)."""

    def __init__(self, model: GPT, tokenizer=None, weights: str | None = None, fuse: bool | None = None):
        self.model = model if weights is None else quantize_for_decode(model, weights)
        self.tokenizer = tokenizer
        self.weights = weights
        # decode steps through fused weights (None: through model.forward, e.g. quantized)
        can = weights is None and FusedDecoder.supports(model)
        if fuse is None:
            param = next(model.parameters())
            fuse = (can and FusedDecoder.copy_bytes(model) <= FUSE_AUTO_MAX_BYTES
                    and FusedDecoder.auto_ok(param.dtype, param.device))
        elif fuse and not can:
            raise ValueError("fuse=True needs a gptlab GPT in float32, bfloat16 or float16 and weights=None")
        self.fused = FusedDecoder(model) if fuse else None
        self.last_finish_reasons: list[str] = []
        # wall seconds of the last call: the prompt pass (prefill, up to the first token's
        # logits) and the remaining decode steps
        self.last_prefill_s = self.last_decode_s = 0.0

    # ------------------------------------------------------------------ public API

    def generate(self, prompts: list[list[int]], max_new_tokens: int = 256, temperature: float = 0.0,
                 top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
                 stop_token_ids=None, stop_strings=None, constraints=None) -> list[list[int]]:
        """Complete each prompt (a list of token ids); returns the completion ids only.

        ``constraints``: one per prompt (or None), each with ``mask_logits(logits)`` and
        ``choose(token, budget_left)``, as gptlab.serve.grammar.Constraint has: a grammar the
        row's tokens must follow (the server's tool-call and JSON decoding, here for evals)."""
        self._check(temperature, stop_strings)
        if constraints is not None and len(constraints) != len(prompts):
            raise ValueError(f"{len(constraints)} constraints for {len(prompts)} prompts")
        stops, stop_strings = self._stop_ids(stop_token_ids), list(stop_strings or [])
        out = [[] for _ in prompts]
        done = [False] * len(prompts)
        reasons = ["length"] * len(prompts)
        for tokens in self._steps(prompts, max_new_tokens, temperature, top_k, top_p, seed, done,
                                  constraints):
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
               stop_token_ids=None, stop_strings=None, constraint=None) -> Iterator[str]:
        """Yield the completion of one prompt as text deltas (whole characters only);
        ``constraint``: a grammar for the reply, as in ``generate``."""
        self._check(temperature, stop_strings, need_tokenizer=True)
        stops = self._stop_ids(stop_token_ids)
        text = TextStream(self.tokenizer.decode, stop_strings or [])
        done = [False]
        self.last_finish_reasons = ["length"]
        for (t,) in self._steps([prompt_ids], max_new_tokens, temperature, top_k, top_p, seed, done,
                                None if constraint is None else [constraint]):
            if t in stops:
                self.last_finish_reasons = ["stop"]
                break
            delta, hit = text.push(t)
            if delta:
                yield delta
            if hit:
                self.last_finish_reasons = ["stop"]
                done[0] = True
                return
        if tail := text.flush():  # what was held back (e.g. an unfinished character)
            yield tail

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
        before, _ = cut_at_stop(self.tokenizer.decode(ids), stop_strings)
        while ids and not before.startswith(self.tokenizer.decode(ids)):
            ids.pop()

    @torch.inference_mode()
    def _steps(self, prompts, max_new_tokens, temperature, top_k, top_p, seed, done,
               constraints=None) -> Iterator[list[int]]:
        """Yield one new token per row per step until max_new_tokens or all rows ``done``
        (a list the caller updates)."""
        if not prompts or any(len(p) == 0 for p in prompts):
            raise ValueError("every prompt needs at least one token")
        if max_new_tokens <= 0:
            return
        param = next(self.model.parameters())
        gen = None if seed is None else torch.Generator(param.device).manual_seed(seed)
        ids, mask, positions = left_pad(prompts, param.device)
        cache = KVCache(self.model.config, len(prompts), ids.shape[1] + max_new_tokens,
                        device=param.device, dtype=_compute_dtype(self.model, param))
        self.last_prefill_s = self.last_decode_s = 0.0
        t = time.perf_counter()
        fused = self.fused if self.fused is not None and self.fused.refresh() else None
        if fused is not None:
            fused_state = fused.start(cache)
        logits = self.model(ids, kv_cache=cache, attention_mask=mask, position_ids=positions,
                            logits_to_keep=1)[:, -1]
        next_pos = None if positions is None else positions[:, -1:] + 1
        for step in range(max_new_tokens):
            if constraints is None:
                token = sample(logits, temperature, top_k, top_p, gen)
            else:
                token = _constrained(logits, constraints, done, max_new_tokens - step,
                                     lambda x: sample(x, temperature, top_k, top_p, gen))
            tokens = token.tolist()
            if step == 0:  # time to the first token
                self.last_prefill_s = time.perf_counter() - t
            else:
                self.last_decode_s += time.perf_counter() - t
            yield tokens
            if all(done) or step == max_new_tokens - 1:
                return
            t = time.perf_counter()
            if fused is not None:
                row_pos = None if next_pos is None else next_pos[:, 0]
                logits = fused.step(fused_state, token, cache, row_pos)
            else:
                logits = self.model(token[:, None], kv_cache=cache, position_ids=next_pos)[:, -1]
            if next_pos is not None:
                next_pos += 1


def _constrained(logits, constraints, done, budget_left: int, pick) -> torch.Tensor:
    """One token per row where each open row with a constraint samples among what its
    grammar allows and the constraint takes it (or its closer's token, when the document
    would no longer close within ``budget_left``)."""
    open_rows = [None if done[i] else c for i, c in enumerate(constraints)]
    if any(c is not None for c in open_rows):
        logits = logits.float().clone()
        mask_rows(logits, open_rows)
    token = pick(logits)
    for i, c in enumerate(open_rows):
        if c is not None:
            token[i] = c.choose(int(token[i]), budget_left)
    return token


# ----------------------------------------------------------------------------- fused decode step


class FusedDecoder:
    """One decode step (one new token per row) of a plain ``GPT`` (float32, bfloat16 or
    float16, one dtype throughout), without module calls.

    Batch-1 decode of a small model is per-op overhead, not arithmetic, so the step runs
    about half the tensor ops of ``GPT.forward``: the q/k/v and gate/up projections each as
    one matmul over weights concatenated here (a decode-time copy, the model keeps its
    Hugging Face names), the attention scale folded into the query rows, RoPE as one small
    matmul per layer with a rotation matrix built once per step, attention as two matmuls
    and a softmax over the cache (GQA by folding each K/V group's query heads), and the
    residual adds fused into the output projections (``addmm``). The copy costs the size
    of the q/k/v and gate/up weights and is rebuilt when any model weight changes (an
    optimizer step, ``load_state_dict``), so an engine over a model in training stays exact.
    """

    def __init__(self, model: GPT):
        self.model, self.layers, self._key, self._table = model, [], None, None
        self._weight_lists: list = []
        c = model.config
        self.H, self.Kv, self.hd = c.num_attention_heads, c.num_key_value_heads, c.head_dim
        self.I, self.eps = c.intermediate_size, c.rms_norm_eps

    @staticmethod
    def supports(model) -> bool:
        """Plain GPTs in one of ``FUSED_DTYPES`` throughout: not a subclass with its own
        forward, every projection a plain ``nn.Linear`` (not a LoRA or quantized wrapper), no
        forward hooks anywhere."""
        if not (isinstance(model, GPT) and type(model).forward is GPT.forward):
            return False
        dtypes = {p.dtype for p in model.parameters()}
        if len(dtypes) != 1 or dtypes.pop() not in FUSED_DTYPES:
            return False
        names = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head")
        for name, m in model.named_modules():
            if m._forward_hooks or m._forward_pre_hooks:
                return False
            if name.endswith(names) and type(m) is not nn.Linear:
                return False
        return True

    @staticmethod
    def auto_ok(dtype: torch.dtype, device) -> bool:
        """Whether to fuse by default (``fuse=None``): float32 anywhere; bfloat16 / float16
        where it was measured, on CPUs (docs/PERFORMANCE.md); on a GPU they keep
        model.forward unless asked."""
        return dtype == torch.float32 or torch.device(device).type == "cpu"

    @staticmethod
    def copy_bytes(model: GPT) -> int:
        """Bytes of the fused copy: the q/k/v and gate/up weights of every block."""
        return sum(m.weight.numel() * m.weight.element_size() for name, m in model.named_modules()
                       if name.endswith(("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj")))

    def refresh(self) -> bool:
        """(Re)build the fused weights if any parameter was replaced or written in place;
        False if the model no longer qualifies (e.g. adapters were injected since)."""
        key = [(p.data_ptr(), _version(p)) for p in self.model.parameters()]
        if key != self._key:
            if not self.supports(self.model):
                return False
            self._build()
            self._key = key
        return True

    def _build(self) -> None:
        scale, layers = self.hd ** -0.5, []
        with torch.no_grad():
            for blk in self.model.model.layers:
                a, f = blk.self_attn, blk.mlp
                wqkv = torch.cat([a.q_proj.weight * scale, a.k_proj.weight, a.v_proj.weight])
                wgu = torch.cat([f.gate_proj.weight, f.up_proj.weight])
                layers.append((  # transposed views (x @ w_t); the norm weights folded in
                    (wqkv * blk.input_layernorm.weight).t(), a.o_proj.weight.t(),
                    (wgu * blk.post_attention_layernorm.weight).t(), f.down_proj.weight.t(),
                ))
            half = self.hd // 2
            j = torch.arange(half)
            # flat indices of the rotation matrix M (x @ M = RoPE(x)) that hold c, c, s, -s
            self._rot_idx = torch.cat([j * self.hd + j, (j + half) * self.hd + j + half,
                                       j * self.hd + j + half, (j + half) * self.hd + j])
        self.layers = layers
        self._weight_lists = [list(w) for w in zip(*layers)]  # per weight kind, over the layers

    def _rope_table(self, length: int, dev, dtype) -> torch.Tensor:
        """(>= length, hd) rows [c, c, s, -s] per position. Kept, and regrown only for a longer
        cache: a server starts a step's state at every join and retire, and a row's values do
        not depend on the table's length."""
        t = self._table
        if t is None or t.shape[0] < length or t.device != dev or t.dtype != dtype:
            cos, sin = rope_tables(self.hd, self.model.config.rope_theta, length, dev)
            c, s = cos[:, :self.hd // 2], sin[:, :self.hd // 2]
            self._table = t = torch.cat([c, c, s, -s], dim=-1).to(dtype)
        return t

    def start(self, cache: KVCache) -> tuple:
        """Per-call state for ``step``: the [c, c, s, -s] RoPE table for every cache slot, a
        rotation-matrix buffer, each layer's weights and cache views."""
        dev, dtype = cache.k.device, cache.k.dtype
        table = self._rope_table(cache.max_len, dev, dtype)
        # only rot_idx is ever written
        rot = torch.zeros(cache.batch_size, self.hd * self.hd, device=dev, dtype=dtype)
        # per weight kind one list over the layers (the scripted loop takes lists), then each
        # layer's key and value cache
        lists = self._weight_lists + [list(cache.k), list(cache.v)]
        eps = torch.full((1, 1), self.eps, device=dev)
        return table, rot, self._rot_idx.to(dev), lists, eps

    def step(self, state: tuple, token: torch.Tensor, cache: KVCache,
             positions: torch.Tensor | None) -> torch.Tensor:
        """token (B,) at RoPE positions ``positions`` (B,) (default: the cache slot) -> logits
        (B, V); ``state`` from ``start(cache)``."""
        m, B = self.model, token.shape[0]
        table, rot, rot_idx, layers, eps = state
        H, Kv, hd, I = self.H, self.Kv, self.hd, self.I
        pos = cache.pos
        L = pos + 1
        if L > cache.max_len:
            raise ValueError(f"KV cache full: {L} > max_len {cache.max_len}")
        rot[:, rot_idx] = table[pos if positions is None else positions]
        rot3 = rot.view(B, hd, hd)
        if cache.valid is not None:  # every row gets a real token in this slot
            cache.valid[:, pos] = True
        masked = None if cache.valid is None else ~cache.valid[:, None, None, :L]
        x = F.embedding(token, m.model.embed_tokens.weight)
        # the plain TorchScript interpreter: its profiling optimizer would re-specialize the
        # graph as the batch size and cache length change from step to step
        with torch.jit.optimized_execution(False):
            x = _blocks_fn()(x, *layers, rot3, masked, eps, pos, H, Kv, hd, I)
        cache.pos = L
        n = m.model.norm.weight
        return F.linear(_rms(x, eps).mul_(n), m.lm_head.weight)

    def prefill(self, cache: KVCache, ids: torch.Tensor) -> torch.Tensor:
        """Feed ``ids`` (T,) to a one-row ``cache`` at slots pos..pos+T-1 (RoPE positions the
        same) and return the last token's logits (1, V): the prompt pass of one request,
        scripted like ``step`` (no GIL between its ops). ``start`` is not needed."""
        m, T, pos = self.model, ids.shape[0], cache.pos
        if cache.batch_size != 1:
            raise ValueError(f"prefill takes a one-row cache, got {cache.batch_size} rows")
        if pos + T > cache.max_len:
            raise ValueError(f"KV cache full: {pos + T} > max_len {cache.max_len}")
        dev, dtype, hd = cache.k.device, cache.k.dtype, self.hd
        rot = torch.zeros(T, hd * hd, device=dev, dtype=dtype)
        rot[:, self._rot_idx.to(dev)] = self._rope_table(pos + T, dev, dtype)[pos:pos + T]
        # token t (at slot pos + t) may look at slots <= pos + t, and at no padding slot
        slots = torch.arange(pos + T, device=dev)
        masked = slots[None, :] > (pos + torch.arange(T, device=dev))[:, None]
        if cache.valid is not None:
            cache.valid[0, pos:pos + T] = True
            masked = masked | ~cache.valid[0, :pos + T][None, :]
        x = F.embedding(ids, m.model.embed_tokens.weight)
        eps = torch.full((1, 1), self.eps, device=dev)
        with torch.jit.optimized_execution(False):
            x = _prefill_blocks_fn()(x, *self._weight_lists, list(cache.k), list(cache.v), rot.view(T, hd, hd),
                                     masked, eps, pos, self.H, self.Kv, hd, self.I)
        cache.pos = pos + T
        return F.linear(_rms(x[-1:], eps).mul_(m.model.norm.weight), m.lm_head.weight)


def _prefill_blocks(x: torch.Tensor, wqkv: List[torch.Tensor], wo: List[torch.Tensor], wgu: List[torch.Tensor],
                    wd: List[torch.Tensor], ks: List[torch.Tensor], vs: List[torch.Tensor], rot3: torch.Tensor,
                    masked: torch.Tensor, eps: torch.Tensor, pos: int, H: int, Kv: int, hd: int,
                    I: int) -> torch.Tensor:
    """``FusedDecoder.prefill``'s pass through the blocks: the T tokens (T, d) of one cache
    row, fed at slots pos..pos+T-1, are the matmuls' rows (as a decode step's batch rows are);
    attention is causal over that row's cache. ``masked`` (T, pos+T): True where token t may
    not look."""
    T = x.shape[0]
    L, G = pos + T, H // Kv
    for i in range(len(wqkv)):
        k, v = ks[i], vs[i]
        qkv = torch.mm(_rms(x, eps), wqkv[i]).view(T, H + 2 * Kv, hd)
        qk = torch.bmm(qkv[:, :H + Kv], rot3)
        k[0, :, pos:L] = qk[:, H:].transpose(0, 1)
        v[0, :, pos:L] = qkv[:, H + Kv:].transpose(0, 1)
        q = qk[:, :H].reshape(T, Kv, G, hd).permute(1, 2, 0, 3)        # (Kv, G, T, hd)
        att = torch.matmul(q, k[0, :, :L].unsqueeze(1).transpose(-1, -2))  # (Kv, G, T, L)
        att.masked_fill_(masked, float("-inf"))
        y = torch.matmul(att.softmax(-1), v[0, :, :L].unsqueeze(1))      # (Kv, G, T, hd)
        x = torch.addmm(x, y.permute(2, 0, 1, 3).reshape(T, H * hd), wo[i])
        gu = torch.mm(_rms(x, eps), wgu[i])
        x = torch.addmm(x, F.silu(gu[:, :I]) * gu[:, I:], wd[i])
    return x


def _blocks(x: torch.Tensor, wqkv: List[torch.Tensor], wo: List[torch.Tensor], wgu: List[torch.Tensor],
            wd: List[torch.Tensor], ks: List[torch.Tensor], vs: List[torch.Tensor], rot3: torch.Tensor,
            masked: Optional[torch.Tensor], eps: torch.Tensor, pos: int, H: int, Kv: int, hd: int,
            I: int) -> torch.Tensor:
    """``FusedDecoder.step``'s pass through the blocks: (B, d) -> (B, d), writing each layer's
    key/value at cache slot ``pos``. Weights are transposed, norm weights folded in."""
    B, L = x.shape[0], pos + 1
    for i in range(len(wqkv)):
        k, v = ks[i], vs[i]
        qkv = torch.mm(_rms(x, eps), wqkv[i]).view(B, H + 2 * Kv, hd)
        qk = torch.bmm(qkv[:, :H + Kv], rot3)  # RoPE on q and k heads at once
        k.select(2, pos).copy_(qk[:, H:])
        v.select(2, pos).copy_(qkv[:, H + Kv:])
        att = torch.matmul(qk[:, :H].view(B, Kv, H // Kv, hd), k[:, :, :L].transpose(-1, -2))
        if masked is not None:
            att.masked_fill_(masked, float("-inf"))
        y = torch.matmul(att.softmax(-1), v[:, :, :L]).reshape(B, H * hd)
        x = torch.addmm(x, y, wo[i])
        gu = torch.mm(_rms(x, eps), wgu[i])
        x = torch.addmm(x, F.silu(gu[:, :I]) * gu[:, I:], wd[i])
    return x


@functools.cache
def _scripted(fn):
    """``fn`` compiled by TorchScript, else ``fn`` itself. Why TorchScript, which torch marks
    deprecated: a scripted call runs all ~450 ops of a step in C++ without taking the GIL
    between them. From Python each op gives the GIL back and must win it again, and while
    another thread runs Python (the server's event loop answering a burst of requests)
    every one of those waits lasts up to the switch interval: a decode step went from 45 ms
    to 3.6 s beside a busy thread (docs/PERFORMANCE.md, "Serving under attack"). Scripted,
    the loop is also ~1/3 faster alone (less per-op dispatch)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return torch.jit.script(fn)
    except Exception:  # TorchScript gone or failing on this build: the same ops from Python
        return fn


def _blocks_fn():
    """The decode step's blocks (``_blocks``), scripted when TorchScript can."""
    return _scripted(_blocks)


def _prefill_blocks_fn():
    """The prompt pass's blocks (``_prefill_blocks``), scripted when TorchScript can."""
    return _scripted(_prefill_blocks)


def _version(t: torch.Tensor) -> int:
    """In-place write counter; -1 for inference tensors, which have none (they may be
    written in place only inside inference mode, so weights made there are built once)."""
    return -1 if t.is_inference() else t._version


def _rms(x, eps):
    """x / sqrt(mean(x^2) + eps) over the last axis (RMSNorm without its weight), (B, d);
    eps a float32 (1, 1) tensor. The norm is taken in float32 whatever x's dtype (as
    ``gptlab.model.RMSNorm`` does). Three kernels: half the CPU time of F.rms_norm at batch 1."""
    n = torch.linalg.vector_norm(x, dim=-1, keepdim=True, dtype=torch.float32)
    return x * torch.addcmul(eps, n, n, value=1 / x.shape[-1]).rsqrt_().to(x.dtype)


def _compute_dtype(model, param) -> torch.dtype:
    """The dtype activations (and so the KV cache) have: the embedding table's."""
    emb = getattr(getattr(model, "model", None), "embed_tokens", None)
    return emb.weight.dtype if emb is not None else param.dtype


# ----------------------------------------------------------------------------- weight-only quantization


class Int4Linear(nn.Module):
    """y = x @ dequant(W).T with W (N, K) stored as 4-bit codes q in [0, 15], one bf16 scale s
    and offset m per group of ``group`` inputs: w = s * q + m (llama.cpp's Q4_1)."""

    def __init__(self, weight: torch.Tensor, group: int = 32):
        super().__init__()
        w = weight.detach().float()
        N, K = w.shape
        wg = w.view(N, K // group, group)
        lo, hi = wg.amin(-1), wg.amax(-1)
        scale = ((hi - lo) / 15).clamp(min=1e-12)
        q = torch.round((wg - lo[..., None]) / scale[..., None]).clamp_(0, 15).view(N, K)
        self.group, self.out_features = group, N
        self.register_buffer("packed", torch._convert_weight_to_int4pack_for_cpu(q.to(torch.int32), 1))
        # the kernel computes (q - 8) * scale + zero
        self.register_buffer("scales_zeros", torch.stack([scale, lo + 8 * scale], -1)
                             .transpose(0, 1).contiguous().to(torch.bfloat16))

    def forward(self, x):
        y = torch._weight_int4pack_mm_for_cpu(x.reshape(-1, x.shape[-1]).to(torch.bfloat16), self.packed,
                                              self.group, self.scales_zeros)
        return y.view(*x.shape[:-1], self.out_features).to(x.dtype)


class Int8Linear(nn.Module):
    """y = x @ (s * q).T with q (N, K) int8 and one scale per output row (symmetric)."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        w = weight.detach().float()
        scale = w.abs().amax(1).clamp(min=1e-12) / 127
        self.register_buffer("q", torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8))
        self.register_buffer("scale", scale.to(torch.bfloat16))

    def forward(self, x):
        y = torch._weight_int8pack_mm(x.reshape(-1, x.shape[-1]).to(torch.bfloat16), self.q, self.scale)
        return y.view(*x.shape[:-1], self.q.shape[0]).to(x.dtype)


class BF16Linear(nn.Module):
    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.register_buffer("weight", weight.detach().to(torch.bfloat16))

    def forward(self, x):
        return F.linear(x.to(torch.bfloat16), self.weight).to(x.dtype)


def quantize_for_decode(model: GPT, weights: str, group: int = 32) -> GPT:
    """A copy of ``model`` for inference whose ``nn.Linear`` layers are replaced by
    weight-only quantized ones (``weights``: "int4", "int4+int8", "int8" or "bf16"; see the module
    docstring). Everything else (embeddings, norms) is shared with ``model``, not copied.
    Under "int4" the output head, and any projection whose input size is not a multiple of
    ``group``, keep their original weights."""
    if weights not in WEIGHT_MODES[1:]:
        raise ValueError(f"weights must be one of {WEIGHT_MODES}, got {weights!r}")
    if next(model.parameters()).device.type != "cpu" and weights != "bf16":
        raise ValueError(f"weights={weights!r} uses CPU kernels; move the model to the CPU or use 'bf16'")
    memo = {id(t): t for t in [*model.parameters(), *model.buffers()]}
    out = copy.deepcopy(model, memo).eval()
    for parent in list(out.modules()):
        for name, child in list(parent.named_children()):
            if not isinstance(child, nn.Linear):
                continue
            if weights.startswith("int4"):
                if name == "lm_head" and weights == "int4+int8":
                    new = Int8Linear(child.weight)
                elif name == "lm_head" or child.in_features % group:
                    continue
                else:
                    new = Int4Linear(child.weight, group)
            else:
                new = Int8Linear(child.weight) if weights == "int8" else BF16Linear(child.weight)
            setattr(parent, name, new)
    return out
