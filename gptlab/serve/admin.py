"""The admin API that ``gptlab models`` calls: ``GET /admin/models``,
``POST /admin/models/{name}/promote|disable|enable``. An admin key with auth on; with auth
off, only requests a web page cannot forge (see ``check_local_admin``)."""

from __future__ import annotations

from urllib.parse import urlsplit

from fastapi import Depends, FastAPI, Request

from gptlab.serve.errors import APIError
from gptlab.serve.schemas import PromoteRequest
from gptlab.serve.settings import is_loopback

ADMIN_HEADER = "X-Gptlab-Admin"


def admin(request: Request) -> dict | None:
    """FastAPI dependency: the caller's admin key record (None with auth off)."""
    record = request.app.state.authenticate(request)
    if request.app.state.auth_on and not (record and record["admin"]):
        raise APIError(403, "This endpoint needs an admin key (gptlab keys create --admin).",
                       "permission_error", None, "admin_key_required")
    if not request.app.state.auth_on:
        check_local_admin(request)
    return record


def _refused(message: str) -> APIError:
    return APIError(403, message, "permission_error", None, "admin_request_refused")


def check_local_admin(request: Request) -> None:
    """With auth off (loopback), anyone who can reach the port is trusted, but a web page in
    the user's browser can reach it too. So the admin API answers only what a page cannot
    send without a CORS preflight (which this server never approves): a custom header
    (``X-Gptlab-Admin``) and, for a POST, a JSON body; and only for a loopback Host and
    Origin, so a DNS-rebinding page (Host: evil.example resolving to 127.0.0.1) is refused."""
    allowed = {request.app.state.settings.host, "localhost"}
    host = urlsplit("//" + request.headers.get("host", "")).hostname or ""
    if not (is_loopback(host) or host in allowed):
        raise _refused(f"Admin requests must name this server by a loopback address in Host "
                       f"(got {host[:80]!r}).")
    origin = request.headers.get("origin")
    if origin is not None and not is_loopback(urlsplit(origin).hostname or ""):
        raise _refused("Admin requests from a web page of another origin are refused.")
    if ADMIN_HEADER.lower() not in request.headers:
        raise _refused(f"Admin requests need the header `{ADMIN_HEADER}: 1` "
                       "(`gptlab models` sends it).")
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if request.method == "POST" and kind != "application/json":
        raise _refused("Admin POST requests need Content-Type: application/json.")


def add_admin_routes(app: FastAPI) -> None:
    reg = app.state.registry

    def listing() -> dict:
        return {"models": reg.describe(), "aliases": dict(reg.aliases)}

    @app.get("/admin/models")
    def admin_models(_key=Depends(admin)):
        return listing()

    @app.post("/admin/models/{name}/promote")
    def admin_promote(name: str, body: PromoteRequest, _key=Depends(admin)):
        reg.promote(name, body.alias)
        return listing()

    @app.post("/admin/models/{name}/disable")
    def admin_disable(name: str, _key=Depends(admin)):
        reg.set_enabled(name, False)
        return listing()

    @app.post("/admin/models/{name}/enable")
    def admin_enable(name: str, _key=Depends(admin)):
        reg.set_enabled(name, True)
        return listing()
