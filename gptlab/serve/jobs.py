"""From a request to a model's worker and back: the token budget of a request, the ``Job``
it becomes, the bridge that carries the worker thread's events onto the event loop, and the
streamed response that always lets go of its job and its reservation. Shared by the chat and
completions routes."""

from __future__ import annotations

import asyncio
import json
import queue
import time
from dataclasses import dataclass, field

from fastapi import Request
from fastapi.responses import StreamingResponse

from gptlab.serve.admission import settle
from gptlab.serve.errors import APIError, invalid, rate_limited
from gptlab.serve.settings import dtype_name
from gptlab.serve.worker import Job

DISCONNECT_CHECK_S = 0.25  # how often a request whose events keep coming checks its client


def budget(entry, prompt_len: int, requested: int | None, cap: int, param: str) -> int:
    """max_tokens for a request; 400 context_length_exceeded when it cannot fit."""
    ctx = entry.context
    if requested is None:
        if prompt_len >= ctx:
            raise too_long(ctx, prompt_len, 1, param)
        return max(1, min(cap, ctx - prompt_len))
    if prompt_len + requested > ctx:
        raise too_long(ctx, prompt_len, requested, param)
    return requested


def too_long(ctx, prompt, completion, param) -> APIError:
    return invalid(f"This model's maximum context length is {ctx} tokens. However, you requested "
                   f"{prompt + completion} tokens ({prompt} in the {param}, {completion} in the "
                   "completion). Please reduce the length of the messages or completion.",
                   param, "context_length_exceeded")


def stop_strings(stop) -> list[str]:
    if stop is None:
        return []
    stops = [stop] if isinstance(stop, str) else list(stop)
    if any(s == "" for s in stops):
        raise invalid("stop strings must not be empty", "stop")
    return stops


def usage(prompt: int, completion: int, cached: int | None = None) -> dict:
    """OpenAI's usage object; ``cached``: prompt tokens served from the prefix cache."""
    out = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
    if cached is not None:
        out["prompt_tokens_details"] = {"cached_tokens": cached}
    return out


def fingerprint(e) -> str:
    """OpenAI's system_fingerprint: what, besides the request, decides the tokens. The dtype
    is part of it: in bfloat16 a seeded reply can change with the batch it ran in."""
    return f"gptlab-{e.name}-{dtype_name(e)}"


class Bridge:
    """Worker thread -> asyncio: the worker delivers event lists on this loop's thread (see
    ``Job.loop``) into ``q``."""

    def __init__(self):
        self.loop = asyncio.get_running_loop()
        self.q: asyncio.Queue = asyncio.Queue()


def make_job(entry, prompt_ids, max_tokens, body, bridge, settings, grammar=None, n=1, logprobs=False,
             top_logprobs=0, tenant=""):
    temperature = 1.0 if body.temperature is None else body.temperature
    return Job(prompt_ids=prompt_ids, max_tokens=max_tokens, emit=bridge.q.put_nowait, loop=bridge.loop, n=n,
               temperature=temperature, top_p=body.top_p, seed=body.seed, stop_strings=stop_strings(body.stop),
               logprobs=logprobs, top_logprobs=top_logprobs, grammar=grammar,
               timeout_s=settings.request_timeout_s, ignore_eos=bool(body.ignore_eos), tenant=tenant)


def submit(entry, job, request: Request) -> None:
    job.client = request.client.host if request.client else ""   # its fair-queue lane with auth off
    try:
        entry.worker.submit(job)
    except queue.Full:
        raise rate_limited(f"The server is busy: the queue for model {entry.name} is full. "
                           "Try again shortly.", 2, code="queue_full")
    except ValueError as exc:
        raise invalid(str(exc), "n")


@dataclass
class Choice:
    text: list = field(default_factory=list)
    logprobs: list = field(default_factory=list)
    finish_reason: str | None = None
    tokens: int = 0


async def events(request: Request, job, bridge):
    """Yield the worker's events for ``job``; cancel it if the client goes away. Events that
    piled up while the client was busy are coalesced (one delta per choice), so a slow
    reader costs fewer, larger chunks rather than a growing backlog."""
    finished, checked = 0, time.monotonic()
    try:
        while finished < job.n:
            if time.monotonic() - checked > DISCONNECT_CHECK_S:  # also while tokens keep coming
                checked = time.monotonic()
                if await request.is_disconnected():
                    return
            if bridge.q.empty():
                try:
                    batch = await asyncio.wait_for(bridge.q.get(), timeout=1.0)
                except asyncio.TimeoutError:
                    if await request.is_disconnected():
                        return
                    if time.monotonic() - job.enqueued_at > job.timeout_s + 30:  # a lost job: never hang
                        raise APIError(500, "the engine stopped answering", "server_error", None, "server_error")
                    continue
            else:
                batch = bridge.q.get_nowait()
            while not bridge.q.empty():
                batch = batch + bridge.q.get_nowait()
            for ev in coalesce(batch):
                if ev[0] == "error":
                    raise APIError(ev[1], ev[2], "server_error" if ev[1] >= 500 else "invalid_request_error",
                                   None, ev[3])
                if ev[0] == "finish":
                    finished += 1
                yield ev
    finally:
        if finished < job.n:
            job.cancelled = True


def coalesce(batch: list) -> list:
    """Merge consecutive deltas of the same choice (text and logprob entries)."""
    out = []
    for ev in batch:
        prev = out[-1] if out else None
        if ev[0] == "delta" and prev is not None and prev[0] == "delta" and prev[1] == ev[1]:
            lps = None if prev[3] is None and ev[3] is None else (prev[3] or []) + (ev[3] or [])
            out[-1] = ("delta", ev[1], prev[2] + ev[2], lps)
        else:
            out.append(ev)
    return out


async def collect(request, job, bridge) -> list[Choice]:
    choices = [Choice() for _ in range(job.n)]
    async for ev in events(request, job, bridge):
        c = choices[ev[1]]
        if ev[0] == "delta":
            c.text.append(ev[2])
            c.logprobs += ev[3] or []
        else:
            c.finish_reason, c.tokens = ev[2], ev[3]
    if any(c.finish_reason is None for c in choices):
        raise APIError(499, "The client closed the request.", "invalid_request_error", None, "client_closed")
    return choices


def account(app, hold, entry, job, choices) -> None:
    """A finished request: its tpm reservation becomes what it used; metrics."""
    completion = sum(c.tokens for c in choices)
    settle(hold, len(job.prompt_ids) + completion)
    app.state.metrics.generated_tokens.labels(entry.name).inc(completion)
    if job.first_token_at is not None:
        app.state.metrics.ttft.labels(entry.name).observe(job.first_token_at - job.enqueued_at)


class Stream(StreamingResponse):
    """A streamed reply that always lets go of its request: when the response ends -- done,
    failed, or the client gone -- its generator is closed (running its ``finally`` now, not
    whenever the garbage collector gets to it; Starlette leaves a generator that was paused
    at a ``yield`` when the client left unclosed), its jobs are cancelled (the worker drops
    their rows) and its tpm reservation and concurrency slot are settled (a no-op when the
    generator settled them with the real usage)."""

    def __init__(self, content, jobs, hold, **kw):
        super().__init__(content, **kw)
        self.jobs, self.hold = jobs, hold

    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.body_iterator.aclose()
            for job in self.jobs:
                job.cancelled = True
            settle(self.hold, None)


def sse(obj) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"
