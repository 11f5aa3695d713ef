"""Continuous batching: one engine worker thread per model.

The worker owns one batched KV cache (``gptlab.model.KVCache``: left padded, a per-row
``valid`` mask, per-row RoPE positions). Its loop, in the style of Orca (Yu et al. 2022,
"Orca: a distributed serving system for transformer-based generative models"):

1. admit: take requests from a bounded FIFO queue while the batch has room (a request
   with ``n`` choices takes ``n`` rows); prefill their prompts together in a fresh cache,
   sample each new row's first token (time to first token = queue wait + one prefill),
   and *join* that cache to the running one: both are right-aligned to the same write
   position, the shorter one's left side marked invalid, and stacked along the batch;
2. drop rows whose client went away, whose request timed out, or whose model was disabled;
3. decode one token for every active row in one batched forward pass;
4. retire rows that finished (stop token, stop string, ``max_tokens``), and trim cache
   columns that no remaining row uses.

So a new request waits at most one decode step plus its own prefill, and every admitted
request gets one token per step until it ends: none can starve the others. Results go
back through ``Job.emit``; jobs that name an asyncio ``loop`` get their events delivered
on that loop's thread, with one ``loop.call_soon_threadsafe`` per step for all of them (a
self-pipe write per request per step cost a quarter of the worker's time at batch 8).
"""

from __future__ import annotations

import logging
import os
import queue
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from gptlab.decode import TextStream, left_pad, mask_rows, sample_rows
from gptlab.engine import FUSED_DTYPES, ONE_THREAD_MAX_BYTES, FusedDecoder
from gptlab.model import KVCache
from gptlab.serve.batch_cache import (HEADROOM, SPARE_ROWS, borrowed, drop_rows, join_rows, rows_view,
                                      select_rows, unused_columns, valid_mask)
from gptlab.serve.fairqueue import FairQueue
from gptlab.serve.prefix_cache import PrefixCache

log = logging.getLogger("gptlab.serve")


@dataclass
class Job:
    """One API request: ``n`` completions of one prompt."""

    prompt_ids: list[int]
    max_tokens: int
    emit: Callable[[list[tuple]], None]  # receives a list of events (see below)
    n: int = 1
    temperature: float = 1.0
    top_p: float | None = None
    seed: int | None = None
    stop_strings: list[str] = field(default_factory=list)
    logprobs: bool = False
    top_logprobs: int = 0
    grammar: object = None          # an xgrammar CompiledGrammar, or None
    timeout_s: float = 600.0
    loop: object = None             # an asyncio loop: call emit on its thread (else on the worker's)
    ignore_eos: bool = False        # run to max_tokens (benchmarks); grammar rows still stop
    cancelled: bool = False         # set by the server when the client disconnects
    tenant: str = ""                # whose prefix-cache partition it reads and fills (the API key)
    client: str = ""                # the caller's address: its fair-queue lane when tenant is ""
    # filled by the worker
    enqueued_at: float = field(default_factory=time.monotonic)
    first_token_at: float | None = None
    cached_tokens: int = 0          # prompt tokens whose keys/values came from the prefix cache


@dataclass
class Row:
    job: Job
    index: int
    pos: int                     # RoPE position of the next token fed
    gen: random.Random | None      # the row's own generator when its job has a seed
    constraint: object = None
    text: TextStream | None = None  # the completion's ids and the text sent so far
    last: int = 0
    pending_lp: list = field(default_factory=list)
    done: bool = False
    cut: bool = False              # the grammar's closer ended the reply to fit max_tokens

    @property
    def ids(self) -> list[int]:
        return self.text.ids


# events sent through Job.emit:
#   ("delta", index, text, logprob_entries_or_None)
#   ("finish", index, finish_reason, completion_tokens)
#   ("error", status, message, code)


