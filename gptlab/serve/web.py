"""The web chat: the page at ``/``, its static files, and the small JSON API it keeps state in.

The page (``static/index.html`` + ``app.js``) talks to the OpenAI-compatible routes for
everything the model does (``GET /v1/models``, ``POST /v1/chat/completions`` with
``stream: true``, ``n: 2`` for a "which is better?" pair) and to the ``/api/`` routes here
for everything it must remember:

- ``/api/conversations``: chat history per user, one row per conversation (messages as JSON);
- ``/api/settings``: a user's custom instructions and default system message
  (personalization, folded into the system message the page sends);
- ``/api/rate``: thumbs up/down -> prompt + response + a ``Rating`` of +1/-1 in the feedback
  store;
- ``/api/compare``: the A/B vote -> prompt + both responses + a ``Comparison``
  (``kind="human"``, ``rater`` = the API key or the client's address) -- the pairs the reward model and DPO train on;
- ``/api/fit``: how many of the oldest turns to leave out so a chat fits the model's
  context with room for the reply (counted with the model's own chat template);
- ``/api/tools``: the built-in tools the operator enabled, run on the person's say-so
  (gptlab.serve.web_tools; chats keep their tool calls and ``tool`` turns).

Who is asking: the name the user typed once (header ``X-Gptlab-User``, percent-encoded since
header values are latin-1; plain ASCII names need no encoding), scoped by the API key
when the server has auth on (``app.state.authenticate``), so two keys never see each other's
history even under the same name. The tables live in the feedback store's database and
subclass ``feedback.Base``.
"""

from __future__ import annotations

import json
import math
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import unquote
from uuid import uuid4

from fastapi import Depends, FastAPI, Header, Request
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from sqlalchemy import JSON, DateTime, String, Text, delete, select
from sqlalchemy.orm import Mapped, mapped_column

from gptlab.feedback import Base, Comparison, Prompt, Rating, Response
from gptlab.serve.errors import APIError, invalid, rate_limited
from gptlab.serve.prompts import chat_prompt
from gptlab.serve.schemas import ChatCompletionRequest, ChatMessage, ToolCall
from gptlab.serve.tools import plan_tools

STATIC_DIR = Path(__file__).with_name("static")
USER_HEADER = "X-Gptlab-User"
MAX_USER_LEN = 64
MAX_CONVERSATIONS = 200   # listed per user, newest first


def _now() -> datetime:
    return datetime.now(timezone.utc)


class WebConversation(Base):
    """One chat of the web page: its messages (with A/B and rating marks) and settings."""
    __tablename__ = "web_conversations"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    owner: Mapped[str] = mapped_column(String(256), index=True)   # api key id + "/" + user name
    title: Mapped[str] = mapped_column(String(200), default="")
    system: Mapped[str] = mapped_column(Text, default="")
    messages: Mapped[list] = mapped_column(JSON, default=list)
    model: Mapped[str] = mapped_column(String(256), default="")
    settings: Mapped[dict] = mapped_column(JSON, default=dict)     # temperature, stop, ...
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)


class WebUserSettings(Base):
    """Personalization: custom instructions and the default system message of one user."""
    __tablename__ = "web_user_settings"
    owner: Mapped[str] = mapped_column(String(256), primary_key=True)
    custom_instructions: Mapped[str] = mapped_column(Text, default="")
    system: Mapped[str] = mapped_column(Text, default="")
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)


# --------------------------------------------------------------------------- request bodies

class Message(BaseModel):
    role: Literal["system", "user", "assistant", "tool"]
    content: str
    tool_calls: list[ToolCall] | None = None     # an assistant turn's calls (web chat tools)
    tool_call_id: str | None = Field(None, max_length=256)   # the call a tool turn answers


class ConversationIn(BaseModel):
    id: str | None = Field(None, max_length=36)
    title: str = Field("", max_length=200)
    system: str = ""
    messages: list[dict[str, Any]] = []    # role/content plus the page's own marks (ab, rating)
    model: str = Field("", max_length=256)
    settings: dict[str, Any] = {}


class SettingsIn(BaseModel):
    custom_instructions: str = Field("", max_length=20_000)
    system: str = Field("", max_length=20_000)


class RateIn(BaseModel):
    messages: list[Message] = Field(min_length=1)   # the prompt, ending with the user turn
    response: str
    value: float = Field(ge=-1, le=1)              # +1 thumbs up, -1 thumbs down
    model: str = ""
    sampling: dict[str, Any] = {}
    response_id: int | None = Field(None, ge=1, le=2 ** 63 - 1)   # re-rate a stored response


