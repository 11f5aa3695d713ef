"""OpenAI-shaped errors: ``{"error": {"message", "type", "param", "code"}}`` with the status
OpenAI uses (400 invalid request, 401 bad key, 404 unknown model, 429 rate limit / full
queue with ``Retry-After``). FastAPI's 422 validation errors become 400s here, so every
client error an OpenAI client can see has the shape it expects."""

from __future__ import annotations

import json

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException


class APIError(Exception):
    """Raise anywhere in a handler; rendered as OpenAI's error body."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.type = status, message, type
        self.param, self.code, self.headers = param, code, headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def invalid(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, "invalid_request_error", param, code)


def model_not_found(name: str) -> APIError:
    return APIError(404, f"The model `{name}` does not exist or you do not have access to it.",
                    "invalid_request_error", "model", "model_not_found")


def bad_key() -> APIError:
    return APIError(401, "Incorrect API key provided. Pass a gptlab key as "
                    "`Authorization: Bearer sk-...` (create one with `gptlab keys create`).",
                    "invalid_request_error", None, "invalid_api_key")


def rate_limited(message: str, retry_after: float, code: str = "rate_limit_exceeded") -> APIError:
    return APIError(429, message, "rate_limit_error", None, code,
                    headers={"Retry-After": str(max(1, int(retry_after + 0.999)))})


def _param(loc) -> str | None:
    """("body", "messages", 0, "content") -> "messages[0].content"."""
    parts = [p for p in loc if p not in ("body",)]
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or None


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    errors = exc.errors()
    if not errors:
        return "Invalid request body.", None
    first = errors[0]
    if first.get("type") == "json_invalid":
        return "We could not parse the JSON body of your request: it is not valid JSON (or not UTF-8).", None
    param = _param(first.get("loc", ()))
    msg = first.get("msg", "invalid value")
    where = f"'{param}'" if param else "the body"
    more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
    return f"Invalid value for {where}: {msg}{more}.", param


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(_request: Request, exc: APIError):
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, exc: RequestValidationError):
        message, param = _validation_message(exc)
        return invalid(message, param).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException):
        kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return APIError(exc.status_code, str(exc.detail), "invalid_request_error", None, kind,
                        headers=getattr(exc, "headers", None)).response()

    @app.exception_handler(UnicodeDecodeError)
    async def _unicode(_request: Request, _exc: UnicodeDecodeError):
        return invalid("The request body is not valid UTF-8.").response()

    @app.exception_handler(json.JSONDecodeError)
    async def _json(_request: Request, _exc: json.JSONDecodeError):
        return invalid("We could not parse the JSON body of your request.").response()


class BodyLimit:
    """ASGI middleware: request bodies over ``max_bytes`` get a 400 before any parsing,
    whether they announce their size (Content-Length) or stream it (chunked)."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        too_big = invalid(f"The request body is larger than this server's limit of "
                          f"{self.max_bytes} bytes.", code="request_too_large")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            return await too_big.response()(scope, receive, send)
        seen = 0

        async def limited_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise too_big
            return message

        try:
            await self.app(scope, limited_receive, send)
        except APIError as exc:  # only reachable before a response started (body not read yet)
            await exc.response()(scope, receive, send)