class Worker:
    """Continuous-batching generation for one model, on its own thread.

    ``fuse``: decode steps through ``FusedDecoder`` (None: for bfloat16 and float16 models,
    and float32 models whose fused copy is at most ``ONE_THREAD_MAX_BYTES``: see ``plan``). ``threads``:
    torch CPU threads of this worker's matmuls; None means 1 for those small models (a
    multi-threaded matmul of that size costs more in synchronization than it saves, and much
    more on a busy machine) and ``default_threads()`` for the others."""

    def __init__(self, model, tokenizer, stop_ids, *, name: str = "model", max_batch: int = 16,
                 max_queue: int = 64, grammar_factory=None, threads: int | None = None,
                 fuse: bool | None = None, prefix_cache_bytes: int = 256 * 2**20):
        self.model, self.tok, self.name = model, tokenizer, name
        self.stop_ids = set(stop_ids)
        self.max_batch, self.grammar = max_batch, grammar_factory
        fuse, self.threads = self.plan(model, threads, fuse)
        self.fused = FusedDecoder(model) if fuse else None
        self._fused_state = None  # (the cache it was built for, FusedDecoder.start(cache))
        self.prefix_cache = PrefixCache(prefix_cache_bytes) if prefix_cache_bytes > 0 else None
        # waiting jobs are taken round-robin across keys (addresses with auth off), so one
        # key's flood cannot put every other key's request behind all of its own
        self.queue: FairQueue[Job] = FairQueue(max_queue, key=lambda job: job.tenant or job.client)
        self.rows: list[Row] = []
        self.cache: KVCache | None = None
        self.waiting: Job | None = None   # the head of the queue, when it did not fit yet
        self.disabled = False
        self._stop = threading.Event()
        self.steps = 0
        param = next(model.parameters())
        self.device = param.device
        emb = model.model.embed_tokens.weight
        self.dtype = emb.dtype
        self.thread = threading.Thread(target=self._run, name=f"gptlab-worker-{name}", daemon=True)

    @staticmethod
    def plan(model, threads: int | None = None, fuse: bool | None = None,
             dtype: torch.dtype | None = None) -> tuple[bool, int]:
        """(fuse, threads) a worker uses for ``model`` given the constructor's arguments;
        ``dtype``: plan for the model as it would be in that dtype (the server's choice of
        dtype times each candidate as the worker would run it)."""
        dtype = dtype or next(model.parameters()).dtype
        can_fuse = FusedDecoder.supports(model) and dtype in FUSED_DTYPES
        # the copy's size in float32 (as the bound was measured), whatever the dtype
        size = FusedDecoder.copy_bytes(model) // next(model.parameters()).element_size() * 4 if can_fuse else None
        small = size is not None and size <= ONE_THREAD_MAX_BYTES
        if fuse and not can_fuse:
            raise ValueError("fuse=True needs a gptlab GPT in float32, bfloat16 or float16 without "
                             "adapters or hooks")
        # fused, a step keeps the GIL out of its ~450 ops (scripted), which is what holds up a
        # server whose event loop is busy. A large float32 model is left unfused: its fused step
        # scaled badly past 3 rows on one thread (torch's f32 matmul with a transposed weight),
        # and the innocent client of bench/serve_fuzz.py waited longer under attack; in
        # bfloat16 the same step costs about the same at 1 and 8 rows (docs/PERFORMANCE.md,
        # "Serving under attack")
        if fuse is None:
            fuse = can_fuse and (small or (dtype != torch.float32
                                           and FusedDecoder.auto_ok(dtype, next(model.parameters()).device)))
        return fuse, threads if threads is not None else (1 if small else default_threads())

    # ------------------------------------------------------------------ public

    def start(self) -> "Worker":
        self.thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(timeout=10)

    def submit(self, job: Job) -> None:
        """Queue a job; raises ``queue.Full`` when the queue is full."""
        if job.n > self.max_batch:
            raise ValueError(f"n={job.n} is more than this server's batch size {self.max_batch}")
        self.queue.put_nowait(job)

    def load(self) -> dict:
        load = {"active_rows": len(self.rows), "queued": self.queue.qsize() + (self.waiting is not None),
                "steps": self.steps}
        if self.prefix_cache is not None:
            load["prefix_cache"] = self.prefix_cache.stats()
        return load

    # ------------------------------------------------------------------ the loop

    def _run(self) -> None:
        torch.set_grad_enabled(False)
        if self.threads:
            # OpenMP keeps the team size per thread, so this sizes this worker's matmuls only
            # (small models decode faster on one thread; busy machines much faster)
            torch.set_num_threads(self.threads)
        while not self._stop.is_set():
            try:
                self._admit()
                if not self.rows:
                    self._wait_for_work()
                    continue
                self._reap()
                if self.rows:
                    self._step()
            except Exception as exc:  # keep serving: fail the requests in flight, not the server
                log.exception("worker %s failed a step", self.name)
                for job in {id(r.job): r.job for r in self.rows}.values():
                    self._send([(job, [("error", 500, f"internal error while generating: {exc}", "server_error")])])
                self.rows, self.cache = [], None
        for job in {id(r.job): r.job for r in self.rows}.values():
            self._send([(job, [("error", 503, "the server is shutting down", "server_shutdown")])])

    def _wait_for_work(self) -> None:
        if self.waiting is None:
            try:
                self.waiting = self.queue.get(timeout=0.05)
            except queue.Empty:
                pass

    def _next_job(self) -> Job | None:
        if self.waiting is None:
            try:  # keys with rows running compete too: a flood gets one job per round past them
                self.waiting = self.queue.get_nowait(busy={r.job.tenant or r.job.client for r in self.rows})
            except queue.Empty:
                return None
        return self.waiting

    @torch.inference_mode()
    def _admit(self) -> None:
        """FIFO: admit queued jobs while their rows fit in the batch."""
        jobs, rows = [], len(self.rows)
        while (job := self._next_job()) is not None:
            if job.cancelled:
                self.waiting = None
                continue
            if self.disabled:
                self.waiting = None
                self._send([(job, [("error", 404, f"The model `{self.name}` was disabled.", "model_disabled")])])
                continue
            if time.monotonic() - job.enqueued_at > job.timeout_s:
                self.waiting = None
                self._send([(job, [("error", 408, f"The request timed out after {job.timeout_s:g} s "
                                    "in the queue.", "timeout")])])
                continue
            if rows + job.n > self.max_batch:
                break
            self.waiting = None
            jobs.append(job)
            rows += job.n
        if jobs:
            try:
                self._prefill(jobs)
            except Exception as exc:  # fail these jobs (they are not in self.rows yet), keep the batch
                log.exception("worker %s failed a prefill", self.name)
                self._send([(j, [("error", 500, f"internal error in the prompt pass: {exc}", "server_error")])
                            for j in jobs])

    def _prefill(self, jobs: list[Job]) -> None:
        """Prompt passes for newly admitted jobs: those whose prompt starts with a cached
        prefix one by one from it, the others together. Every pass runs before the batch
        changes, so a failure leaves the running rows as they were.

        A job whose whole prompt but its last token is cached (a repeated prompt) needs no
        pass of its own: it joins the batch with that token still to feed, and the next decode
        step computes its first token beside everyone else's. A client that re-sends one
        prompt in a loop then costs the others a batch row, not a forward pass per request
        (docs/PERFORMANCE.md, "Serving under attack")."""
        groups, fresh = [], []
        for job in jobs:
            hit = self.prefix_cache.lookup(job.prompt_ids, job.tenant) if self.prefix_cache is not None else None
            if hit is None:
                fresh.append(job)
            elif hit[0] == len(job.prompt_ids) - 1:
                groups.append(([job], hit, None))   # its cache is made when it joins
            else:
                groups.append(([job], *self._prompt_pass_from(job, *hit)))
        if fresh:
            groups.insert(0, (fresh, *self._prompt_pass(fresh)))
        for group, cache, logits in groups:
            # one cache row per choice: repeat each prompt's row n times
            which = [i for i, j in enumerate(group) for _ in range(j.n)]
            later = logits is None   # the last prompt token is fed by the next step
            if later:  # joining a running batch reads the cached keys/values where they are
                cache = self._cache_from(group[0], *cache, borrow=bool(self.rows))
            new_rows = []
            for job in group:
                for c in range(job.n):
                    gen = None if job.seed is None else random.Random(job.seed + c)
                    constraint = self.grammar.constraint(job.grammar) if job.grammar is not None else None
                    text = TextStream(self._decode, job.stop_strings)
                    new_rows.append(Row(job, c, len(job.prompt_ids) - later, gen, constraint, text,
                                        last=job.prompt_ids[-1] if later else 0))
            if not later:
                self._sample(new_rows, logits[which])
            if which != list(range(cache.batch_size)):
                cache = select_rows(cache, which)
            if self.rows:
                self.cache = join_rows(self.cache, cache)
            else:  # the prompt pass's own cache becomes the batch's: no copy
                self.cache = rows_view(cache.k, cache.v, valid_mask(cache), cache.batch_size, cache.pos)
            self.rows += new_rows
        self._retire()

    def _prompt_pass(self, jobs: list[Job]) -> tuple[KVCache, torch.Tensor]:
        if len(jobs) == 1 and self._fused_ready():
            cache = KVCache(self.model.config, 1, len(jobs[0].prompt_ids) + HEADROOM, device=self.device,
                            dtype=self.dtype)
            return cache, self.fused.prefill(cache, torch.tensor(jobs[0].prompt_ids, device=self.device))
        ids, mask, positions = left_pad([j.prompt_ids for j in jobs], self.device)
        cache = KVCache(self.model.config, len(jobs), ids.shape[1] + HEADROOM, device=self.device, dtype=self.dtype)
        logits = self.model(ids, kv_cache=cache, attention_mask=mask, position_ids=positions,
                            logits_to_keep=1)[:, -1]
        return cache, logits

    def _cache_from(self, job: Job, n: int, k: torch.Tensor, v: torch.Tensor, borrow: bool = False) -> KVCache:
        """A one-row cache holding the cached keys/values of ``job``'s first ``n`` tokens;
        ``borrow``: a read-only view of them, for a join or a select that copies them anyway."""
        if borrow:
            job.cached_tokens = n
            return borrowed(k, v)
        cache = KVCache(self.model.config, 1, len(job.prompt_ids) + HEADROOM, device=self.device, dtype=self.dtype)
        cache.k[:, 0, :, :n] = k
        cache.v[:, 0, :, :n] = v
        cache.pos = n
        job.cached_tokens = n
        return cache

    def _prompt_pass_from(self, job: Job, n: int, k: torch.Tensor, v: torch.Tensor):
        """The prompt pass of ``job`` whose first ``n`` tokens' keys/values are cached."""
        cache = self._cache_from(job, n, k, v)
        rest = torch.tensor(job.prompt_ids[n:], device=self.device)
        if self._fused_ready():
            return cache, self.fused.prefill(cache, rest)
        return cache, self.model(rest[None], kv_cache=cache, logits_to_keep=1)[:, -1]

    def _reap(self) -> None:
        """Drop rows of cancelled, timed-out or disabled jobs."""
        now = time.monotonic()
        for job in {id(r.job): r.job for r in self.rows}.values():
            if job.cancelled:
                pass
            elif self.disabled:
                self._send([(job, [("error", 404, f"The model `{self.name}` was disabled.", "model_disabled")])])
                job.cancelled = True
            elif now - job.enqueued_at > job.timeout_s:
                self._send([(job, [("error", 408, f"The request timed out after {job.timeout_s:g} s.", "timeout")])])
                job.cancelled = True
        if any(r.job.cancelled for r in self.rows):
            for r in self.rows:
                r.done = r.done or r.job.cancelled
            self._retire()

    @torch.inference_mode()
    def _step(self) -> None:
        cache = self.cache
        if cache.pos + 1 > cache.max_len:
            # regrow (dropping columns no row uses any more), keeping spare rows for joins
            self.cache = cache = select_rows(cache, list(range(len(self.rows))), min(len(self.rows), SPARE_ROWS))
        x = torch.tensor([r.last for r in self.rows], device=self.device)
        pos = torch.tensor([r.pos for r in self.rows], device=self.device)
        state = self._fused_state_for(cache)
        if state is not None:
            logits = self.fused.step(state, x, cache, pos)
        else:
            ones = torch.ones(len(self.rows), 1, dtype=torch.bool, device=self.device)
            logits = self.model(x[:, None], kv_cache=cache, attention_mask=ones, position_ids=pos[:, None])[:, -1]
        for r in self.rows:
            r.pos += 1
        self.steps += 1
        self._sample(self.rows, logits)
        self._retire()

    def _fused_ready(self) -> bool:
        """Whether a prompt pass can go through the fused weights (scripted: no GIL between its
        ops, ~6x faster than ``model.forward`` beside a busy event loop). Checked per pass
        for weight changes: the check is small next to a pass."""
        if self.fused is not None and not self.fused.refresh():
            self.fused = self._fused_state = None
        return self.fused is not None

    def _fused_state_for(self, cache: KVCache):
        """The fused step's per-cache state, or None to run ``model.forward``. Rebuilt when the
        cache is replaced (a join, retire or regrow), which is also when the weights are
        checked for changes: a per-step check would cost ~5 % of a batch-8 step here."""
        if self.fused is None:
            return None
        if self._fused_state is None or self._fused_state[0] is not cache:
            if not self.fused.refresh():  # adapters or hooks were added since: plain forward from now on
                self.fused = self._fused_state = None
                return None
            self._fused_state = (cache, self.fused.start(cache))
        return self._fused_state[1]

    def _retire(self) -> None:
        keep = [i for i, r in enumerate(self.rows) if not r.done]
        if len(keep) == len(self.rows):
            return
        if self.prefix_cache is not None:
            self._remember(i for i, r in enumerate(self.rows) if r.done)
        if not keep:
            self.rows, self.cache = [], None
        elif unused_columns(self.cache, keep) >= HEADROOM:
            # trim the columns only finished rows used (a long request that ended)
            self.rows = [self.rows[i] for i in keep]
            self.cache = select_rows(self.cache, keep, min(len(keep), SPARE_ROWS))
        else:
            self.cache, order = drop_rows(self.cache, keep)
            self.rows = [self.rows[i] for i in order]

    def _remember(self, indices) -> None:
        """Store finished rows' keys/values in the prefix cache, keyed by the tokens fed:
        the prompt, then every generated token but a last one that was sampled and not fed."""
        cache = self.cache
        valid = valid_mask(cache)[:, :cache.pos]
        for i in indices:
            used = valid[i].nonzero()
            if not len(used):
                continue
            start = int(used[0])
            r = self.rows[i]
            fed = (r.job.prompt_ids + r.ids)[:cache.pos - start]
            if len(fed) == cache.pos - start and not self.prefix_cache.covers(fed, r.job.tenant):
                self.prefix_cache.put(fed, cache.k[:, i, :, start:cache.pos].clone(),
                                      cache.v[:, i, :, start:cache.pos].clone(), r.job.tenant)

    # ------------------------------------------------------------------ sampling

    def _sample(self, rows: list[Row], logits: torch.Tensor) -> None:
        """Pick each row's next token, then turn tokens into text events."""
        logits = logits.float()
        tokens = _sample_rows(rows, logits)
        events: dict[int, tuple[Job, list]] = {}
        for i, (r, t) in enumerate(zip(rows, tokens)):
            out = events.setdefault(id(r.job), (r.job, []))[1]
            if r.constraint is not None:
                taken = r.constraint.choose(t, r.job.max_tokens - len(r.ids))
                # a stop the sampler did not pick: the closer ended the reply (e.g. a tool
                # call that no longer fits), so it was cut by max_tokens, not finished
                r.cut = taken != t and taken in self.stop_ids
                t = taken
            if r.job.logprobs:
                r.pending_lp.append(self._logprob_entry(logits[i], t, r.job.top_logprobs))
            self._advance(r, t, out)
        now = time.monotonic()
        for job, _ in events.values():
            if job.first_token_at is None:
                job.first_token_at = now
        self._send([(job, out) for job, out in events.values() if out and not job.cancelled])

    def _send(self, items: list[tuple[Job, list]]) -> None:
        """Deliver events: one wake-up per asyncio loop for all of its jobs."""
        by_loop: dict = {}
        for job, events in items:
            if job.loop is None:
                job.emit(events)
            else:
                by_loop.setdefault(job.loop, []).append((job.emit, events))
        for loop, batch in by_loop.items():
            try:
                loop.call_soon_threadsafe(_fanout, batch)
            except RuntimeError:  # the loop is closed: the server is shutting down
                pass

    def _advance(self, r: Row, t: int, out: list) -> None:
        """Append token t to row r; emit its new stable text; finish the row if it ended."""
        if t in self.stop_ids and (r.constraint is not None or not r.job.ignore_eos):
            return self._finish(r, "length" if r.cut else "stop", out)
        r.last = t
        delta, hit = r.text.push(t)
        if delta:
            out.append(("delta", r.index, delta, self._take_lp(r)))
        if hit:
            return self._finish(r, "stop", out)
        if len(r.ids) >= r.job.max_tokens:
            self._finish(r, "length", out)

    def _finish(self, r: Row, reason: str, out: list) -> None:
        tail = r.text.flush() if reason == "length" else ""  # text held back (a stop-string prefix)
        if tail or r.pending_lp:
            out.append(("delta", r.index, tail, self._take_lp(r)))
        r.done = True
        out.append(("finish", r.index, reason, len(r.ids)))

    def _decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=True)

    def _take_lp(self, r: Row):
        if not r.job.logprobs:
            return None
        lp, r.pending_lp = r.pending_lp, []
        return lp

    def _logprob_entry(self, logits_row: torch.Tensor, t: int, top: int) -> dict:
        lp = torch.log_softmax(logits_row, -1)
        entry = _token_info(self.tok, t, float(lp[t]))
        if top:
            vals, idx = lp.topk(min(top, lp.shape[-1]))
            entry["top_logprobs"] = [_token_info(self.tok, int(i), float(v)) for v, i in zip(vals, idx)]
        else:
            entry["top_logprobs"] = []
        return entry


