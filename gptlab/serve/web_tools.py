"""Tools the server runs for the web chat: off unless the operator enables them.

``gptlab serve ... --enable-tools lookup,calculator[,python] --world DIR`` lets the web chat
offer those built-in tools (gptlab/tools.py; the lookup reads DIR/kb.json). The page then
sends their definitions with ``/v1/chat/completions`` when the person ticks *Tools*, shows
each call the model makes, and only after the person presses *Run* asks the server to run it
here; the result goes back to the model in a ``tool`` turn (the loop is in static/app.js).

- ``GET /api/tools``: the enabled tools' definitions (an empty list when tools are off, so
  the page shows no toggle).
- ``POST /api/tools/run`` ``{"name", "arguments"}`` -> ``{"name", "ok", "content"}``:
  ``content`` is what goes back to the model. A 403 when the operator enabled no tool.
  Everything else -- a tool that is not enabled, arguments that are not JSON or do not fit
  the tool's parameters, an unknown entity, a program that fails, a run past the time
  limit -- is a result with ``ok: false`` and ``{"error": ...}`` content, never a 500.

The OpenAI API is not affected: there tools stay client-side (the server never runs a
client's tool). Calls are bounded: arguments of at most ``MAX_ARGUMENT_CHARS``, results cut
at ``MAX_RESULT_CHARS``, ``MAX_CONCURRENT_RUNS`` at once, ``RUNS_PER_MINUTE`` per caller,
each within ``RUN_TIMEOUT_S`` (the python tool's sandbox stops a program after 5 s).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from fastapi import FastAPI, Request
from pydantic import BaseModel, Field

from gptlab.serve.errors import APIError, rate_limited
from gptlab.serve.keys import WindowLimiter
from gptlab.serve.web import Owner, key_id
from gptlab.tools import KnowledgeBase, ToolResult, load_kb, parse_tool_names, run_tool, tool_specs

log = logging.getLogger("gptlab.serve")

MAX_ARGUMENT_CHARS = 8_000     # a call's arguments, as JSON text
MAX_RESULT_CHARS = 4_000       # what goes back to the model (and into the chat)
MAX_CONCURRENT_RUNS = 2        # tool runs at once (a python run is a process of its own)
RUNS_PER_MINUTE = 60           # per API key (auth on) or per client address (auth off)
RUN_TIMEOUT_S = 15.0           # the python sandbox's own limit is 5 s; this bounds the rest
SLOT_WAIT_S = 10.0             # how long a run waits for a free slot before it is a tool error


@dataclass
class ServerTools:
    """The tools the operator enabled, and what they need to run."""

    names: list[str]
    kb: KnowledgeBase | None = None
    runs: WindowLimiter = field(default_factory=lambda: WindowLimiter(RUNS_PER_MINUTE))
    slots: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(MAX_CONCURRENT_RUNS))

    def specs(self) -> list[dict]:
        return tool_specs(self.names)

    async def run(self, name: str, arguments) -> ToolResult:
        """Run one call within the limits; every failure is a ``{"error": ...}`` result."""
        text = arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)
        if len(text) > MAX_ARGUMENT_CHARS:
            return error_result(f"the arguments are longer than {MAX_ARGUMENT_CHARS} characters")
        try:
            await asyncio.wait_for(self.slots.acquire(), SLOT_WAIT_S)
        except asyncio.TimeoutError:
            return error_result("the server is busy running other tool calls; try again")
        try:
            result = await asyncio.wait_for(
                asyncio.to_thread(run_tool, name, arguments, kb=self.kb, allowed=self.names), RUN_TIMEOUT_S)
        except asyncio.TimeoutError:
            return error_result(f"the tool ran past {RUN_TIMEOUT_S:g} s and was stopped")
        except Exception as exc:  # a tool that broke (not a bad call): logged, and told to the model
            log.exception("tool %s failed", name)
            return error_result(f"the tool failed: {type(exc).__name__}")
        finally:
            self.slots.release()
        if len(result.content) > MAX_RESULT_CHARS:
            result = ToolResult(result.content[:MAX_RESULT_CHARS] + " [cut]", result.ok)
        return result


def error_result(message: str) -> ToolResult:
    return ToolResult(json.dumps({"error": message}, ensure_ascii=False), False)


def load_server_tools(settings) -> ServerTools | None:
    """The operator's tools (``settings.enable_tools``, ``settings.world``), None when none
    is enabled. A ValueError (one clear line) for an unknown tool name, a lookup without a
    knowledge base, or --world without the lookup; FileNotFoundError when WORLD has no kb.json."""
    if not settings.enable_tools:
        if settings.world:
            raise ValueError("--world is read only by the lookup tool: add --enable-tools lookup "
                             "(or leave --world out)")
        return None
    spec = settings.enable_tools
    spec = spec if isinstance(spec, str) else ",".join(spec)   # "lookup,calculator" or a list of names
    names = parse_tool_names(spec)   # ValueError: unknown tool 'x'; built-in tools: ...
    if not names:
        raise ValueError(f"--enable-tools {spec!r} names no tool; built-in tools: lookup, calculator, python")
    if "lookup" not in names:
        if settings.world:
            raise ValueError("--world is read only by the lookup tool, which --enable-tools leaves out")
        return ServerTools(names)
    if not settings.world:
        raise ValueError("--enable-tools lookup needs --world DIR: the miniworld directory whose "
                         "kb.json the lookup reads (make one with `gptlab data world`)")
    return ServerTools(names, KnowledgeBase(load_kb(settings.world)))


# ----------------------------------------------------------------------------- routes


class ToolRunIn(BaseModel):
    name: str = Field(min_length=1, max_length=64)
    arguments: str | dict[str, Any] = "{}"   # the call's JSON text (as in tool_calls), or an object


def add_tool_routes(app: FastAPI) -> None:
    @app.get("/api/tools", tags=["web"])
    def list_tools(who: Owner, request: Request):
        """The tools this server runs for the web chat: [] unless the operator enabled some."""
        tools = request.app.state.tools
        return {"tools": tools.specs() if tools else []}

    @app.post("/api/tools/run", tags=["web"])
    async def run(body: ToolRunIn, who: Owner, request: Request):
        """Run one call the person confirmed; the result is for the model's tool turn."""
        tools = request.app.state.tools
        if tools is None:
            raise APIError(403, "Tools are not enabled on this server: the operator starts it with "
                           "--enable-tools lookup,calculator (see docs/SERVING.md).", "permission_error",
                           None, "tools_disabled")
        _check_host(request)
        _check_rate(request, tools)
        result = await tools.run(body.name, body.arguments)
        return {"name": body.name, "ok": result.ok, "content": result.content}


def _check_host(request: Request) -> None:
    """With auth off, anyone who can reach the port may run tools, and so may a web page the
    person visits if it reaches this server under a name of its own (DNS rebinding: Host
    evil.example resolving to 127.0.0.1). The page's custom user header already rules out a
    cross-origin request (its CORS preflight is never approved), so only the Host is checked:
    an IP address, localhost, or the --host the server was started with."""
    if request.app.state.auth_on:
        return
    host = urlsplit("//" + request.headers.get("host", "")).hostname or ""
    if host in ("localhost", request.app.state.settings.host) or _is_ip(host):
        return
    raise APIError(403, f"Tool calls must name this server by its address in Host (got {host[:80]!r}); "
                   "a server reached by another name needs auth on.", "permission_error", None,
                   "tools_host_refused")


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _check_rate(request: Request, tools: ServerTools) -> None:
    record = request.app.state.authenticate(request)
    caller = f"key:{key_id(record)}" if record else f"addr:{request.client.host if request.client else '?'}"
    wait = tools.runs.hit(caller)
    if wait is not None:
        raise rate_limited(f"Too many tool calls from {caller}: at most {RUNS_PER_MINUTE} a minute. "
                           f"Try again in {wait:.0f} s.", wait)
