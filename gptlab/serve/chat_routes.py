"""``POST /v1/chat/completions``: cheap checks, admission, then the costly parts (grammar
compilation, moderation, generation), whole or streamed, with tool calls
(gptlab.serve.tools) and the web chat's opt-in max_tokens clamp."""

from __future__ import annotations

import asyncio
import time
import uuid

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from gptlab.serve.admission import admit, auth, settle, tenant
from gptlab.serve.errors import APIError, invalid
from gptlab.serve.grammar import GrammarError
from gptlab.serve.jobs import (Bridge, Choice, Stream, account, budget, collect, events, fingerprint, make_job,
                               sse, submit, usage)
from gptlab.serve.moderation import input_flag, moderation_header, output_flags, refusal_text
from gptlab.serve.prompts import chat_prompt
from gptlab.serve.schemas import ChatCompletionRequest
from gptlab.serve.tools import deltas as tool_deltas
from gptlab.serve.tools import finish as tool_finish
from gptlab.serve.tools import plan_tools
from gptlab.serve.tools import reply as tool_reply
from gptlab.serve.tools import streams_for as tool_streams

MAX_CHARS_PER_TOKEN = 32  # more characters than this per context token cannot fit: refused untokenized
CLAMP_HEADER = "X-Gptlab-Max-Tokens"  # request "clamp": fit max_tokens to the context left


def add_chat_routes(app: FastAPI) -> None:
    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request, key=Depends(auth)):
        return _clamp_note(request, await _chat(app, body, request, key))


# ----------------------------------------------------------------------------- the web chat's clamp


def _clamp_opt_in(request: Request, entry, prompt_len: int, requested: int | None) -> int | None:
    """The web chat's policy, only for a request with `X-Gptlab-Max-Tokens: clamp`: a
    max_tokens beyond the context left is lowered to what is left (the response says so in
    `X-Gptlab-Max-Tokens-Clamped: N`) instead of refused. Other clients keep OpenAI's 400."""
    left = entry.context - prompt_len
    if requested is None or requested <= left or left < 1 \
            or request.headers.get(CLAMP_HEADER, "").lower() != "clamp":
        return requested
    request.state.max_tokens_clamped = left
    return left


def _clamp_note(request: Request, result):
    """Add the X-Gptlab-Max-Tokens-Clamped header when _clamp_opt_in lowered max_tokens."""
    left = getattr(request.state, "max_tokens_clamped", None)
    if left is None:
        return result
    if isinstance(result, dict):
        result = JSONResponse(result)
    result.headers[CLAMP_HEADER + "-Clamped"] = str(left)
    return result


# ----------------------------------------------------------------------------- the request


async def _chat_grammar(entry, body, max_tokens, plan=None):
    """The compiled response_format (or the tools' grammar: gptlab.serve.tools), in the
    model's bounded compile pool, within its timeout."""
    fmt = plan.grammar_format() if plan is not None and plan.active else body.response_format
    if fmt is None or fmt.type == "text":
        return None
    param = "tools" if fmt is not body.response_format else "response_format"
    try:
        future = entry.grammar.submit(fmt)
        compiled, need = await asyncio.wait_for(asyncio.wrap_future(future), entry.grammar.timeout_s)
    except asyncio.TimeoutError:  # wait_for cancelled the future: dropped if it had not started
        raise invalid(entry.grammar.timeout_message(), param, "schema_timeout")
    except GrammarError as exc:
        raise invalid(str(exc), param)
    if need is None:
        raise invalid(f"{param}: this schema cannot be completed within the server's "
                      "closing limit", param)
    if need > max_tokens:
        what = "tool_choice (the shortest call)" if param == "tools" else "response_format"
        raise invalid(f"max_tokens={max_tokens} is too small for this {what}: the shortest "
                      f"valid reply takes {need} tokens", "max_tokens")
    return compiled


def _check_chat(body: ChatCompletionRequest, settings) -> None:
    if body.top_logprobs and not body.logprobs:
        raise invalid("top_logprobs needs logprobs=true", "top_logprobs")
    if (body.n or 1) > settings.max_batch:
        raise invalid(f"n must be at most {settings.max_batch} on this server", "n")