class Answer(BaseModel):
    text: str
    model: str = ""
    sampling: dict[str, Any] = {}


class FitIn(BaseModel):
    model: str = Field(min_length=1, max_length=256)
    messages: list[Message] = Field(min_length=1)   # an optional system message, then the turns
    reply_tokens: int = Field(1, ge=1, le=2 ** 31)   # room to leave for the reply when possible
    tools: list | None = None                        # the definitions the chat request will send


class CompareIn(BaseModel):
    messages: list[Message] = Field(min_length=1)
    a: Answer
    b: Answer
    winner: Literal["a", "b", "tie"]


# --------------------------------------------------------------------------- helpers

def key_id(record) -> str:
    """A stable id for the API key record `authenticate` returned (None without auth)."""
    if record is None:
        return ""
    for name in ("id", "key_id", "name"):
        value = record.get(name) if isinstance(record, dict) else getattr(record, name, None)
        if value:
            return str(value)
    return str(record)


def owner(request: Request,
          x_gptlab_user: Annotated[str, Header(description="the name you chat under")] = "") -> str:
    """Dependency: '<key id>/<user name>'. Raises the API's 401 for a bad key (auth on), 400
    for a missing or bad name."""
    auth = getattr(request.app.state, "authenticate", None)
    record = auth(request) if auth else None
    user = unquote(x_gptlab_user).strip()   # the page percent-encodes it (headers are latin-1)
    if not user:
        raise invalid(f"missing header {USER_HEADER}: the name you chat under", USER_HEADER)
    if len(user) > MAX_USER_LEN or not re.fullmatch(r"[\w .@+-]+", user):
        raise invalid(f"bad user name {user[:80]!r}: up to {MAX_USER_LEN} letters, digits, spaces "
                      "and . @ + - _", USER_HEADER)
    return f"{key_id(record)}/{user}"


Owner = Annotated[str, Depends(owner)]


def _rater(owner_id: str) -> str:
    return owner_id.split("/", 1)[1]


def _store(request: Request):
    """The app's FeedbackStore, with the web tables created on first use (the store may have
    been opened before this module defined them)."""
    store = request.app.state.store
    if not getattr(store, "_web_tables", False):
        Base.metadata.create_all(store.engine, tables=[WebConversation.__table__,
                                                       WebUserSettings.__table__])
        store._web_tables = True
    return store


def _not_found(cid: str) -> APIError:
    return APIError(404, f"no conversation {cid!r}", "invalid_request_error", "id", "not_found")


def _summary(c: WebConversation) -> dict:
    return {"id": c.id, "title": c.title, "model": c.model, "updated_at": c.updated_at.isoformat()}


def _full(c: WebConversation) -> dict:
    return {**_summary(c), "system": c.system, "messages": c.messages, "settings": c.settings}


