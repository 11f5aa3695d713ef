"""API keys and per-key rate limits.

A key is ``sk-gl-`` + 32 random URL-safe characters, shown once at creation; the database
keeps only its sha256 and its first 12 characters (the prefix ``gptlab keys list``
shows). The table lives in the feedback store's database (``Base`` of gptlab.feedback).

Limits are per key: requests per minute and tokens per minute (prompt + completion), over
a sliding 60-second window kept in memory by ``RateLimiter`` (a restart forgets it), and
requests in flight at once (``--max-concurrent-per-key``). A request's tokens are reserved
when it is admitted (prompt + max_tokens) and refunded to its real usage when it ends.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from collections import deque
from datetime import datetime, timezone

from sqlalchemy import Boolean, DateTime, Integer, String, select
from sqlalchemy.orm import Mapped, mapped_column

from gptlab.feedback import Base, FeedbackStore, read_only

TOKEN_PREFIX = "sk-gl-"
SHOWN_CHARS = 12


class ApiKey(Base):
    __tablename__ = "api_keys"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), default="")
    prefix: Mapped[str] = mapped_column(String(32), index=True)
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    admin: Mapped[bool] = mapped_column(Boolean, default=False)
    rpm: Mapped[int | None] = mapped_column(Integer, nullable=True)   # requests / minute
    tpm: Mapped[int | None] = mapped_column(Integer, nullable=True)   # tokens / minute
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True),
                                                 default=lambda: datetime.now(timezone.utc))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def key_record(row: ApiKey) -> dict:
    return {"id": row.id, "name": row.name, "prefix": row.prefix, "admin": row.admin,
            "rpm": row.rpm, "tpm": row.tpm, "created_at": row.created_at.isoformat(),
            "revoked": row.revoked_at is not None}


class KeyStore:
    """Create, list, revoke and check keys in the store's database."""

    def __init__(self, store: FeedbackStore):
        self.store = store

    def create(self, name: str = "", admin: bool = False, rpm: int | None = None,
               tpm: int | None = None) -> tuple[str, dict]:
        """Returns (the token -- shown only now, record)."""
        for value, what in ((rpm, "rpm"), (tpm, "tpm")):
            if value is not None and value < 1:
                raise ValueError(f"{what} must be >= 1 (or unset for no limit), got {value}")
        token = TOKEN_PREFIX + secrets.token_urlsafe(24)
        row = ApiKey(name=name, prefix=token[:SHOWN_CHARS], sha256=hash_token(token), admin=admin,
                     rpm=rpm, tpm=tpm)
        with self.store.Session.begin() as s:
            s.add(row)
            s.flush()
            return token, key_record(row)

    def list(self) -> list[dict]:
        with self.store.Session() as s:
            return [key_record(r) for r in s.scalars(select(ApiKey).order_by(ApiKey.id))]

    def revoke(self, id_or_prefix: str) -> dict:
        with self.store.Session.begin() as s:
            q = select(ApiKey)
            q = q.where(ApiKey.id == int(id_or_prefix)) if str(id_or_prefix).isdigit() \
                else q.where(ApiKey.prefix == id_or_prefix)
            rows = s.scalars(q).all()
            if len(rows) != 1:
                raise ValueError(f"no single key matches {id_or_prefix!r} (give its id or prefix "
                                 "from `gptlab keys list`)")
            rows[0].revoked_at = rows[0].revoked_at or datetime.now(timezone.utc)
            return key_record(rows[0])

    def verify(self, token: str) -> dict | None:
        """The key's record if the token is a live key, else None. Looked up by hash, so
        timing does not leak how much of a token matched."""
        if not token or not token.startswith(TOKEN_PREFIX) or len(token) > 200:
            return None
        with read_only(self.store.Session()) as s:
            row = s.scalars(select(ApiKey).where(ApiKey.sha256 == hash_token(token))).first()
            if row is None or row.revoked_at is not None:
                return None
            return key_record(row)


class LimitExceeded(Exception):
    """A request the key's limits do not admit now (``wait`` seconds) or ever (``wait`` None)."""

    def __init__(self, what: str, message: str, wait: float | None):
        super().__init__(message)
        self.what, self.message, self.wait = what, message, wait


