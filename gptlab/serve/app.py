"""The OpenAI-compatible HTTP API (FastAPI): ``create_app(ServeSettings(...))``.

Endpoints: ``GET /v1/models``, ``POST /v1/chat/completions`` (gptlab.serve.chat_routes),
``POST /v1/completions`` and ``POST /v1/embeddings`` (gptlab.serve.completion_routes),
``POST /v1/moderations``, ``GET /health``, ``GET /metrics`` (Prometheus,
gptlab.serve.metrics), the admin API the ``gptlab models`` command calls
(gptlab.serve.admin), and the web chat (gptlab.serve.web, with the operator's tools in
gptlab.serve.web_tools). Generation runs on one continuous-batching worker per model
(gptlab.serve.worker); a handler turns the request into a ``Job`` (gptlab.serve.jobs),
queues it, and awaits the worker's events.
See docs/SERVING.md for what each field does and what is not implemented.
"""

from __future__ import annotations

import asyncio
import gc
import sys
import uuid
from pathlib import Path

from fastapi import Depends, FastAPI, Request
from fastapi.responses import PlainTextResponse

from gptlab.chat import load_chat_model, stop_token_ids
from gptlab.feedback import FeedbackStore
from gptlab.interop import ensure_model
from gptlab.serve.admin import add_admin_routes
from gptlab.serve.admission import auth
from gptlab.serve.chat_routes import add_chat_routes
from gptlab.serve.completion_routes import add_completion_routes
from gptlab.serve.errors import BodyLimit, bad_key, install_error_handlers, invalid
from gptlab.serve.grammar import GrammarFactory
from gptlab.serve.keys import KeyStore, RateLimiter, WindowLimiter
from gptlab.serve.metrics import Metrics
from gptlab.serve.moderation import load_moderator, moderate
from gptlab.serve.registry import Entry, Registry, parse_model_spec
from gptlab.serve.schemas import ModerationRequest
# ServeSettings and dtype_name are re-exported: `gptlab serve` and gptlab.serve import them from here
from gptlab.serve.settings import ServeSettings, dtype_name, serving_dtype
from gptlab.serve.web import add_web_routes
from gptlab.serve.web_tools import add_tool_routes, load_server_tools
from gptlab.serve.worker import Worker

__all__ = ["ServeSettings", "create_app", "dtype_name"]

VOTES_PER_MINUTE = 30   # per key (auth on) or per client address (auth off)

# How long a thread that wants the GIL waits before the holder must let go (Python's default:
# 5 ms). The worker thread takes the GIL back after each of the ~500 torch ops of a decode
# step; while the event loop parses a large request body, each of those waits could last the
# full interval, so requests that are refused in milliseconds still slowed every stream.
GIL_SWITCH_S = 0.0005


def create_app(settings: ServeSettings) -> FastAPI:
    """Load the models, start their workers, and build the FastAPI app."""
    if not settings.models:
        raise ValueError("serve needs at least one --model DIR")
    auth_on = settings.auth_enabled()
    mode = settings.moderate_mode()
    sys.setswitchinterval(GIL_SWITCH_S)
    tools = load_server_tools(settings)   # before the models: a bad --enable-tools fails fast
    moderator = load_moderator(settings.moderation) if settings.moderation else None
    store = FeedbackStore(settings.db)
    registry = _load_registry(settings, store)

    async def lifespan(_app):
        # everything loaded so far (torch, the models, the app) lives as long as the server:
        # out of the collector's sight, a full collection no longer walks it. It took 120-140
        # ms, holding the GIL, every few seconds under load, which stalled the worker
        # between its decode steps (docs/PERFORMANCE.md, "Serving under attack")
        if settings.freeze_gc:
            gc.collect()
            gc.freeze()
        yield
        for e in registry.entries.values():
            e.worker.stop()

    app = FastAPI(title="gptlab", version="1", lifespan=lifespan,
                  description="OpenAI-compatible API for gptlab models (docs/SERVING.md)")
    app.state.settings, app.state.store, app.state.registry = settings, store, registry
    app.state.keys, app.state.metrics = KeyStore(store), Metrics()
    app.state.limiter = RateLimiter(max_active=settings.max_concurrent_per_key)
    app.state.vote_limiter = WindowLimiter(VOTES_PER_MINUTE)  # the web chat's /api votes
    app.state.auth_on, app.state.moderate = auth_on, mode
    app.state.moderator = moderator  # /v1/moderations works whenever --moderation is given
    app.state.tools = tools          # None unless the operator enabled tools (--enable-tools)

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
    app.state.metrics.install(app)
    _add_routes(app)
    add_chat_routes(app)
    add_completion_routes(app)
    _add_moderation_route(app)
    add_admin_routes(app)
    add_web_routes(app)    # the chat page at / and its /api routes
    add_tool_routes(app)   # /api/tools: the operator's tools for the web chat (refused when off)
    return app


def _load_registry(settings: ServeSettings, store) -> Registry:
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
    return registry


def _load_entry(spec: str, settings: ServeSettings) -> Entry:
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
    def list_models(_key=Depends(auth)):
        return {"object": "list", "data": [_model_card(reg, e) for e in reg.entries.values() if e.enabled]}

    @app.get("/v1/models/{model_id:path}")
    def get_model(model_id: str, _key=Depends(auth)):
        return _model_card(reg, reg.resolve(model_id))


def _add_moderation_route(app: FastAPI) -> None:
    @app.post("/v1/moderations")
    async def moderations(body: ModerationRequest, _request: Request, _key=Depends(auth)):
        if app.state.moderator is None:
            raise invalid("Moderation is not enabled on this server (start it with --moderation DIR).",
                          "model", "moderation_disabled")
        texts = [body.input] if isinstance(body.input, str) else \
            [p if isinstance(p, str) else p.text for p in body.input]
        results = await asyncio.to_thread(moderate, app, texts)
        return {"id": f"modr-{uuid.uuid4().hex[:24]}", "model": body.model or "gptlab-moderation",
                "results": [{"flagged": bool(r["flagged"]), "categories": r["categories"],
                             "category_scores": r["category_scores"],
                             "category_applied_input_types": {c: ["text"] for c in r["categories"]}}
                            for r in results]}


def _model_card(reg, e) -> dict:
    return {"id": e.name, "object": "model", "created": e.created, "owned_by": "gptlab",
            "aliases": reg.aliases_of(e.name), "context_length": e.context,
            "dtype": dtype_name(e)}
