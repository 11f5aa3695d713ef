"""The OpenAI-compatible HTTP API (FastAPI): ``create_app(ServeSettings(...))``.

Endpoints: ``GET /v1/models``, ``POST /v1/chat/completions``, ``POST /v1/completions``,
``POST /v1/embeddings``, ``POST /v1/moderations``, ``GET /health``, ``GET /metrics``
(Prometheus), and the admin API the ``gptlab models`` command calls
(``GET /admin/models``, ``POST /admin/models/{name}/promote|disable|enable``).
Generation runs on one continuous-batching worker per model (gptlab.serve.worker); a
handler turns the request into a ``Job``, queues it, and awaits the worker's events.
See docs/SERVING.md for what each field does and what is not implemented.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import json
import queue
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import torch
from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse

from gptlab.interop import TORCH_DTYPES as _TORCH_DTYPES
from gptlab.serve.errors import APIError, BodyLimit, bad_key, install_error_handlers, invalid, rate_limited
from gptlab.serve.schemas import (ChatCompletionRequest, CompletionRequest, EmbeddingRequest,
                                  ModerationRequest, PromoteRequest)
from gptlab.serve.tools import deltas as tool_deltas
from gptlab.serve.tools import finish as tool_finish
from gptlab.serve.tools import plan_tools, prompt_messages
from gptlab.serve.tools import reply as tool_reply
from gptlab.serve.tools import streams_for as tool_streams

REFUSAL = "I'm sorry, but I can't help with that."
VOTES_PER_MINUTE = 30   # per key (auth on) or per client address (auth off)
ADMIN_HEADER = "X-Gptlab-Admin"
MAX_CHARS_PER_TOKEN = 32  # more characters than this per context token cannot fit: refused untokenized
MODERATE_MODES = ("none", "input", "output", "both")
ACTIONS = ("refuse", "flag")


@dataclass
class ServeSettings:
    """Everything `gptlab serve` can set (flags of the same names)."""

    models: list = field(default_factory=list)  # "DIR" or "NAME=DIR"
    host: str = "127.0.0.1"
    port: int = 8000
    db: str = "runs/serve/serve.db"
    auth: str = "auto"               # auto: on unless the server binds to loopback only
    max_batch: int = 16              # rows decoded together per model (a request takes n rows)
    max_queue: int = 64              # requests waiting per model before 429
    request_timeout_s: float = 300.0
    max_body_bytes: int = 2_000_000
    max_tokens_cap: int = 4096       # default max_tokens: min(this, context - prompt)
    device: str = "cpu"
    dtype: str = "auto"              # auto | float32 | bfloat16 | float16 (see serving_dtype)
    threads: int | None = None       # torch CPU threads of each model's worker (None: see Worker)
    prefix_cache_mb: float = 256     # keys/values of finished sequences kept for reuse, per model (0: off)
    moderation: str | None = None    # a gptlab.safety Moderator directory
    moderate: str | None = None      # none | input | output | both (default: input with --moderation)
    moderation_action: str = "refuse"  # refuse | flag
    max_concurrent_per_key: int = 8  # a key's requests in flight at once; more get 429 (auth on)
    schema_workers: int = 2          # threads that compile response_format schemas, per model
    schema_timeout_s: float = 10.0   # a schema not compiled by then is a 400

    def auth_enabled(self) -> bool:
        if self.auth not in ("auto", "on", "off"):
            raise ValueError(f"auth must be auto, on or off, got {self.auth!r}")
        if self.auth != "auto":
            return self.auth == "on"
        return not _is_loopback(self.host)

    def moderate_mode(self) -> str:
        mode = self.moderate or ("input" if self.moderation else "none")
        if mode not in MODERATE_MODES:
            raise ValueError(f"moderate must be one of {MODERATE_MODES}, got {mode!r}")
        if mode != "none" and not self.moderation:
            raise ValueError(f"--moderate {mode} needs --moderation DIR (a gptlab.safety moderator)")
        if self.moderation_action not in ACTIONS:
            raise ValueError(f"moderation_action must be one of {ACTIONS}, got {self.moderation_action!r}")
        return mode


DTYPES = {"auto": None, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
          **_TORCH_DTYPES}  # and gptlab import's short names: f32, bf16, f16
BF16_AUTO_MIN_BYTES = 64 * 2**20  # the size above which a float32 decode step is bound by weight reads


def serving_dtype(model, requested: str, device: str, threads: int | None = None) -> torch.dtype:
    """The dtype to serve ``model`` in. ``auto`` on CUDA: bfloat16 when its weights take more
    than 64 MiB in float32 and the GPU has bf16 (above that size a step reads every weight
    once, so half the bytes is a faster step), else the dtype it was loaded in. ``auto`` on a
    CPU with native bf16 (AVX512-BF16 / AMX) and a float32 model: whichever of float32 and
    bfloat16 decodes faster on this CPU, measured once and cached (gptlab.serve.dtype_auto;
    ``threads``: the worker's); the choice and its timings go to stderr."""
    if requested not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {requested!r}")
    if requested != "auto":
        return DTYPES[requested]
    param = next(model.parameters())
    if param.dtype != torch.float32 or not fast_bf16(device):
        return param.dtype
    if str(device).startswith("cuda"):
        big = 4 * sum(p.numel() for p in model.parameters()) > BF16_AUTO_MIN_BYTES
        return torch.bfloat16 if big else param.dtype
    from gptlab.serve import dtype_auto
    from gptlab.serve.worker import Worker
    fuse, threads = Worker.plan(model, threads)
    dtype, why = dtype_auto.choose(model, threads, fuse)
    print(f"gptlab serve: dtype auto -> {str(dtype).removeprefix('torch.')} ({why})", file=sys.stderr, flush=True)
    return dtype


def fast_bf16(device: str) -> bool:
    """Whether ``device`` has native bf16 matrix multiplication."""
    if str(device).startswith("cuda"):
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    try:  # Linux: the CPU flags; elsewhere assume not (float32 is the safe choice)
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# ----------------------------------------------------------------------------- app


def create_app(settings: ServeSettings) -> FastAPI:
    """Load the models, start their workers, and build the FastAPI app."""
    from gptlab.feedback import FeedbackStore
    from gptlab.serve.keys import KeyStore, RateLimiter, WindowLimiter
    from gptlab.serve.registry import Registry, parse_model_spec

    if not settings.models:
        raise ValueError("serve needs at least one --model DIR")
    auth_on = settings.auth_enabled()
    mode = settings.moderate_mode()
    moderator = _load_moderator(settings.moderation) if settings.moderation else None
    store = FeedbackStore(settings.db)
    metrics = Metrics()
    registry = Registry(store)
    try:
        for spec in settings.models:
            if parse_model_spec(spec)[0] in registry.entries:
                raise ValueError(f"two models are named {parse_model_spec(spec)[0]!r}: use --model NAME=DIR")
            registry.add(_load_entry(spec, settings))
        registry.restore()
    except BaseException:  # a later model failed to load: stop the workers already started
        for e in registry.entries.values():
            e.worker.stop()
        raise

    async def lifespan(_app):
        yield
        for e in registry.entries.values():
            e.worker.stop()

    app = FastAPI(title="gptlab", version="1", lifespan=lifespan,
                  description="OpenAI-compatible API for gptlab models (docs/SERVING.md)")
    app.state.settings, app.state.store, app.state.registry = settings, store, registry
    app.state.keys, app.state.metrics = KeyStore(store), metrics
    app.state.limiter = RateLimiter(max_active=settings.max_concurrent_per_key)
    app.state.vote_limiter = WindowLimiter(VOTES_PER_MINUTE)  # the web chat's /api votes
    app.state.auth_on, app.state.moderate = auth_on, mode
    app.state.moderator = moderator  # /v1/moderations works whenever --moderation is given

    def authenticate(request: Request) -> dict | None:
        """The caller's key record; None without auth. Raises a 401 APIError when auth is
        on and the key is missing, revoked or wrong."""
        header = request.headers.get("authorization", "")
        token = header[7:].strip() if header.lower().startswith("bearer ") else ""
        record = app.state.keys.verify(token) if token else None
        if auth_on and record is None:
            raise bad_key()
        return record

    app.state.authenticate = authenticate
    install_error_handlers(app)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    metrics.install(app)
    _add_routes(app)
    from gptlab.serve.web import add_web_routes   # the chat page at / and its /api routes
    add_web_routes(app)
    return app


def _load_entry(spec: str, settings: ServeSettings):
    from gptlab.chat import load_chat_model, stop_token_ids
    from gptlab.serve.grammar import GrammarFactory
    from gptlab.interop import ensure_model
    from gptlab.serve.registry import Entry, parse_model_spec
    from gptlab.serve.worker import Worker

    name, path = parse_model_spec(spec)
    path = ensure_model(path)  # an alias (smollm2) is imported on first use
    ckpt = load_chat_model(path, device=settings.device)
    if ckpt.tokenizer is None:
        raise ValueError(f"{path}: the model has no tokenizer.json; serve needs one")
    model, tok = ckpt.model.eval(), ckpt.tokenizer
    model.to(serving_dtype(model, settings.dtype, settings.device, settings.threads))
    stops = stop_token_ids(tok)
    grammar = GrammarFactory(tok, model.config.vocab_size, stops, compile_workers=settings.schema_workers,
                             timeout_s=settings.schema_timeout_s)
    worker = Worker(model, tok, stops, name=name, max_batch=settings.max_batch,
                    max_queue=settings.max_queue, grammar_factory=grammar, threads=settings.threads,
                    prefix_cache_bytes=int(settings.prefix_cache_mb * 2**20)).start()
    return Entry(name=name, path=Path(path), model=model, tokenizer=tok, worker=worker, grammar=grammar,
                 context=model.config.max_position_embeddings, stop_ids=stops)


def _load_moderator(path):
    try:
        from gptlab.safety import Moderator
    except ImportError as exc:
        raise ValueError("--moderation needs gptlab.safety (the moderation classifier), "
                         f"which is not available: {exc}") from exc
    return Moderator.load(path)


# ----------------------------------------------------------------------------- helpers


def _auth(request: Request) -> dict | None:
    return request.app.state.authenticate(request)


def _admin(request: Request) -> dict | None:
    record = request.app.state.authenticate(request)
    if request.app.state.auth_on and not (record and record["admin"]):
        raise APIError(403, "This endpoint needs an admin key (gptlab keys create --admin).",
                       "permission_error", None, "admin_key_required")
    if not request.app.state.auth_on:
        _check_local_admin(request)
    return record


def _admin_refused(message: str) -> APIError:
    return APIError(403, message, "permission_error", None, "admin_request_refused")


def _check_local_admin(request: Request) -> None:
    """With auth off (loopback), anyone who can reach the port is trusted, but a web page in
    the user's browser can reach it too. So the admin API answers only what a page cannot
    send without a CORS preflight (which this server never approves): a custom header
    (``X-Gptlab-Admin``) and, for a POST, a JSON body; and only for a loopback Host and
    Origin, so a DNS-rebinding page (Host: evil.example resolving to 127.0.0.1) is refused."""
    from urllib.parse import urlsplit

    allowed = {request.app.state.settings.host, "localhost"}
    host = urlsplit("//" + request.headers.get("host", "")).hostname or ""
    if not (_is_loopback(host) or host in allowed):
        raise _admin_refused(f"Admin requests must name this server by a loopback address in Host "
                             f"(got {host[:80]!r}).")
    origin = request.headers.get("origin")
    if origin is not None and not _is_loopback(urlsplit(origin).hostname or ""):
        raise _admin_refused("Admin requests from a web page of another origin are refused.")
    if ADMIN_HEADER.lower() not in request.headers:
        raise _admin_refused(f"Admin requests need the header `{ADMIN_HEADER}: 1` "
                             "(`gptlab models` sends it).")
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if request.method == "POST" and kind != "application/json":
        raise _admin_refused("Admin POST requests need Content-Type: application/json.")


def _tenant(key: dict | None) -> str:
    """The prefix-cache partition of a request: its API key (one partition with auth off)."""
    return f"key:{key['id']}" if key else ""


def _admit(request: Request, key: dict | None, tokens: int):
    """Admit the request against the key's limits, holding ``tokens`` (prompt + max_tokens)
    of its tpm and one of its concurrency slots; the Reservation (None without a key) is
    settled when the request ends."""
    from gptlab.serve.keys import LimitExceeded

    try:
        return request.app.state.limiter.admit(key, tokens)
    except LimitExceeded as exc:
        if exc.wait is None:
            raise invalid(exc.message, "max_tokens", "request_too_large_for_limit")
        code = "too_many_concurrent_requests" if exc.what == "concurrency" else "rate_limit_exceeded"
        raise rate_limited(f"{exc.message} Try again in {exc.wait:.1f} s.", exc.wait, code=code)


def _settle(hold, used: int | None) -> None:
    if hold is not None:
        hold.settle(used)


def _chat_prompt(entry, messages, plan=None) -> list[int]:
    """The prompt's ids. Control tokens come only from the chat template: message content
    is tokenized with special-token strings as plain text (gptlab.chat.render_prompt).
    Tool definitions, calls and results are rendered as gptlab.tool_format says."""
    from gptlab.chat import render_prompt

    try:
        return render_prompt(entry.tokenizer, prompt_messages(messages), plan.prompt_tools() if plan else None)
    except Exception as exc:  # a template that rejects the roles (e.g. no system role)
        raise invalid(f"The model's chat template cannot render these messages: {exc}", "messages")


def _budget(entry, prompt_len: int, requested: int | None, cap: int, param: str) -> int:
    """max_tokens for a request; 400 context_length_exceeded when it cannot fit."""
    ctx = entry.context
    if requested is None:
        if prompt_len >= ctx:
            raise _too_long(ctx, prompt_len, 1, param)
        return max(1, min(cap, ctx - prompt_len))
    if prompt_len + requested > ctx:
        raise _too_long(ctx, prompt_len, requested, param)
    return requested


def _too_long(ctx, prompt, completion, param) -> APIError:
    return invalid(f"This model's maximum context length is {ctx} tokens. However, you requested "
                   f"{prompt + completion} tokens ({prompt} in the {param}, {completion} in the "
                   "completion). Please reduce the length of the messages or completion.",
                   param, "context_length_exceeded")


CLAMP_HEADER = "X-Gptlab-Max-Tokens"  # request "clamp": fit max_tokens to the context left


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


def _stops(stop) -> list[str]:
    if stop is None:
        return []
    stops = [stop] if isinstance(stop, str) else list(stop)
    if any(s == "" for s in stops):
        raise invalid("stop strings must not be empty", "stop")
    return stops


def _usage(prompt: int, completion: int, cached: int | None = None) -> dict:
    """OpenAI's usage object; ``cached``: prompt tokens served from the prefix cache."""
    usage = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
    if cached is not None:
        usage["prompt_tokens_details"] = {"cached_tokens": cached}
    return usage


class Bridge:
    """Worker thread -> asyncio: the worker delivers event lists on this loop's thread (see
    ``Job.loop``) into ``q``."""

    def __init__(self):
        self.loop = asyncio.get_running_loop()
        self.q: asyncio.Queue = asyncio.Queue()


def _job(entry, prompt_ids, max_tokens, body, bridge, settings, grammar=None, n=1, logprobs=False,
         top_logprobs=0, tenant=""):
    from gptlab.serve.worker import Job

    temperature = 1.0 if body.temperature is None else body.temperature
    return Job(prompt_ids=prompt_ids, max_tokens=max_tokens, emit=bridge.q.put_nowait, loop=bridge.loop, n=n,
               temperature=temperature, top_p=body.top_p, seed=body.seed, stop_strings=_stops(body.stop),
               logprobs=logprobs, top_logprobs=top_logprobs, grammar=grammar,
               timeout_s=settings.request_timeout_s, ignore_eos=bool(body.ignore_eos), tenant=tenant)


def _submit(entry, job, request: Request) -> None:
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


async def _events(request: Request, job, bridge):
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
                    events = await asyncio.wait_for(bridge.q.get(), timeout=1.0)
                except asyncio.TimeoutError:
                    if await request.is_disconnected():
                        return
                    if time.monotonic() - job.enqueued_at > job.timeout_s + 30:  # a lost job: never hang
                        raise APIError(500, "the engine stopped answering", "server_error", None, "server_error")
                    continue
            else:
                events = bridge.q.get_nowait()
            while not bridge.q.empty():
                events = events + bridge.q.get_nowait()
            for ev in _coalesce(events):
                if ev[0] == "error":
                    raise APIError(ev[1], ev[2], "server_error" if ev[1] >= 500 else "invalid_request_error",
                                   None, ev[3])
                if ev[0] == "finish":
                    finished += 1
                yield ev
    finally:
        if finished < job.n:
            job.cancelled = True


DISCONNECT_CHECK_S = 0.25  # how often a request whose events keep coming checks its client


def _coalesce(events: list) -> list:
    """Merge consecutive deltas of the same choice (text and logprob entries)."""
    out = []
    for ev in events:
        prev = out[-1] if out else None
        if ev[0] == "delta" and prev is not None and prev[0] == "delta" and prev[1] == ev[1]:
            lps = None if prev[3] is None and ev[3] is None else (prev[3] or []) + (ev[3] or [])
            out[-1] = ("delta", ev[1], prev[2] + ev[2], lps)
        else:
            out.append(ev)
    return out


async def _collect(request, job, bridge) -> list[Choice]:
    choices = [Choice() for _ in range(job.n)]
    async for ev in _events(request, job, bridge):
        c = choices[ev[1]]
        if ev[0] == "delta":
            c.text.append(ev[2])
            c.logprobs += ev[3] or []
        else:
            c.finish_reason, c.tokens = ev[2], ev[3]
    if any(c.finish_reason is None for c in choices):
        raise APIError(499, "The client closed the request.", "invalid_request_error", None, "client_closed")
    return choices


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
            _settle(self.hold, None)


def _sse(obj) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


# ----------------------------------------------------------------------------- moderation


def _moderate(app, texts: list[str]) -> list[dict]:
    return app.state.moderator.moderate(texts)


def _input_flag(app, texts: list[str]) -> dict | None:
    """The moderation result of the first flagged input text, else None. Every message is
    read -- system, earlier turns, an assistant prefill -- since any of them steers the
    reply; the moderator NFKC-normalizes (fullwidth letters read as ASCII)."""
    if app.state.moderate not in ("input", "both"):
        return None
    texts = [t for t in texts if t and t.strip()]
    return next((r for r in _moderate(app, texts) if r["flagged"]), None) if texts else None


def _output_flags(app, texts: list[str]) -> list[dict | None]:
    if app.state.moderate not in ("output", "both"):
        return [None] * len(texts)
    return [r if r["flagged"] else None for r in _moderate(app, texts)]


def _refusal_text(result: dict) -> str:
    """gptlab.safety's refusal (with crisis resources for self-harm), or a plain one."""
    try:
        from gptlab.safety import refusal_for
    except ImportError:
        return REFUSAL
    return refusal_for(result)


# ----------------------------------------------------------------------------- routes


def _add_routes(app: FastAPI) -> None:
    reg = app.state.registry

    @app.get("/health")
    def health(request: Request):
        # model directories only for a caller with a key when auth is on
        header = request.headers.get("authorization", "")
        token = header[7:].strip() if header.lower().startswith("bearer ") else ""
        known = not app.state.auth_on or (token and app.state.keys.verify(token) is not None)
        return {"status": "ok", "models": {e["name"]: e for e in reg.describe(paths=bool(known))}}

    @app.get("/metrics")
    def metrics():
        return PlainTextResponse(app.state.metrics.render(reg), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    def list_models(_key=Depends(_auth)):
        return {"object": "list", "data": [_model_card(reg, e) for e in reg.entries.values() if e.enabled]}

    @app.get("/v1/models/{model_id:path}")
    def get_model(model_id: str, _key=Depends(_auth)):
        return _model_card(reg, reg.resolve(model_id))

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request, key=Depends(_auth)):
        return _clamp_note(request, await _chat(app, body, request, key))

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request, key=Depends(_auth)):
        return await _completions(app, body, request, key)

    @app.post("/v1/embeddings")
    async def embeddings(body: EmbeddingRequest, request: Request, key=Depends(_auth)):
        return await _embeddings(app, body, request, key)

    @app.post("/v1/moderations")
    async def moderations(body: ModerationRequest, _request: Request, _key=Depends(_auth)):
        if app.state.moderator is None:
            raise invalid("Moderation is not enabled on this server (start it with --moderation DIR).",
                          "model", "moderation_disabled")
        texts = [body.input] if isinstance(body.input, str) else \
            [p if isinstance(p, str) else p.text for p in body.input]
        results = await asyncio.to_thread(_moderate, app, texts)
        return {"id": f"modr-{uuid.uuid4().hex[:24]}", "model": body.model or "gptlab-moderation",
                "results": [{"flagged": bool(r["flagged"]), "categories": r["categories"],
                             "category_scores": r["category_scores"],
                             "category_applied_input_types": {c: ["text"] for c in r["categories"]}}
                            for r in results]}

    @app.get("/admin/models")
    def admin_models(_key=Depends(_admin)):
        return {"models": reg.describe(), "aliases": dict(reg.aliases)}

    @app.post("/admin/models/{name}/promote")
    def admin_promote(name: str, body: PromoteRequest, _key=Depends(_admin)):
        reg.promote(name, body.alias)
        return {"models": reg.describe(), "aliases": dict(reg.aliases)}

    @app.post("/admin/models/{name}/disable")
    def admin_disable(name: str, _key=Depends(_admin)):
        reg.set_enabled(name, False)
        return {"models": reg.describe(), "aliases": dict(reg.aliases)}

    @app.post("/admin/models/{name}/enable")
    def admin_enable(name: str, _key=Depends(_admin)):
        reg.set_enabled(name, True)
        return {"models": reg.describe(), "aliases": dict(reg.aliases)}