class Reservation:
    """What one admitted request holds until it ends: its tokens in the key's tpm window
    (reserved as prompt + max_tokens) and one of the key's concurrency slots."""

    def __init__(self, limiter: "RateLimiter", key_id, entry: list | None):
        self.limiter, self.key_id, self.entry, self.done = limiter, key_id, entry, False

    def settle(self, used: int | None = None) -> None:
        """The request ended having used ``used`` tokens (None: keep the reservation, for a
        request whose usage is unknown). Frees its slot; later calls do nothing."""
        if self.done:
            return
        self.done = True
        with self.limiter._lock:
            if self.entry is not None and used is not None:
                self.entry[1] = min(self.entry[1], max(0, used))
            self.limiter._active[self.key_id] -= 1

    def __del__(self):  # a response that was never run (client gone before it started)
        self.settle()


class RateLimiter:
    """Per key id (thread-safe): requests/minute and tokens/minute over a sliding window, and
    requests in flight at once. Tokens are reserved when a request is admitted -- prompt
    plus max_tokens -- and refunded to what it used when it ends, so concurrent requests
    cannot together exceed the tpm: they would if tokens were counted only at the end."""

    WINDOW_S = 60.0

    def __init__(self, max_active: int | None = None):
        self.max_active = max_active
        # reentrant: a Reservation collected by the garbage collector settles itself, and the
        # collector can run in a thread that holds this lock
        self._lock = threading.RLock()
        self._requests: dict[int, deque] = {}
        self._tokens: dict[int, deque] = {}   # [time, tokens] lists, so a reservation can be settled
        self._active: dict[int, int] = {}

    def _trim(self, q: deque, now: float) -> None:
        while q and q[0][0] <= now - self.WINDOW_S:
            q.popleft()

    def admit(self, key: dict | None, tokens: int) -> Reservation | None:
        """Admit one request that may use up to ``tokens`` tokens, or raise LimitExceeded.
        None for a request without a key (auth off: no limits)."""
        if key is None:
            return None
        now, kid, tpm = time.monotonic(), key["id"], key.get("tpm")
        if tpm and tokens > tpm:
            raise LimitExceeded("tpm", f"This request may use {tokens} tokens (prompt + max_tokens), "
                                f"more than key {key['prefix']}...'s limit of {tpm} tokens per "
                                "minute: lower max_tokens.", None)
        with self._lock:
            reqs = self._requests.setdefault(kid, deque())
            toks = self._tokens.setdefault(kid, deque())
            self._trim(reqs, now)
            self._trim(toks, now)
            if self.max_active and self._active.get(kid, 0) >= self.max_active:
                raise LimitExceeded("concurrency", f"Key {key['prefix']}... already has {self.max_active} "
                                    "requests in flight, this server's limit per key.", 1.0)
            if key.get("rpm") and len(reqs) >= key["rpm"]:
                raise LimitExceeded("rpm", self._message(key), reqs[0][0] + self.WINDOW_S - now)
            if tpm and sum(n for _, n in toks) + tokens > tpm:
                raise LimitExceeded("tpm", self._message(key), toks[0][0] + self.WINDOW_S - now)
            reqs.append((now, 1))
            entry = [now, tokens]
            toks.append(entry)
            self._active[kid] = self._active.get(kid, 0) + 1
            return Reservation(self, kid, entry)

    @staticmethod
    def _message(key: dict) -> str:
        return f"Rate limit reached for key {key['prefix']}... (rpm {key['rpm']}, tpm {key['tpm']})."

    def active(self, key: dict) -> int:
        with self._lock:
            return self._active.get(key["id"], 0)


class WindowLimiter:
    """At most ``limit`` events per ``window_s`` seconds per name (thread-safe)."""

    def __init__(self, limit: int, window_s: float = 60.0):
        self.limit, self.window_s = limit, window_s
        self._lock = threading.Lock()
        self._events: dict[str, deque] = {}

    def hit(self, name: str) -> float | None:
        """Count one event now; None if allowed, else the seconds to wait."""
        now = time.monotonic()
        with self._lock:
            q = self._events.setdefault(name, deque())
            while q and q[0] <= now - self.window_s:
                q.popleft()
            if len(q) >= self.limit:
                return q[0] + self.window_s - now
            q.append(now)
            return None
