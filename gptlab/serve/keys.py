"""API keys and per-key rate limits.

A key is ``sk-gl-`` + 32 random URL-safe characters, shown once at creation; the database
keeps only its sha256 and its first 12 characters (the prefix ``gptlab keys list``
shows). The table lives in the feedback store's database (``Base`` of gptlab.feedback).

Limits are per key, requests per minute and tokens per minute (prompt + completion), over
a sliding 60-second window kept in memory by ``RateLimiter`` (a restart forgets it).
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

from gptlab.feedback import Base, FeedbackStore

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
        with self.store.Session() as s:
            row = s.scalars(select(ApiKey).where(ApiKey.sha256 == hash_token(token))).first()
            if row is None or row.revoked_at is not None:
                return None
            return key_record(row)


class RateLimiter:
    """Sliding-window requests/minute and tokens/minute per key id (thread-safe)."""

    WINDOW_S = 60.0

    def __init__(self):
        self._lock = threading.Lock()
        self._requests: dict[int, deque] = {}
        self._tokens: dict[int, deque] = {}

    def _trim(self, q: deque, now: float) -> None:
        while q and q[0][0] <= now - self.WINDOW_S:
            q.popleft()

    def check(self, key: dict, prompt_tokens: int = 0) -> float | None:
        """Admit one request now (and count it), or return the seconds to wait."""
        now = time.monotonic()
        with self._lock:
            reqs = self._requests.setdefault(key["id"], deque())
            toks = self._tokens.setdefault(key["id"], deque())
            self._trim(reqs, now)
            self._trim(toks, now)
            if key.get("rpm") and len(reqs) >= key["rpm"]:
                return reqs[0][0] + self.WINDOW_S - now
            used = sum(n for _, n in toks)
            if key.get("tpm") and toks and used + prompt_tokens > key["tpm"]:
                return toks[0][0] + self.WINDOW_S - now
            reqs.append((now, 1))
            return None

    def add_tokens(self, key: dict | None, n: int) -> None:
        if key is None or n <= 0:
            return
        with self._lock:
            self._tokens.setdefault(key["id"], deque()).append((time.monotonic(), n))
