"""Prometheus metrics of one app (``GET /metrics``): requests by route and status, latency,
tokens, time to first token, moderation flags, and each model's batch and queue."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

ROUTES = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/moderations", "/v1/models",
          "/health", "/metrics", "/")


def route_label(path: str) -> str:
    """A bounded label for a request path (no per-model or per-conversation series)."""
    if path in ROUTES:
        return path
    for prefix, label in (("/admin/", "/admin/*"), ("/v1/models/", "/v1/models/*"), ("/api/", "/api/*")):
        if path.startswith(prefix):
            return label
    return "other"


class Metrics:
    """Prometheus metrics of one app (its own registry, so several apps can coexist)."""

    def __init__(self):
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
                route = route_label(scope.get("path", ""))
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
        for e in registry.describe():
            self.active.labels(e["name"]).set(e["active_rows"])
            self.queued.labels(e["name"]).set(e["queued"])
            self.enabled.labels(e["name"]).set(1 if e["enabled"] else 0)
            self.cached.labels(e["name"]).set(e.get("prefix_cache", {}).get("tokens_saved", 0))
        return generate_latest(self.registry).decode()
