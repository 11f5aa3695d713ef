"""The feedback store: prompts, sampled responses, rankings, pairwise comparisons, thumbs.

One SQLAlchemy 2 schema shared by everything that produces or consumes human feedback:
`gptlab feedback simulate` (the gold judge plays the raters), the web chat's thumbs and
"which is better?" votes, `gptlab feedback import/export`, the reward model and DPO.

SQLite by default (a plain path or ``sqlite:///file.db``), in WAL mode with a busy timeout
and ``BEGIN IMMEDIATE`` transactions, so several processes can write at once without
"database is locked" errors; any other SQLAlchemy URL (PostgreSQL...) works unchanged.

`import_file` is all or nothing (one transaction: a bad record leaves the store as it was,
and the error names it) and idempotent: each imported pair carries the sha256 of its
prompt, chosen and rejected text (`comparisons.content_hash`, unique), so importing a file
again adds nothing. A store written before that column existed gets it on open (and its
earlier imports get their hashes), so it keeps working.

    store = FeedbackStore("runs/demo/feedback.db")
    pid = store.add_prompt([{"role": "user", "content": "Capital of France?"}])
    a, b = store.add_response(pid, "Paris."), store.add_response(pid, "Lyon.")
    store.add_comparison(pid, chosen_id=a, rejected_id=b, rater="alice", kind="human")
    store.pairs()   # -> [{"prompt": [...], "chosen": "Paris.", "rejected": "Lyon.", ...}]
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import weakref
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Sequence

from sqlalchemy import (JSON, DateTime, Float, ForeignKey, Index, Integer, String, Text, create_engine,
                        event, func, inspect, select, update)
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

RATER_KINDS = ("human", "judge", "import")


def _now() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    """Shared by every table of the store (the serving layer adds its own tables to it)."""


class _Row:
    """What every row of the store has: an id, first, and when it was written, last (after
    the table's own columns: SQLAlchemy places a mixin's columns after them)."""
    id: Mapped[int] = mapped_column(Integer, primary_key=True, sort_order=-1)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)


class _Judgement(_Row):
    """A rater's verdict: who gave it, and which kind of rater (RATER_KINDS)."""
    rater: Mapped[str] = mapped_column(String(128), default="")
    kind: Mapped[str] = mapped_column(String(16), default="human")


class Prompt(_Row, Base):
    __tablename__ = "prompts"
    messages: Mapped[list] = mapped_column(JSON)            # chat messages ending with a user turn
    source: Mapped[str] = mapped_column(String(64), default="")   # miniworld / web / import file
    meta: Mapped[dict] = mapped_column(JSON, default=dict)  # e.g. the miniworld record's meta


class Response(_Row, Base):
    __tablename__ = "responses"
    prompt_id: Mapped[int] = mapped_column(ForeignKey("prompts.id"), index=True)
    text: Mapped[str] = mapped_column(Text)
    model: Mapped[str] = mapped_column(String(256), default="")   # model name / version
    sampling: Mapped[dict] = mapped_column(JSON, default=dict)    # temperature, top_p, seed...


class Ranking(_Judgement, Base):
    """A K-wise ranking of responses to one prompt, best first."""
    __tablename__ = "rankings"
    prompt_id: Mapped[int] = mapped_column(ForeignKey("prompts.id"), index=True)
    response_ids: Mapped[list] = mapped_column(JSON)


class RankingTie(Base):
    """Pairs of a ranking its rater judged equally good, as positions (i < j) in the
    ranking's best-first order; `pairs()` does not turn them into preferences."""
    __tablename__ = "ranking_ties"
    ranking_id: Mapped[int] = mapped_column(ForeignKey("rankings.id"), primary_key=True)
    pairs: Mapped[list] = mapped_column(JSON)


