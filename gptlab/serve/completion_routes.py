"""``POST /v1/completions`` (legacy text completions, several prompts at once, streamed or
whole) and ``POST /v1/embeddings`` (mean-pooled hidden states, gptlab.serve.worker.embed)."""

from __future__ import annotations

import asyncio
import base64
import time
import uuid

import torch
from fastapi import Depends, FastAPI, Request

from gptlab.serve.admission import admit, auth, settle, tenant
from gptlab.serve.errors import APIError, invalid
from gptlab.serve.jobs import (Bridge, Stream, account, budget, collect, events, fingerprint, make_job, sse,
                               submit, too_long, usage)
from gptlab.serve.moderation import input_flag, refusal_text
from gptlab.serve.prompts import completion_prompts
from gptlab.serve.schemas import CompletionRequest, EmbeddingRequest
from gptlab.serve.worker import embed


def add_completion_routes(app: FastAPI) -> None:
    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request, key=Depends(auth)):
        return await _completions(app, body, request, key)

    @app.post("/v1/embeddings")
    async def embeddings(body: EmbeddingRequest, request: Request, key=Depends(auth)):
        return await _embeddings(app, body, request, key)


# ----------------------------------------------------------------------------- completions


def _legacy_logprobs(entries: list[dict], offset0: int = 0) -> dict:
    offsets, pos = [], offset0
    for e in entries:
        offsets.append(pos)
        pos += len(e["token"])
    return {"tokens": [e["token"] for e in entries], "token_logprobs": [e["logprob"] for e in entries],
            "top_logprobs": [{t["token"]: t["logprob"] for t in e["top_logprobs"]} for e in entries],
            "text_offset": offsets}


async def _completions(app, body: CompletionRequest, request: Request, key):
    settings = app.state.settings
    if body.echo:
        raise invalid("echo is not supported by this server", "echo")
    if body.suffix:
        raise invalid("suffix (insertion) is not supported by this server", "suffix")
    n = body.n or 1
    entry = app.state.registry.resolve(body.model)
    prompts = completion_prompts(entry, body.prompt)
    if n * len(prompts) > settings.max_batch:
        raise invalid(f"n times the number of prompts must be at most {settings.max_batch}", "n")
    budgets = [budget(entry, len(p), body.max_tokens, settings.max_tokens_cap, "prompt") for p in prompts]
    prompt_tokens = sum(len(p) for p in prompts)
    hold = admit(request, key, prompt_tokens + n * sum(budgets))
    try:
        return await _completions_admitted(app, body, request, key, entry, prompts, budgets, hold)
    except BaseException:
        settle(hold, None)
        raise


