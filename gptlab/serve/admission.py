"""Who may ask and how much: the API-key dependency of every route, and a request's
admission against its key's limits (tokens per minute, requests in flight), settled with
what it really used when it ends (gptlab.serve.keys)."""

from __future__ import annotations

from fastapi import Request

from gptlab.serve.errors import invalid, rate_limited
from gptlab.serve.keys import LimitExceeded


def auth(request: Request) -> dict | None:
    """FastAPI dependency: the caller's key record (None with auth off); a 401 when auth is
    on and the key is missing, revoked or wrong."""
    return request.app.state.authenticate(request)


def tenant(key: dict | None) -> str:
    """The prefix-cache partition of a request: its API key (one partition with auth off)."""
    return f"key:{key['id']}" if key else ""


def admit(request: Request, key: dict | None, tokens: int):
    """Admit the request against the key's limits, holding ``tokens`` (prompt + max_tokens)
    of its tpm and one of its concurrency slots; the Reservation (None without a key) is
    settled when the request ends."""
    try:
        return request.app.state.limiter.admit(key, tokens)
    except LimitExceeded as exc:
        if exc.wait is None:
            raise invalid(exc.message, "max_tokens", "request_too_large_for_limit")
        code = "too_many_concurrent_requests" if exc.what == "concurrency" else "rate_limit_exceeded"
        raise rate_limited(f"{exc.message} Try again in {exc.wait:.1f} s.", exc.wait, code=code)


def settle(hold, used: int | None) -> None:
    """End a reservation: ``used`` tokens (None: keep the whole reservation counted)."""
    if hold is not None:
        hold.settle(used)