class Comparison(_Judgement, Base):
    """One pairwise vote: `chosen` was preferred over `rejected`."""
    __tablename__ = "comparisons"
    prompt_id: Mapped[int] = mapped_column(ForeignKey("prompts.id"), index=True)
    chosen_id: Mapped[int] = mapped_column(ForeignKey("responses.id"))
    rejected_id: Mapped[int] = mapped_column(ForeignKey("responses.id"))
    # sha256 of (prompt, chosen, rejected) for imported pairs, so a re-import adds nothing;
    # NULL for votes (two people may cast the same vote). Older stores: see _migrate.
    # Last of the columns (sort_order), as it was added last.
    content_hash: Mapped[str | None] = mapped_column(String(64), nullable=True, default=None,
                                                     sort_order=1)

    __table_args__ = (Index("ix_comparisons_content_hash", "content_hash", unique=True),)


class Rating(_Judgement, Base):
    """Thumbs up (+1) or down (-1) on one response (or a score in between)."""
    __tablename__ = "ratings"
    response_id: Mapped[int] = mapped_column(ForeignKey("responses.id"), index=True)
    value: Mapped[float] = mapped_column(Float)


def database_url(url_or_path: str | Path) -> str:
    """A plain file path becomes an SQLite URL; URLs pass through, except that a bare
    ``postgresql://`` uses psycopg (3) when SQLAlchemy's default driver, psycopg2, is
    not installed."""
    s = str(url_or_path)
    if s.startswith("postgresql://"):
        import importlib.util
        if importlib.util.find_spec("psycopg2") is None and importlib.util.find_spec("psycopg"):
            return "postgresql+psycopg://" + s.removeprefix("postgresql://")
    return s if "://" in s else f"sqlite:///{Path(s).expanduser()}"


def _fresh_pool_after_fork(engine, close_before: bool = False) -> None:
    """A forked child must not use its parent's pooled connections (two processes on one
    SQLite connection corrupt each other's state: "disk I/O error"); SQLAlchemy's advice is
    dispose(close=False) in the child. ``close_before`` (SQLite files): also close the
    parent's idle connections before the fork, so the child inherits no file descriptor of
    the database at all. An inherited one is closed when the child frees it, and closing
    any descriptor of a file drops every POSIX lock the process holds on it, the locks of
    the child's own connection included: then two writers can write the WAL at once, and
    rows that were committed are lost (the likely cause of a CI run of
    test_store_loses_no_row_with_8_writers that lost 200 of 400). A weak reference, so stores can still be freed."""
    ref = weakref.ref(engine)

    def before():
        if (alive := ref()) is not None:
            alive.dispose()           # checked-in connections; it reconnects when next used

    def after_in_child():
        if (alive := ref()) is not None:
            alive.dispose(close=False)

    os.register_at_fork(after_in_child=after_in_child)
    if close_before:
        os.register_at_fork(before=before)


READ_ONLY = "gptlab_read_only"


def read_only(session: Session) -> Session:
    """``session``, its transaction begun as a read (SQLite: deferred, not IMMEDIATE)."""
    session.connection(execution_options={READ_ONLY: True})
    return session


def make_engine(url_or_path: str | Path):
    """An engine for the store; SQLite gets WAL, a busy timeout and BEGIN IMMEDIATE."""
    url = database_url(url_or_path)
    if not url.startswith("sqlite"):
        engine = create_engine(url, pool_pre_ping=True)
        _fresh_pool_after_fork(engine)
        return engine
    path = url.split("///", 1)[1] if "///" in url else ""   # "sqlite://" is in memory
    if path and path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": 60, "check_same_thread": False})
    _fresh_pool_after_fork(engine, close_before=bool(path) and path != ":memory:")

    @event.listens_for(engine, "connect")
    def _sqlite_setup(dbapi_conn, _record):
        dbapi_conn.isolation_level = None    # we issue BEGIN ourselves (below)
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA busy_timeout=60000")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _begin_immediate(conn):
        # Take the write lock at the start: a deferred transaction that reads and then writes
        # can fail with "database is locked" at once, whatever the busy timeout. A session
        # that only reads (``read_only``) starts deferred: under WAL it never waits for writers
        # nor holds them up (the server checks an API key on every request this way).
        conn.exec_driver_sql("BEGIN" if conn.get_execution_options().get(READ_ONLY) else "BEGIN IMMEDIATE")

    return engine


