"""gptlab's server: an OpenAI-compatible API with continuous batching, API keys and rate
limits, a model registry with aliases and an off switch, constrained JSON decoding, and
moderation hooks. ``create_app(ServeSettings(models=[...]))`` builds the FastAPI app;
``gptlab serve`` runs it with uvicorn (docs/SERVING.md)."""

__all__ = ["ServeSettings", "create_app"]


def __getattr__(name):
    # lazy: gptlab.serve.worker (continuous batching) must import without fastapi
    # (bench/gpu_check.sh runs it on a machine that has no fastapi)
    if name in __all__:
        import importlib
        return getattr(importlib.import_module("gptlab.serve.app"), name)
    raise AttributeError(f"module 'gptlab.serve' has no attribute {name!r}")