async def _chat(app, body: ChatCompletionRequest, request: Request, key):
    """Cheap checks, then admission (rate limits, tpm reserved, a concurrency slot), and only
    then the costly parts: schema compilation, moderation, generation."""
    settings = app.state.settings
    _check_chat(body, settings)
    plan = plan_tools(body)
    entry = app.state.registry.resolve(body.model)
    chars = sum(len(m.text()) for m in body.messages)
    if chars > MAX_CHARS_PER_TOKEN * entry.context:  # no tokenizer pass over what cannot fit
        raise invalid(f"The messages hold {chars} characters, more than this model's context of "
                      f"{entry.context} tokens can take.", "messages", "context_length_exceeded")
    prompt_ids = await asyncio.to_thread(chat_prompt, entry, body.messages, plan)
    requested = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    requested = _clamp_opt_in(request, entry, len(prompt_ids), requested)
    max_tokens = budget(entry, len(prompt_ids), requested, settings.max_tokens_cap, "messages")
    n = body.n or 1
    if requested is None and key and key.get("tpm"):  # a default max_tokens fits within the key's tpm
        max_tokens = max(1, min(max_tokens, key["tpm"] // n - len(prompt_ids)))
    hold = admit(request, key, len(prompt_ids) + n * max_tokens)
    try:
        return await _chat_admitted(app, body, request, key, entry, prompt_ids, max_tokens, hold, plan)
    except BaseException:
        settle(hold, None)  # after a failure or disconnect the tokens stay counted
        raise


async def _chat_admitted(app, body, request, key, entry, prompt_ids, max_tokens, hold, plan=None):
    settings, n = app.state.settings, body.n or 1
    try:
        grammar = await _chat_grammar(entry, body, max_tokens, plan)
    except APIError:
        settle(hold, 0)  # refused before any work: nothing used
        raise
    meta = {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "created": int(time.time()), "model": entry.name,
            "system_fingerprint": fingerprint(entry)}
    # with --moderation-action flag, what was flagged is reported in X-Gptlab-Moderation
    stages = []
    texts = [m.text() for m in body.messages]
    flag = await asyncio.to_thread(input_flag, app, texts) if app.state.moderator else None
    if flag is not None:
        app.state.metrics.flagged.labels("input").inc()
        if settings.moderation_action == "refuse":
            settle(hold, len(prompt_ids))
            return _refusal(body, meta, n, len(prompt_ids), refusal_text(flag))
        stages.append("input")
    bridge = Bridge()
    job = make_job(entry, prompt_ids, max_tokens, body, bridge, settings, grammar, n, bool(body.logprobs),
                   body.top_logprobs or 0, tenant(key))
    submit(entry, job, request)
    app.state.metrics.prompt_tokens.labels(entry.name).inc(len(prompt_ids))
    if body.stream and app.state.moderate not in ("output", "both"):
        return Stream(_chat_stream(app, request, job, bridge, meta, body, hold, entry, plan), [job], hold,
                      media_type="text/event-stream", headers=moderation_header(stages))
    choices = await collect(request, job, bridge)
    account(app, hold, entry, job, choices)
    texts = ["".join(c.text) for c in choices]
    flags = await asyncio.to_thread(output_flags, app, texts) if app.state.moderator else [None] * n
    out = []
    for i, (c, text, out_flag) in enumerate(zip(choices, texts, flags)):
        message, reason = tool_reply(plan, text, c.finish_reason)
        if out_flag is not None:
            app.state.metrics.flagged.labels("output").inc()
            if settings.moderation_action == "refuse":
                message, reason = tool_reply(None, refusal_text(out_flag), "content_filter")
            elif "output" not in stages:
                stages.append("output")
        out.append({"index": i, "message": message,
                    "logprobs": {"content": c.logprobs, "refusal": None} if body.logprobs else None,
                    "finish_reason": reason})
    result = {**meta, "object": "chat.completion", "choices": out,
              "usage": usage(len(prompt_ids), sum(c.tokens for c in choices), job.cached_tokens)}
    if body.stream:  # output moderation: the whole reply was checked, now sent as one chunk
        return StreamingResponse(_replay_stream(result, body), media_type="text/event-stream",
                                 headers=moderation_header(stages))
    return JSONResponse(result, headers=moderation_header(stages, cache=False))


def _refusal(body, meta, n, prompt_tokens, text):
    """The reply when input moderation refuses: a normal completion, finish_reason content_filter."""
    result = {**meta, "object": "chat.completion",
              "choices": [{"index": i, "message": {"role": "assistant", "content": text, "refusal": None},
                           "logprobs": None, "finish_reason": "content_filter"} for i in range(n)],
              "usage": usage(prompt_tokens, 0)}
    if body.stream:
        return StreamingResponse(_replay_stream(result, body), media_type="text/event-stream")
    return result


# ----------------------------------------------------------------------------- streaming


def _chunk(meta, choices, usage_field: bool) -> dict:
    d = {**meta, "object": "chat.completion.chunk", "choices": choices}
    if usage_field:
        d["usage"] = None
    return d


async def _replay_stream(result, body):
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    meta = {k: result[k] for k in ("id", "created", "model", "system_fingerprint")}
    for c in result["choices"]:
        yield sse(_chunk(meta, [{"index": c["index"], "delta": {"role": "assistant", "content": ""},
                                 "logprobs": None, "finish_reason": None}], include_usage))
        delta = {"content": c["message"]["content"]}
        if c["message"].get("tool_calls"):
            delta["tool_calls"] = [{"index": k, **call} for k, call in enumerate(c["message"]["tool_calls"])]
        yield sse(_chunk(meta, [{"index": c["index"], "delta": delta,
                                 "logprobs": c["logprobs"], "finish_reason": None}], include_usage))
        yield sse(_chunk(meta, [{"index": c["index"], "delta": {}, "logprobs": None,
                                 "finish_reason": c["finish_reason"]}], include_usage))
    if include_usage:
        yield sse({**meta, "object": "chat.completion.chunk", "choices": [], "usage": result["usage"]})
    yield "data: [DONE]\n\n"


async def _chat_stream(app, request, job, bridge, meta, body, hold, entry, plan=None):
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    choices = [Choice() for _ in range(job.n)]
    streams = tool_streams(plan, job.n)   # None without tools: text deltas as they come
    for i in range(job.n):
        yield sse(_chunk(meta, [{"index": i, "delta": {"role": "assistant", "content": ""},
                                 "logprobs": None, "finish_reason": None}], include_usage))
    try:
        async for ev in events(request, job, bridge):
            c = choices[ev[1]]
            if ev[0] == "delta":
                lp = {"content": ev[3], "refusal": None} if body.logprobs else None
                for k, delta in enumerate(tool_deltas(streams, ev[1], ev[2]) or ([{"content": ""}] if lp else [])):
                    yield sse(_chunk(meta, [{"index": ev[1], "delta": delta, "logprobs": None if k else lp,
                                             "finish_reason": None}], include_usage))
            else:
                tail, reason = tool_finish(streams, ev[1], ev[2])
                for delta in tail:
                    yield sse(_chunk(meta, [{"index": ev[1], "delta": delta, "logprobs": None,
                                             "finish_reason": None}], include_usage))
                c.finish_reason, c.tokens = reason, ev[3]
                yield sse(_chunk(meta, [{"index": ev[1], "delta": {}, "logprobs": None,
                                         "finish_reason": reason}], include_usage))
    except APIError as exc:
        yield sse(exc.body())
        return
    finally:
        if any(c.finish_reason is None for c in choices):
            settle(hold, None)   # an error or the client went away: the reservation stays
    if any(c.finish_reason is None for c in choices):
        return  # the client went away
    account(app, hold, entry, job, choices)
    if include_usage:
        total = usage(len(job.prompt_ids), sum(c.tokens for c in choices), job.cached_tokens)
        yield sse({**meta, "object": "chat.completion.chunk", "choices": [], "usage": total})
    yield "data: [DONE]\n\n"
