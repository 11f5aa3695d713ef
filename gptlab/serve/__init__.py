"""gptlab's server: an OpenAI-compatible API with continuous batching, API keys and rate
limits, a model registry with aliases and an off switch, constrained JSON decoding, and
moderation hooks. ``create_app(ServeSettings(models=[...]))`` builds the FastAPI app;
``gptlab serve`` runs it with uvicorn (docs/SERVING.md)."""

from gptlab.serve.app import ServeSettings, create_app

__all__ = ["ServeSettings", "create_app"]