async def _completions_admitted(app, body, request, key, entry, prompts, budgets, hold):
    settings, n = app.state.settings, body.n or 1
    meta = {"id": f"cmpl-{uuid.uuid4().hex[:24]}", "created": int(time.time()), "model": entry.name,
            "system_fingerprint": fingerprint(entry)}
    flag = await asyncio.to_thread(input_flag, app, _prompt_texts(entry, body.prompt, prompts)) \
        if app.state.moderator else None
    if flag is not None:
        app.state.metrics.flagged.labels("input").inc()
        if settings.moderation_action == "refuse":
            settle(hold, sum(len(p) for p in prompts))
            return _completion_refusal(meta, n, prompts, refusal_text(flag))
    want_lp = body.logprobs is not None
    jobs = []
    for p, m in zip(prompts, budgets):
        bridge = Bridge()
        job = make_job(entry, p, m, body, bridge, settings, None, n, want_lp, body.logprobs or 0, tenant(key))
        submit(entry, job, request)
        jobs.append((job, bridge))
    if body.stream:
        return Stream(_completion_stream(app, request, jobs, meta, body, hold, entry, n), [j for j, _ in jobs],
                      hold, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
    results = await asyncio.gather(*[collect(request, j, b) for j, b in jobs])
    settle(hold, sum(len(j.prompt_ids) for j, _ in jobs) + sum(c.tokens for cs in results for c in cs))
    out, total = [], 0
    for k, ((job, _), choices) in enumerate(zip(jobs, results)):
        account(app, None, entry, job, choices)
        for c_idx, c in enumerate(choices):
            total += c.tokens
            out.append({"index": k * n + c_idx, "text": "".join(c.text), "finish_reason": c.finish_reason,
                        "logprobs": _legacy_logprobs(c.logprobs) if want_lp else None})
    return {**meta, "object": "text_completion", "choices": out,
            "usage": usage(sum(len(j.prompt_ids) for j, _ in jobs), total, sum(j.cached_tokens for j, _ in jobs))}


def _prompt_texts(entry, raw, prompts) -> list[str]:
    """The text of /v1/completions prompts for moderation (token-id prompts decoded)."""
    if isinstance(raw, str):
        return [raw]
    if all(isinstance(p, str) for p in raw):
        return list(raw)
    return [entry.tokenizer.decode(p, skip_special_tokens=True) for p in prompts]


def _completion_refusal(meta, n, prompts, text) -> dict:
    return {**meta, "object": "text_completion",
            "choices": [{"index": k * n + i, "text": text, "finish_reason": "content_filter", "logprobs": None}
                        for k in range(len(prompts)) for i in range(n)],
            "usage": usage(sum(len(p) for p in prompts), 0)}


async def _completion_stream(app, request, jobs, meta, body, hold, entry, n):
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    merged: asyncio.Queue = asyncio.Queue()

    async def pump(k, job, bridge):
        try:
            async for ev in events(request, job, bridge):
                await merged.put((k, ev))
        except APIError as exc:
            await merged.put((k, ("error", exc)))
        finally:
            await merged.put((k, ("end",)))

    tasks = [asyncio.create_task(pump(k, j, b)) for k, (j, b) in enumerate(jobs)]
    ended, tokens, finished = 0, 0, 0
    try:
        while ended < len(jobs):
            k, ev = await merged.get()
            if ev[0] == "end":
                ended += 1
                continue
            if ev[0] == "error":
                yield sse(ev[1].body())
                return
            text = ev[2] if ev[0] == "delta" else ""
            reason = ev[2] if ev[0] == "finish" else None
            lp = _legacy_logprobs(ev[3]) if ev[0] == "delta" and body.logprobs is not None and ev[3] else None
            if ev[0] == "finish":
                tokens += ev[3]
                finished += 1
            yield sse({**meta, "object": "text_completion",
                       "choices": [{"index": k * n + ev[1], "text": text, "logprobs": lp,
                                    "finish_reason": reason}]})
    finally:
        for t in tasks:
            t.cancel()
        if finished < n * len(jobs):
            settle(hold, None)
    if finished < n * len(jobs):
        return
    settle(hold, tokens + sum(len(j.prompt_ids) for j, _ in jobs))
    app.state.metrics.generated_tokens.labels(entry.name).inc(tokens)
    if include_usage:
        yield sse({**meta, "object": "text_completion", "choices": [],
                   "usage": usage(sum(len(j.prompt_ids) for j, _ in jobs), tokens,
                                  sum(j.cached_tokens for j, _ in jobs))})
    yield "data: [DONE]\n\n"


# ----------------------------------------------------------------------------- embeddings


async def _embeddings(app, body: EmbeddingRequest, request: Request, key):
    entry = app.state.registry.resolve(body.model)
    prompts = completion_prompts(entry, body.input)
    for p in prompts:
        if len(p) > entry.context:
            raise too_long(entry.context, len(p), 0, "input")
    hidden = entry.model.config.hidden_size
    if body.dimensions is not None and body.dimensions > hidden:
        raise invalid(f"dimensions must be at most {hidden} for this model", "dimensions")
    hold = admit(request, key, sum(len(p) for p in prompts))
    try:
        vectors = await asyncio.to_thread(embed, entry.model, prompts)
    finally:
        settle(hold, sum(len(p) for p in prompts))
    if body.dimensions is not None:  # Matryoshka-style truncation, renormalized
        vectors = torch.nn.functional.normalize(vectors[:, :body.dimensions], dim=-1)
    data = []
    for i, v in enumerate(vectors):
        if body.encoding_format == "base64":
            emb = base64.b64encode(v.float().numpy().astype("<f4").tobytes()).decode()
        else:
            emb = v.tolist()
        data.append({"object": "embedding", "index": i, "embedding": emb})
    tokens = sum(len(p) for p in prompts)
    return {"object": "list", "data": data, "model": entry.name,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