def dtype_name(e) -> str:
    """The dtype a model entry is served in, as a name ("bfloat16")."""
    return str(next(e.model.parameters()).dtype).removeprefix("torch.")


def _fingerprint(e) -> str:
    """OpenAI's system_fingerprint: what, besides the request, decides the tokens. The dtype
    is part of it: in bfloat16 a seeded reply can change with the batch it ran in."""
    return f"gptlab-{e.name}-{dtype_name(e)}"


def _model_card(reg, e) -> dict:
    return {"id": e.name, "object": "model", "created": e.created, "owned_by": "gptlab",
            "aliases": reg.aliases_of(e.name), "context_length": e.context,
            "dtype": dtype_name(e)}


# ----------------------------------------------------------------------------- chat


async def _chat_grammar(entry, body, max_tokens, plan=None):
    """The compiled response_format (or the tools' grammar: gptlab.serve.tools), in the
    model's bounded compile pool, within its timeout."""
    from gptlab.serve.grammar import GrammarError

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
    prompt_ids = await asyncio.to_thread(_chat_prompt, entry, body.messages, plan)
    requested = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    requested = _clamp_opt_in(request, entry, len(prompt_ids), requested)
    max_tokens = _budget(entry, len(prompt_ids), requested, settings.max_tokens_cap, "messages")
    n = body.n or 1
    if requested is None and key and key.get("tpm"):  # a default max_tokens fits within the key's tpm
        max_tokens = max(1, min(max_tokens, key["tpm"] // n - len(prompt_ids)))
    hold = _admit(request, key, len(prompt_ids) + n * max_tokens)
    try:
        return await _chat_admitted(app, body, request, key, entry, prompt_ids, max_tokens, hold, plan)
    except BaseException:
        _settle(hold, None)  # after a failure or disconnect the tokens stay counted
        raise


async def _chat_admitted(app, body, request, key, entry, prompt_ids, max_tokens, hold, plan=None):
    settings, n = app.state.settings, body.n or 1
    try:
        grammar = await _chat_grammar(entry, body, max_tokens, plan)
    except APIError:
        _settle(hold, 0)  # refused before any work: nothing used
        raise
    meta = {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "created": int(time.time()), "model": entry.name,
            "system_fingerprint": _fingerprint(entry)}
    # with --moderation-action flag, what was flagged is reported in X-Gptlab-Moderation
    stages = []
    texts = [m.text() for m in body.messages]
    flag = await asyncio.to_thread(_input_flag, app, texts) if app.state.moderator else None
    if flag is not None:
        app.state.metrics.flagged.labels("input").inc()
        if settings.moderation_action == "refuse":
            _settle(hold, len(prompt_ids))
            return _refusal(body, meta, n, len(prompt_ids), _refusal_text(flag))
        stages.append("input")
    bridge = Bridge()
    job = _job(entry, prompt_ids, max_tokens, body, bridge, settings, grammar, n, bool(body.logprobs),
               body.top_logprobs or 0, _tenant(key))
    _submit(entry, job, request)
    app.state.metrics.prompt_tokens.labels(entry.name).inc(len(prompt_ids))
    if body.stream and app.state.moderate not in ("output", "both"):
        return Stream(_chat_stream(app, request, job, bridge, meta, body, hold, entry, plan), [job], hold,
                      media_type="text/event-stream", headers=_moderation_header(stages))
    choices = await _collect(request, job, bridge)
    _account(app, hold, entry, job, choices)
    texts = ["".join(c.text) for c in choices]
    flags = await asyncio.to_thread(_output_flags, app, texts) if app.state.moderator else [None] * n
    out = []
    for i, (c, text, out_flag) in enumerate(zip(choices, texts, flags)):
        message, reason = tool_reply(plan, text, c.finish_reason)
        if out_flag is not None:
            app.state.metrics.flagged.labels("output").inc()
            if settings.moderation_action == "refuse":
                message, reason = tool_reply(None, _refusal_text(out_flag), "content_filter")
            elif "output" not in stages:
                stages.append("output")
        out.append({"index": i, "message": message,
                    "logprobs": {"content": c.logprobs, "refusal": None} if body.logprobs else None,
                    "finish_reason": reason})
    result = {**meta, "object": "chat.completion", "choices": out,
              "usage": _usage(len(prompt_ids), sum(c.tokens for c in choices), job.cached_tokens)}
    if body.stream:  # output moderation: the whole reply was checked, now sent as one chunk
        return StreamingResponse(_replay_stream(result, body), media_type="text/event-stream",
                                 headers=_moderation_header(stages))
    return JSONResponse(result, headers=_moderation_header(stages, cache=False))


def _moderation_header(stages: list[str], cache: bool = True) -> dict:
    headers = {"Cache-Control": "no-cache"} if cache else {}
    if stages:
        headers["X-Gptlab-Moderation"] = "flagged:" + ",".join(stages)
    return headers


def _account(app, hold, entry, job, choices) -> None:
    """A finished request: its tpm reservation becomes what it used; metrics."""
    completion = sum(c.tokens for c in choices)
    _settle(hold, len(job.prompt_ids) + completion)
    app.state.metrics.generated_tokens.labels(entry.name).inc(completion)
    if job.first_token_at is not None:
        app.state.metrics.ttft.labels(entry.name).observe(job.first_token_at - job.enqueued_at)


def _refusal(body, meta, n, prompt_tokens, text):
    """The reply when input moderation refuses: a normal completion, finish_reason content_filter."""
    result = {**meta, "object": "chat.completion",
              "choices": [{"index": i, "message": {"role": "assistant", "content": text, "refusal": None},
                           "logprobs": None, "finish_reason": "content_filter"} for i in range(n)],
              "usage": _usage(prompt_tokens, 0)}
    if body.stream:
        return StreamingResponse(_replay_stream(result, body), media_type="text/event-stream")
    return result


def _chunk(meta, choices, usage_field: bool) -> dict:
    d = {**meta, "object": "chat.completion.chunk", "choices": choices}
    if usage_field:
        d["usage"] = None
    return d


async def _replay_stream(result, body):
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    meta = {k: result[k] for k in ("id", "created", "model", "system_fingerprint")}
    for c in result["choices"]:
        yield _sse(_chunk(meta, [{"index": c["index"], "delta": {"role": "assistant", "content": ""},
                                  "logprobs": None, "finish_reason": None}], include_usage))
        delta = {"content": c["message"]["content"]}
        if c["message"].get("tool_calls"):
            delta["tool_calls"] = [{"index": k, **call} for k, call in enumerate(c["message"]["tool_calls"])]
        yield _sse(_chunk(meta, [{"index": c["index"], "delta": delta,
                                  "logprobs": c["logprobs"], "finish_reason": None}], include_usage))
        yield _sse(_chunk(meta, [{"index": c["index"], "delta": {}, "logprobs": None,
                                  "finish_reason": c["finish_reason"]}], include_usage))
    if include_usage:
        yield _sse({**meta, "object": "chat.completion.chunk", "choices": [], "usage": result["usage"]})
    yield "data: [DONE]\n\n"


async def _chat_stream(app, request, job, bridge, meta, body, hold, entry, plan=None):
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    choices = [Choice() for _ in range(job.n)]
    streams = tool_streams(plan, job.n)   # None without tools: text deltas as they come
    for i in range(job.n):
        yield _sse(_chunk(meta, [{"index": i, "delta": {"role": "assistant", "content": ""},
                                  "logprobs": None, "finish_reason": None}], include_usage))
    try:
        async for ev in _events(request, job, bridge):
            c = choices[ev[1]]
            if ev[0] == "delta":
                lp = {"content": ev[3], "refusal": None} if body.logprobs else None
                for k, delta in enumerate(tool_deltas(streams, ev[1], ev[2]) or ([{"content": ""}] if lp else [])):
                    yield _sse(_chunk(meta, [{"index": ev[1], "delta": delta, "logprobs": None if k else lp,
                                              "finish_reason": None}], include_usage))
            else:
                tail, reason = tool_finish(streams, ev[1], ev[2])
                for delta in tail:
                    yield _sse(_chunk(meta, [{"index": ev[1], "delta": delta, "logprobs": None,
                                              "finish_reason": None}], include_usage))
                c.finish_reason, c.tokens = reason, ev[3]
                yield _sse(_chunk(meta, [{"index": ev[1], "delta": {}, "logprobs": None,
                                          "finish_reason": reason}], include_usage))
    except APIError as exc:
        yield _sse(exc.body())
        return
    finally:
        if any(c.finish_reason is None for c in choices):
            _settle(hold, None)   # an error or the client went away: the reservation stays
    if any(c.finish_reason is None for c in choices):
        return  # the client went away
    _account(app, hold, entry, job, choices)
    if include_usage:
        usage = _usage(len(job.prompt_ids), sum(c.tokens for c in choices), job.cached_tokens)
        yield _sse({**meta, "object": "chat.completion.chunk", "choices": [], "usage": usage})
    yield "data: [DONE]\n\n"


# ----------------------------------------------------------------------------- completions


def _completion_prompts(entry, prompt) -> list[list[int]]:
    tok = entry.tokenizer
    if isinstance(prompt, str):
        prompts = [tok.encode(prompt)]
    elif all(isinstance(p, str) for p in prompt):
        prompts = [tok.encode(p) for p in prompt]
    elif all(isinstance(p, int) for p in prompt):
        prompts = [list(prompt)]
    else:
        prompts = [list(p) for p in prompt]
    vocab = entry.model.config.vocab_size
    for p in prompts:
        if not p:
            raise invalid("a prompt must not be empty", "prompt")
        if any(t >= vocab for t in p):
            raise invalid(f"token ids must be below the vocabulary size {vocab}", "prompt")
    if len(prompts) > 64:
        raise invalid("at most 64 prompts per request", "prompt")
    return prompts


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
    prompts = _completion_prompts(entry, body.prompt)
    if n * len(prompts) > settings.max_batch:
        raise invalid(f"n times the number of prompts must be at most {settings.max_batch}", "n")
    budgets = [_budget(entry, len(p), body.max_tokens, settings.max_tokens_cap, "prompt") for p in prompts]
    prompt_tokens = sum(len(p) for p in prompts)
    hold = _admit(request, key, prompt_tokens + n * sum(budgets))
    try:
        return await _completions_admitted(app, body, request, key, entry, prompts, budgets, hold)
    except BaseException:
        _settle(hold, None)
        raise


async def _completions_admitted(app, body, request, key, entry, prompts, budgets, hold):
    settings, n = app.state.settings, body.n or 1
    meta = {"id": f"cmpl-{uuid.uuid4().hex[:24]}", "created": int(time.time()), "model": entry.name,
            "system_fingerprint": _fingerprint(entry)}
    flag = await asyncio.to_thread(_input_flag, app, _prompt_texts(entry, body.prompt, prompts)) \
        if app.state.moderator else None
    if flag is not None:
        app.state.metrics.flagged.labels("input").inc()
        if settings.moderation_action == "refuse":
            _settle(hold, sum(len(p) for p in prompts))
            return _completion_refusal(meta, n, prompts, _refusal_text(flag))
    want_lp = body.logprobs is not None
    jobs = []
    for p, m in zip(prompts, budgets):
        bridge = Bridge()
        job = _job(entry, p, m, body, bridge, settings, None, n, want_lp, body.logprobs or 0, _tenant(key))
        _submit(entry, job, request)
        jobs.append((job, bridge))
    if body.stream:
        return Stream(_completion_stream(app, request, jobs, meta, body, hold, entry, n), [j for j, _ in jobs],
                      hold, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
    results = await asyncio.gather(*[_collect(request, j, b) for j, b in jobs])
    _settle(hold, sum(len(j.prompt_ids) for j, _ in jobs) + sum(c.tokens for cs in results for c in cs))
    out, total = [], 0
    for k, ((job, _), choices) in enumerate(zip(jobs, results)):
        _account(app, None, entry, job, choices)
        for c_idx, c in enumerate(choices):
            total += c.tokens
            out.append({"index": k * n + c_idx, "text": "".join(c.text), "finish_reason": c.finish_reason,
                        "logprobs": _legacy_logprobs(c.logprobs) if want_lp else None})
    return {**meta, "object": "text_completion", "choices": out,
            "usage": _usage(sum(len(j.prompt_ids) for j, _ in jobs), total, sum(j.cached_tokens for j, _ in jobs))}


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
            "usage": _usage(sum(len(p) for p in prompts), 0)}


async def _completion_stream(app, request, jobs, meta, body, hold, entry, n):
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    merged: asyncio.Queue = asyncio.Queue()

    async def pump(k, job, bridge):
        try:
            async for ev in _events(request, job, bridge):
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
                yield _sse(ev[1].body())
                return
            text = ev[2] if ev[0] == "delta" else ""
            reason = ev[2] if ev[0] == "finish" else None
            lp = _legacy_logprobs(ev[3]) if ev[0] == "delta" and body.logprobs is not None and ev[3] else None
            if ev[0] == "finish":
                tokens += ev[3]
                finished += 1
            yield _sse({**meta, "object": "text_completion",
                        "choices": [{"index": k * n + ev[1], "text": text, "logprobs": lp,
                                     "finish_reason": reason}]})
    finally:
        for t in tasks:
            t.cancel()
        if finished < n * len(jobs):
            _settle(hold, None)
    if finished < n * len(jobs):
        return
    _settle(hold, tokens + sum(len(j.prompt_ids) for j, _ in jobs))
    app.state.metrics.generated_tokens.labels(entry.name).inc(tokens)
    if include_usage:
        yield _sse({**meta, "object": "text_completion", "choices": [],
                    "usage": _usage(sum(len(j.prompt_ids) for j, _ in jobs), tokens,
                                    sum(j.cached_tokens for j, _ in jobs))})
    yield "data: [DONE]\n\n"


# ----------------------------------------------------------------------------- embeddings


async def _embeddings(app, body: EmbeddingRequest, request: Request, key):
    from gptlab.serve.worker import embed

    entry = app.state.registry.resolve(body.model)
    prompts = _completion_prompts(entry, body.input)
    for p in prompts:
        if len(p) > entry.context:
            raise _too_long(entry.context, len(p), 0, "input")
    hidden = entry.model.config.hidden_size
    if body.dimensions is not None and body.dimensions > hidden:
        raise invalid(f"dimensions must be at most {hidden} for this model", "dimensions")
    hold = _admit(request, key, sum(len(p) for p in prompts))
    try:
        vectors = await asyncio.to_thread(embed, entry.model, prompts)
    finally:
        _settle(hold, sum(len(p) for p in prompts))
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



# ----------------------------------------------------------------------------- metrics

_ROUTES = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/moderations", "/v1/models",
           "/health", "/metrics", "/")


class Metrics:
    """Prometheus metrics of one app (its own registry, so several apps can coexist)."""

    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        r = self.registry = CollectorRegistry()
        self.requests = Counter("gptlab_http_requests", "HTTP requests by route and status",
                                ["route", "status"], registry=r)
        self.latency = Histogram("gptlab_http_request_seconds", "time to the end of the response",
                                 ["route"], registry=r)
        self.prompt_tokens = Counter("gptlab_prompt_tokens", "prompt tokens admitted", ["model"], registry=r)
        self.generated_tokens = Counter("gptlab_generated_tokens", "completion tokens generated",
                                        ["model"], registry=r)
        self.ttft = Histogram("gptlab_time_to_first_token_seconds", "queue wait + prefill", ["model"],
                              buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30), registry=r)
        self.flagged = Counter("gptlab_moderation_flagged", "messages flagged by moderation", ["stage"],
                               registry=r)
        self.active = Gauge("gptlab_active_sequences", "rows in the decode batch", ["model"], registry=r)
        self.queued = Gauge("gptlab_queued_requests", "requests waiting for a batch slot", ["model"], registry=r)
        self.enabled = Gauge("gptlab_model_enabled", "1 if the model is served", ["model"], registry=r)
        self.cached = Gauge("gptlab_prefix_cache_tokens_saved", "prompt tokens served from the prefix cache",
                            ["model"], registry=r)

    def install(self, app) -> None:
        metrics = self

        class Record:
            def __init__(self, inner):
                self.inner = inner

            async def __call__(self, scope, receive, send):
                if scope["type"] != "http":
                    return await self.inner(scope, receive, send)
                path = scope.get("path", "")
                route = path if path in _ROUTES else ("/admin/*" if path.startswith("/admin/") else
                                                      "/v1/models/*" if path.startswith("/v1/models/") else
                                                      "/api/*" if path.startswith("/api/") else "other")
                status, t0 = [500], time.perf_counter()

                async def send_wrapper(message):
                    if message["type"] == "http.response.start":
                        status[0] = message["status"]
                    await send(message)

                try:
                    await self.inner(scope, receive, send_wrapper)
                finally:
                    metrics.requests.labels(route, str(status[0])).inc()
                    metrics.latency.labels(route).observe(time.perf_counter() - t0)

        app.add_middleware(Record)

    def render(self, registry) -> str:
        from prometheus_client import generate_latest

        for e in registry.describe():
            self.active.labels(e["name"]).set(e["active_rows"])
            self.queued.labels(e["name"]).set(e["queued"])
            self.enabled.labels(e["name"]).set(1 if e["enabled"] else 0)
            self.cached.labels(e["name"]).set(e.get("prefix_cache", {}).get("tokens_saved", 0))
        return generate_latest(self.registry).decode()