def _check_storable(value, param: str = "") -> None:
    """Reject what a database or a JSON reply cannot hold: lone surrogates (not UTF-8) and
    NaN / infinity (not JSON)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise invalid(f"'{param}' is not valid Unicode (a lone surrogate)", param) from None
    elif isinstance(value, float) and not math.isfinite(value):
        raise invalid(f"'{param}' must be a finite number, got {value}", param)
    elif isinstance(value, dict):
        for k, v in value.items():
            _check_storable(k, param)
            _check_storable(v, f"{param}.{k}" if param else str(k))
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_storable(v, f"{param}[{i}]")


def _check_messages(messages: list[dict]) -> None:
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant", "tool") \
                or not isinstance(m.get("content"), str):
            raise invalid(f"messages[{i}] must have role system/user/assistant/tool and string content",
                          f"messages[{i}]")


def _prompt(messages: list[Message]) -> list[dict]:
    """Chat messages for the feedback store: they must end with the user turn answered (or,
    after tool calls, the tool results the answer read)."""
    out = [m.model_dump(exclude_none=True) for m in messages]
    if out[-1]["role"] not in ("user", "tool"):
        raise invalid("messages must end with the user turn (or the tool results) the answers reply to",
                      "messages")
    return out


# --------------------------------------------------------------------------- routes

def add_web_routes(app: FastAPI) -> None:
    """Serve the web chat at ``/`` and ``/static/*`` and its JSON API under ``/api/``."""
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/", include_in_schema=False)
    def index():
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    _add_conversation_routes(app)
    _add_settings_routes(app)
    _add_feedback_routes(app)
    _add_fit_route(app)


def _add_conversation_routes(app: FastAPI) -> None:
    @app.get("/api/conversations", tags=["web"])
    def list_conversations(who: Owner, request: Request):
        """Your chats, newest first."""
        with _store(request).Session() as s:
            rows = s.scalars(select(WebConversation).where(WebConversation.owner == who)
                             .order_by(WebConversation.updated_at.desc()).limit(MAX_CONVERSATIONS))
            return {"data": [_summary(c) for c in rows]}

    @app.get("/api/conversations/{cid}", tags=["web"])
    def get_conversation(cid: str, who: Owner, request: Request):
        with _store(request).Session() as s:
            c = s.get(WebConversation, cid)
            if c is None or c.owner != who:
                raise _not_found(cid)
            return _full(c)

    @app.post("/api/conversations", tags=["web"])
    def save_conversation(body: ConversationIn, who: Owner, request: Request):
        """Create (no id) or replace a chat; returns its id and title."""
        _check_storable(body.model_dump())
        _check_messages(body.messages)
        with _store(request).Session.begin() as s:
            c = s.get(WebConversation, body.id) if body.id else None
            if c is not None and c.owner != who:
                raise _not_found(body.id)
            if c is None:
                c = WebConversation(id=body.id or str(uuid4()), owner=who)
                s.add(c)
            c.title = body.title or _title(body.messages)
            c.system, c.messages, c.model = body.system, body.messages, body.model
            c.settings, c.updated_at = body.settings, _now()
            s.flush()
            return _summary(c)

    @app.delete("/api/conversations/{cid}", tags=["web"])
    def delete_conversation(cid: str, who: Owner, request: Request):
        with _store(request).Session.begin() as s:
            n = s.execute(delete(WebConversation).where(WebConversation.id == cid,
                                                        WebConversation.owner == who)).rowcount
        return {"id": cid, "deleted": bool(n)}


def _title(messages: list[dict]) -> str:
    first = next((m["content"] for m in messages if m.get("role") == "user"), "New chat")
    first = " ".join(first.split())
    return first[:60] + ("…" if len(first) > 60 else "")


def _add_settings_routes(app: FastAPI) -> None:
    @app.get("/api/settings", tags=["web"])
    def get_settings(who: Owner, request: Request):
        """Your custom instructions and default system message."""
        with _store(request).Session() as s:
            row = s.get(WebUserSettings, who)
            return {"user": _rater(who), "custom_instructions": row.custom_instructions if row else "",
                    "system": row.system if row else ""}

    @app.put("/api/settings", tags=["web"])
    def put_settings(body: SettingsIn, who: Owner, request: Request):
        _check_storable(body.model_dump())
        with _store(request).Session.begin() as s:
            row = s.get(WebUserSettings, who) or WebUserSettings(owner=who)
            row.custom_instructions, row.system, row.updated_at = (body.custom_instructions,
                                                                   body.system, _now())
            s.add(row)
        return {"user": _rater(who), **body.model_dump()}


MAX_VOTE_BYTES = 64_000   # a vote's prompt + answers, as JSON


def _voter(request: Request, body) -> str:
    """Who a vote is attributed to -- the API key (auth on) or the client's address (auth
    off), never the name the page sends -- after its size and the voter's rate are checked
    (a vote trains the reward model: no 500 KB "human" votes, no floods)."""
    size = len(json.dumps(body.model_dump(), ensure_ascii=False).encode())
    if size > MAX_VOTE_BYTES:
        raise invalid(f"a vote may hold at most {MAX_VOTE_BYTES} bytes of text, got {size}",
                      code="request_too_large")
    record = request.app.state.authenticate(request)
    voter = f"key:{key_id(record)}" if record else f"addr:{request.client.host if request.client else '?'}"
    limiter = getattr(request.app.state, "vote_limiter", None)
    wait = limiter.hit(voter) if limiter else None
    if wait is not None:
        raise rate_limited(f"Too many votes from {voter}: at most {limiter.limit} a minute. "
                           f"Try again in {wait:.0f} s.", wait)
    return voter


def _add_feedback_routes(app: FastAPI) -> None:
    @app.post("/api/rate", tags=["web"])
    def rate(body: RateIn, who: Owner, request: Request):
        """Thumbs: store the prompt and the response (once), then a Rating."""
        voter = _voter(request, body)
        _check_storable(body.model_dump())
        prompt = _prompt(body.messages)
        with _store(request).Session.begin() as s:   # one transaction: no half-stored votes
            if body.response_id is None:
                response = _add_answer(s, _add_prompt(s, prompt, {"web": "rating"}),
                                       Answer(text=body.response, model=body.model,
                                              sampling=body.sampling))
            else:
                response = s.get(Response, body.response_id)
                if response is None or response.text != body.response:
                    raise invalid(f"response_id {body.response_id} is not this response",
                                  "response_id")
            rating = Rating(response_id=response.id, value=body.value, rater=voter, kind="human")
            s.add(rating)
            s.flush()
            return {"response_id": response.id, "rating_id": rating.id}

    @app.post("/api/compare", tags=["web"])
    def compare(body: CompareIn, who: Owner, request: Request):
        """The A/B vote: prompt + both answers + a human Comparison (none for a tie)."""
        voter = _voter(request, body)
        _check_storable(body.model_dump())
        prompt = _prompt(body.messages)
        if body.a.text == body.b.text and body.winner != "tie":
            raise invalid("the two answers are the same text: vote 'tie'", "winner")
        with _store(request).Session.begin() as s:
            pid = _add_prompt(s, prompt, {"web": "ab", "winner": body.winner})
            ids = {"a": _add_answer(s, pid, body.a).id, "b": _add_answer(s, pid, body.b).id}
            cid = None
            if body.winner != "tie":   # a tie says nothing about which is better: no pair to learn
                loser = "b" if body.winner == "a" else "a"
                vote = Comparison(prompt_id=pid, chosen_id=ids[body.winner], rejected_id=ids[loser],
                                  rater=voter, kind="human")
                s.add(vote)
                s.flush()
                cid = vote.id
            return {"prompt_id": pid, "response_ids": ids, "comparison_id": cid}


def _add_prompt(s, messages: list[dict], meta: dict) -> int:
    row = Prompt(messages=messages, source="web", meta=meta)
    s.add(row)
    s.flush()
    return row.id


def _add_answer(s, prompt_id: int, answer: Answer) -> Response:
    row = Response(prompt_id=prompt_id, text=answer.text, model=answer.model, sampling=answer.sampling)
    s.add(row)
    s.flush()
    return row


def _add_fit_route(app: FastAPI) -> None:
    @app.post("/api/fit", tags=["web"])
    def fit(body: FitIn, who: Owner, request: Request):
        """Which of the oldest turns to leave out so that the prompt plus ``reply_tokens`` fits
        the model's context: ``{dropped, prompt_tokens, context_length}``, where ``dropped``
        counts the messages after the system message (which is always kept) to leave out.
        It cuts at user turns only, and drops nothing when everything fits. When even the
        last user turn leaves less room than ``reply_tokens``, that turn alone is the prompt;
        400 context_length_exceeded when it leaves no room at all. ``tools``: the definitions
        the chat request will carry (they take prompt tokens too)."""
        _check_storable(body.model_dump())
        entry = request.app.state.registry.resolve(body.model)
        dropped, tokens = fit_turns(entry, body.messages, body.reply_tokens, body.tools)
        return {"model": entry.name, "context_length": entry.context, "dropped": dropped,
                "prompt_tokens": tokens}


def fit_turns(entry, messages: list[Message], reply_tokens: int,
              tools: list | None = None) -> tuple[int, int]:
    """(messages after the system message to drop, prompt tokens of what is kept). A cut
    falls only before a user turn, so a tool call and its results are kept or left out together."""
    system = [ChatMessage(role="system", content=m.content) for m in messages[:1] if m.role == "system"]
    turns = [ChatMessage(role=m.role, content=m.content, tool_calls=m.tool_calls, tool_call_id=m.tool_call_id)
             for m in messages[len(system):]]
    cuts = sorted({0} | {i for i, m in enumerate(turns) if m.role == "user"})
    plan = plan_tools(ChatCompletionRequest(model=entry.name, messages=system + turns, tools=tools)) \
        if tools else None   # the definitions, checked as the chat route checks them

    def count(k: int) -> int:   # the chat route's own count: template, cleaning, tool definitions
        return len(chat_prompt(entry, system + turns[cuts[k]:], plan))

    room = entry.context - reply_tokens
    whole = count(0)
    if whole <= room:
        return 0, whole
    lo, hi = 0, len(cuts) - 1       # binary search: fewer turns never take more tokens
    best = count(hi)
    if best <= room:
        while hi - lo > 1:          # invariant: count(lo) > room >= count(hi)
            mid = (lo + hi) // 2
            tokens = count(mid)
            if tokens <= room:
                hi, best = mid, tokens
            else:
                lo = mid
    if best >= entry.context:
        raise invalid(f"The last message is too long for this model: alone (with any system message) "
                      f"it takes {best} tokens, and the model's context is {entry.context} tokens. "
                      "Shorten the message or the system message.", "messages", "context_length_exceeded")
    return cuts[hi], best