class FeedbackStore:
    """Read and write feedback. Safe to use from several processes at once."""

    def __init__(self, url: str | Path = "feedback.db"):
        self.url = database_url(url)
        self.engine = make_engine(url)
        Base.metadata.create_all(self.engine)
        _migrate(self.engine)
        self.Session = sessionmaker(self.engine, expire_on_commit=False)

    # ------------------------------------------------------------------ writes
    def _add(self, row) -> int:
        with self.Session.begin() as s:
            s.add(row)
            s.flush()
            return row.id

    def add_prompt(self, messages: Sequence[dict], source: str = "", meta: dict | None = None) -> int:
        _check_messages(messages)
        return self._add(Prompt(messages=list(messages), source=source, meta=meta or {}))

    def add_response(self, prompt_id: int, text: str, model: str = "",
                     sampling: dict | None = None) -> int:
        return self._add(Response(prompt_id=prompt_id, text=text, model=model,
                                  sampling=sampling or {}))

    def add_ranking(self, prompt_id: int, response_ids_best_first: Sequence[int], rater: str = "",
                    kind: str = "judge", ties: Sequence[Sequence[int]] | None = None) -> int:
        """`ties`: pairs of positions (in the best-first order) the rater found equal."""
        ids = [int(i) for i in response_ids_best_first]
        if len(ids) < 2 or len(set(ids)) != len(ids):
            raise ValueError(f"a ranking needs >= 2 distinct responses, got {ids}")
        _check_kind(kind)
        tie_pairs = _check_ties(ties, len(ids))
        with self.Session.begin() as s:
            r = Ranking(prompt_id=prompt_id, response_ids=ids, rater=rater, kind=kind)
            s.add(r)
            s.flush()
            if tie_pairs:
                s.add(RankingTie(ranking_id=r.id, pairs=tie_pairs))
            return r.id

    def add_comparison(self, prompt_id: int, chosen_id: int, rejected_id: int, rater: str = "",
                       kind: str = "human") -> int:
        if chosen_id == rejected_id:
            raise ValueError("chosen and rejected must be different responses")
        _check_kind(kind)
        return self._add(Comparison(prompt_id=prompt_id, chosen_id=chosen_id,
                                    rejected_id=rejected_id, rater=rater, kind=kind))

    def add_rating(self, response_id: int, value: float, rater: str = "", kind: str = "human") -> int:
        _check_kind(kind)
        return self._add(Rating(response_id=response_id, value=float(value), rater=rater, kind=kind))

    def add_pair(self, prompt: Sequence[dict], chosen: str, rejected: str, *, source: str = "",
                 rater: str = "", kind: str = "import", model: str = "") -> int:
        """Prompt + two responses + the comparison, in one transaction."""
        with self.Session.begin() as s:
            return _add_pair_rows(s, prompt, chosen, rejected, source=source, rater=rater,
                                  kind=kind, model=model)

    def add_ranked(self, prompt: Sequence[dict], responses: Sequence[str],
                   order_best_first: Sequence[int], *, source: str = "", meta: dict | None = None,
                   model: str = "", sampling: dict | None = None, rater: str = "",
                   kind: str = "judge", ties: Sequence[Sequence[int]] | None = None) -> int:
        """Prompt + its K responses + their ranking (indices into `responses`, best first),
        in one transaction, so an interrupted simulation never leaves half a prompt.
        `ties`: pairs of indices into `responses` that the rater found equally good."""
        _check_messages(prompt)
        _check_kind(kind)
        order = [int(i) for i in order_best_first]
        if sorted(order) != list(range(len(responses))) or len(order) < 2:
            raise ValueError(f"a ranking of {len(responses)} responses must order all of them "
                             f"(>= 2), got {order}")
        tie_idx = _check_ties(ties, len(responses))   # indices into responses
        with self.Session.begin() as s:
            p = Prompt(messages=list(prompt), source=source, meta=meta or {})
            s.add(p)
            s.flush()
            rows = [Response(prompt_id=p.id, text=t, model=model, sampling=sampling or {})
                    for t in responses]
            s.add_all(rows)
            s.flush()
            r = Ranking(prompt_id=p.id, response_ids=[rows[i].id for i in order], rater=rater,
                        kind=kind)
            s.add(r)
            s.flush()
            pos = {resp: n for n, resp in enumerate(order)}
            tie_pairs = _check_ties([(pos[a], pos[b]) for a, b in tie_idx], len(order))
            if tie_pairs:
                s.add(RankingTie(ranking_id=r.id, pairs=tie_pairs))
            return r.id

    # ------------------------------------------------------------------ reads
    def sources(self) -> list[str]:
        """The distinct prompt sources, first seen first."""
        with self.Session() as s:
            q = select(Prompt.source, func.min(Prompt.id)).group_by(Prompt.source)
            return [src for src, _ in sorted(s.execute(q).all(), key=lambda r: r[1])]

    def ranked_prompt_keys(self, source: str) -> set[str]:
        """`prompt_key` of every prompt of `source` that has a ranking (what a resumed
        simulation skips)."""
        with self.Session() as s:
            q = (select(Prompt.messages).join(Ranking, Ranking.prompt_id == Prompt.id)
                 .where(Prompt.source == source))
            return {prompt_key(m) for m in s.scalars(q)}

    def counts(self) -> dict[str, int]:
        with self.Session() as s:
            return {t.__tablename__: s.scalar(select(func.count()).select_from(t)) or 0
                    for t in (Prompt, Response, Ranking, Comparison, Rating)}

    def rankings(self, kinds: Iterable[str] | None = None, limit: int | None = None) -> list[dict]:
        """[{"prompt": messages, "meta", "responses": [texts best first], "rater", "kind",
        "ties": [[i, j], ...] positions judged equal}]"""
        with self.Session() as s:
            q = select(Ranking).order_by(Ranking.id)
            if kinds:
                q = q.where(Ranking.kind.in_(list(kinds)))
            if limit:
                q = q.limit(limit)
            rows = s.scalars(q).all()
            prompts = _by_id(s, Prompt, {r.prompt_id for r in rows})
            texts = _by_id(s, Response, {i for r in rows for i in r.response_ids})
            ties = _by_id(s, RankingTie, {r.id for r in rows}, key="ranking_id")
            return [{"prompt": prompts[r.prompt_id].messages, "meta": prompts[r.prompt_id].meta,
                     "responses": [texts[i].text for i in r.response_ids], "rater": r.rater,
                     "kind": r.kind, "ranking_id": r.id,
                     "ties": ties[r.id].pairs if r.id in ties else []} for r in rows]

    def comparisons(self, kinds: Iterable[str] | None = None) -> list[dict]:
        """Stored pairwise votes: [{"prompt", "meta", "chosen", "rejected", "rater", "kind"}]."""
        with self.Session() as s:
            q = select(Comparison).order_by(Comparison.id)
            if kinds:
                q = q.where(Comparison.kind.in_(list(kinds)))
            rows = s.scalars(q).all()
            prompts = _by_id(s, Prompt, {r.prompt_id for r in rows})
            texts = _by_id(s, Response, {i for r in rows for i in (r.chosen_id, r.rejected_id)})
            return [{"prompt": prompts[r.prompt_id].messages, "meta": prompts[r.prompt_id].meta,
                     "chosen": texts[r.chosen_id].text, "rejected": texts[r.rejected_id].text,
                     "rater": r.rater, "kind": r.kind} for r in rows]

    def pairs(self, kinds: Iterable[str] | None = None, limit: int | None = None) -> list[dict]:
        """Every preference as a pair: comparisons, plus each ranking expanded to its C(K,2)
        pairs (better first) less the pairs its rater called ties. `limit` caps the number
        of pairs, taken in insertion order."""
        out = self.comparisons(kinds)
        for r in self.rankings(kinds):
            tied = {tuple(t) for t in r["ties"]}
            for i, j in itertools.combinations(range(len(r["responses"])), 2):
                if (i, j) in tied:
                    continue
                out.append({"prompt": r["prompt"], "meta": r["meta"], "chosen": r["responses"][i],
                            "rejected": r["responses"][j], "rater": r["rater"], "kind": r["kind"]})
        return out[:limit] if limit else out

    def ratings(self) -> list[dict]:
        with self.Session() as s:
            rows = s.scalars(select(Rating).order_by(Rating.id)).all()
            return [{"response_id": r.response_id, "value": r.value, "rater": r.rater,
                     "kind": r.kind} for r in rows]

    # ------------------------------------------------------------------ files
    def import_file(self, path: str | Path, fmt: str = "auto", rater: str = "",
                    limit: int | None = None) -> "ImportCount":
        """UltraFeedback / HH-RLHF / TRL ``prompt,chosen,rejected`` files (or ``hf:`` data
        sets) -> comparisons; at most `limit` records are read.

        One transaction: a bad record raises (naming its file and line, or its number) and
        nothing of the file is stored. Pairs already in the store (same prompt, chosen and
        rejected, whoever rated them) or repeated in the file are skipped. Returns the number
        added, with ``.skipped``.
        """
        from gptlab.data.formats import iter_records  # deferred: formats pulls in torch

        source = str(path) if str(path).startswith("hf:") else Path(path).name
        # Read and check the whole file before the transaction starts, so the write lock
        # (SQLite) is held for the writes only, not for parsing or an hf: download.
        records = []
        for n, rec in enumerate(itertools.islice(iter_records(path, fmt, kind="prefs"), limit), 1):
            try:
                _check_messages(rec["prompt"])
            except ValueError as e:
                raise ValueError(f"{path}: record {n}: {e}; nothing was imported") from None
            records.append((pair_hash(rec["prompt"], rec["chosen"], rec["rejected"]), rec))
        for _ in range(2):
            try:
                return self._import_records(records, rater or source, source)
            except IntegrityError:  # a concurrent import committed some of these pairs first:
                pass                # run again, and they are skipped
        return self._import_records(records, rater or source, source)

    def _import_records(self, records: list[tuple[str, dict]], rater: str, source: str) -> "ImportCount":
        added = skipped = 0
        seen: set[str] = set()
        with self.Session.begin() as s:
            for digest, rec in records:
                if digest in seen or s.scalar(select(Comparison.id).where(
                        Comparison.content_hash == digest)) is not None:
                    skipped += 1
                    continue
                _add_pair_rows(s, rec["prompt"], rec["chosen"], rec["rejected"], source=source,
                               rater=rater, kind="import", content_hash=digest)
                seen.add(digest)
                added += 1
        return ImportCount(added, skipped)

    def export_trl(self, path: str | Path, kinds: Iterable[str] | None = None) -> int:
        """Write every pair as TRL's conversational ``prompt, chosen, rejected`` jsonl (atomic)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        pairs = self.pairs(kinds)
        with open(tmp, "w", encoding="utf-8") as f:
            for p in pairs:
                f.write(json.dumps({"prompt": p["prompt"],
                                    "chosen": [{"role": "assistant", "content": p["chosen"]}],
                                    "rejected": [{"role": "assistant", "content": p["rejected"]}]},
                                   ensure_ascii=False) + "\n")
        tmp.replace(path)
        return len(pairs)


class ImportCount(int):
    """The number of pairs an import added (an int), with ``.skipped``: those already there."""

    def __new__(cls, added: int, skipped: int = 0):
        obj = super().__new__(cls, added)
        obj.skipped = skipped
        return obj


def pair_hash(prompt: Sequence[dict], chosen: str, rejected: str) -> str:
    """sha256 of an imported pair's content (roles and texts; not rater, file or time)."""
    text = json.dumps({"prompt": json.loads(prompt_key(prompt)), "chosen": chosen,
                       "rejected": rejected}, ensure_ascii=False, sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _add_pair_rows(s: Session, prompt, chosen: str, rejected: str, *, source: str, rater: str,
                   kind: str, model: str = "", content_hash: str | None = None) -> int:
    _check_messages(prompt)
    _check_kind(kind)
    for name, text in (("chosen", chosen), ("rejected", rejected)):
        if not isinstance(text, str):
            raise ValueError(f"{name} must be a string, got {type(text).__name__}")
    p = Prompt(messages=list(prompt), source=source, meta={})
    s.add(p)
    s.flush()
    a = Response(prompt_id=p.id, text=chosen, model=model, sampling={})
    b = Response(prompt_id=p.id, text=rejected, model=model, sampling={})
    s.add_all([a, b])
    s.flush()
    c = Comparison(prompt_id=p.id, chosen_id=a.id, rejected_id=b.id, rater=rater, kind=kind,
                   content_hash=content_hash)
    s.add(c)
    s.flush()
    return c.id


def _migrate(engine) -> None:
    """Add what newer gptlab versions expect to a store an older one wrote: today the
    `comparisons.content_hash` column, its unique index, and the hashes of the pairs
    imported before (later duplicates of one pair keep NULL). Safe when several
    processes open the same old store at once: the loser's ALTER fails and is ignored."""
    def has_column() -> bool:
        return "content_hash" in {c["name"] for c in inspect(engine).get_columns("comparisons")}

    if has_column():
        return
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql("ALTER TABLE comparisons ADD COLUMN content_hash VARCHAR(64)")
            _backfill_hashes(conn)
            conn.exec_driver_sql("CREATE UNIQUE INDEX ix_comparisons_content_hash "
                                 "ON comparisons (content_hash)")
    except (OperationalError, ProgrammingError):
        if not has_column():
            raise


def _backfill_hashes(conn) -> None:
    rows = conn.execute(select(Comparison.id, Comparison.prompt_id, Comparison.chosen_id,
                               Comparison.rejected_id).where(Comparison.kind == "import")
                        .order_by(Comparison.id)).all()
    if not rows:
        return
    prompts = dict(conn.execute(select(Prompt.id, Prompt.messages)
                                .where(Prompt.id.in_({r.prompt_id for r in rows}))).all())
    texts = dict(conn.execute(select(Response.id, Response.text).where(
        Response.id.in_({i for r in rows for i in (r.chosen_id, r.rejected_id)}))).all())
    seen = set()
    for r in rows:
        digest = pair_hash(prompts[r.prompt_id], texts[r.chosen_id], texts[r.rejected_id])
        if digest not in seen:
            seen.add(digest)
            conn.execute(update(Comparison).where(Comparison.id == r.id).values(content_hash=digest))


def prompt_key(messages: Sequence[dict]) -> str:
    """A canonical string for a conversation (to find the same prompt again)."""
    return json.dumps([{"role": m["role"], "content": m["content"]} for m in messages],
                      ensure_ascii=False, sort_keys=True)


def _by_id(s: Session, table, ids: set, key: str = "id") -> dict:
    if not ids:
        return {}
    col = getattr(table, key)
    return {getattr(r, key): r for r in s.scalars(select(table).where(col.in_(list(ids))))}


def _check_ties(ties, k: int) -> list[list[int]]:
    """Tie pairs as sorted [i, j] positions, i < j < k, no duplicates."""
    out = sorted({tuple(sorted((int(a), int(b)))) for a, b in ties or []})
    for a, b in out:
        if a == b or not 0 <= a < b < k:
            raise ValueError(f"a tie pairs two different positions of the {k} ranked responses, "
                             f"got {(a, b)}")
    return [list(t) for t in out]


def _check_kind(kind: str) -> None:
    if kind not in RATER_KINDS:
        raise ValueError(f"rater kind must be one of {RATER_KINDS}, got {kind!r}")


def _check_messages(messages) -> None:
    if not isinstance(messages, (list, tuple)) or not messages:
        raise ValueError("a prompt is a non-empty list of chat messages")
    for m in messages:
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant") \
                or not isinstance(m.get("content"), str):
            raise ValueError(f"bad chat message {m!r}: need role system/user/assistant and "
                             f"string content")