def default_threads() -> int:
    """torch's thread count, less one core left to the HTTP side. The event loop (and, on a
    small machine, the clients) need a core at every token; when every core runs a matmul
    thread, the one that gets preempted holds up the whole step at its barrier
    (docs/PERFORMANCE.md, "Serving": the one-client ITL against the engine's own step)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, min(torch.get_num_threads(), cores - 1))


def _fanout(batch) -> None:
    for emit, events in batch:
        emit(events)


def _token_info(tok, t: int, logprob: float) -> dict:
    text = tok.decode([t])
    return {"token": text, "logprob": max(logprob, -9999.0), "bytes": list(text.encode("utf-8"))}


def _sample_rows(rows: list[Row], logits: torch.Tensor) -> list[int]:
    """One token per row: grammar masks, then ``gptlab.decode.sample_rows`` with each row's
    temperature / top-p. The uniform number of a row whose job has a seed comes from the
    row's own generator (so a seeded reply does not depend on what else is in the batch),
    the others' from torch's global generator."""
    mask_rows(logits, [r.constraint for r in rows])

    def uniforms(hot: list[int]) -> torch.Tensor:
        u = torch.rand(len(hot))
        for k, i in enumerate(hot):
            if rows[i].gen is not None:
                u[k] = rows[i].gen.random()
        return u

    return sample_rows(logits, [r.job.temperature for r in rows], [r.job.top_p for r in rows], uniforms)


# ----------------------------------------------------------------------------- embeddings


@torch.inference_mode()
def embed(model, prompts: list[list[int]]) -> torch.Tensor:
    """(B, hidden) mean of the last hidden state (after the final norm) over each prompt's
    tokens, L2-normalized. Thread-safe: a plain forward pass, no cache."""
    param = next(model.parameters())
    ids, mask, positions = left_pad(prompts, param.device)
    B, T = ids.shape
    x = model.hidden_states(ids, attention_mask=mask, position_ids=positions).float()
    m = mask.float() if mask is not None else torch.ones(B, T, device=ids.device)
    pooled = (x * m[..., None]).sum(1) / m.sum(1, keepdim=True)
    return torch.nn.functional.normalize(pooled, dim=-1)
