"""The server's moderation hooks (``--moderation DIR --moderate input|output|both``): which
texts are flagged by the gptlab.safety moderator, and the refusal that replaces a reply."""

from __future__ import annotations

REFUSAL = "I'm sorry, but I can't help with that."


def load_moderator(path):
    try:
        from gptlab.safety import Moderator     # optional: the moderation classifier
    except ImportError as exc:
        raise ValueError("--moderation needs gptlab.safety (the moderation classifier), "
                         f"which is not available: {exc}") from exc
    return Moderator.load(path)


def moderate(app, texts: list[str]) -> list[dict]:
    return app.state.moderator.moderate(texts)


def input_flag(app, texts: list[str]) -> dict | None:
    """The moderation result of the first flagged input text, else None. Every message is
    read -- system, earlier turns, an assistant prefill -- since any of them steers the
    reply; the moderator NFKC-normalizes (fullwidth letters read as ASCII)."""
    if app.state.moderate not in ("input", "both"):
        return None
    texts = [t for t in texts if t and t.strip()]
    return next((r for r in moderate(app, texts) if r["flagged"]), None) if texts else None


def output_flags(app, texts: list[str]) -> list[dict | None]:
    if app.state.moderate not in ("output", "both"):
        return [None] * len(texts)
    return [r if r["flagged"] else None for r in moderate(app, texts)]


def refusal_text(result: dict) -> str:
    """gptlab.safety's refusal (with crisis resources for self-harm), or a plain one."""
    try:
        from gptlab.safety import refusal_for
    except ImportError:
        return REFUSAL
    return refusal_for(result)


def moderation_header(stages: list[str], cache: bool = True) -> dict:
    """Response headers: with --moderation-action flag, what was flagged goes in
    X-Gptlab-Moderation."""
    headers = {"Cache-Control": "no-cache"} if cache else {}
    if stages:
        headers["X-Gptlab-Moderation"] = "flagged:" + ",".join(stages)
    return headers
