"""Which model versions the server offers, under which aliases, and which are switched off.

Each ``--model [NAME=]DIR`` is one *version* (NAME defaults to the directory's name; a
directory ending in ``final`` is named after its parent). An *alias* (``default``,
``candidate``, or any other name) points at one version; requests may name either. The
first version is ``default`` and the second ``candidate`` unless the database says
otherwise. ``disable`` takes a version off the API at once (new requests get 404
``model_disabled``, requests in flight end with that error); ``enable`` puts it back.
Aliases and the enabled flag are kept in the server's database (tables
``serve_models`` and ``serve_aliases``), so they survive a restart.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import Boolean, String, select
from sqlalchemy.orm import Mapped, mapped_column

from gptlab.feedback import Base, FeedbackStore
from gptlab.serve.errors import APIError, invalid, model_not_found

DEFAULT_ALIASES = ("default", "candidate")


class ServedModel(Base):
    __tablename__ = "serve_models"
    name: Mapped[str] = mapped_column(String(256), primary_key=True)
    path: Mapped[str] = mapped_column(String(1024), default="")
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)


class ModelAlias(Base):
    __tablename__ = "serve_aliases"
    alias: Mapped[str] = mapped_column(String(64), primary_key=True)
    model: Mapped[str] = mapped_column(String(256))


def parse_model_spec(spec: str) -> tuple[str, Path]:
    """"NAME=DIR" or "DIR" -> (name, dir)."""
    name, sep, path = spec.partition("=")
    if not sep:
        path, name = spec, ""
    p = Path(path)
    if not name:
        name = p.parent.name if p.name == "final" and p.parent.name else p.name
    if not name or "/" in name:
        raise ValueError(f"cannot name the model {spec!r}: use --model NAME=DIR")
    return name, p


@dataclass
class Entry:
    """One loaded model version."""

    name: str
    path: Path
    model: object
    tokenizer: object
    worker: object
    grammar: object
    context: int
    stop_ids: list
    enabled: bool = True
    created: int = field(default_factory=lambda: int(time.time()))


def model_disabled(name: str, version: str) -> APIError:
    via = f" (alias of `{version}`)" if name != version else ""
    return APIError(404, f"The model `{name}`{via} is disabled on this server: an operator took it "
                    f"off the API (`gptlab models enable {version}` puts it back).",
                    "invalid_request_error", "model", "model_disabled")


class Registry:
    def __init__(self, store: FeedbackStore):
        self.store = store
        self.entries: dict[str, Entry] = {}
        self.aliases: dict[str, str] = {}
        self._lock = threading.Lock()

    def add(self, entry: Entry) -> None:
        if entry.name in self.entries:
            raise ValueError(f"two models are named {entry.name!r}: use --model NAME=DIR")
        self.entries[entry.name] = entry

    def restore(self) -> None:
        """Read enabled flags and aliases from the database; fill in the defaults."""
        names = list(self.entries)
        with self.store.Session.begin() as s:
            saved = {r.name: r for r in s.scalars(select(ServedModel))}
            for name, e in self.entries.items():
                if name in saved:
                    e.enabled = saved[name].enabled
                    saved[name].path = str(e.path)
                else:
                    s.add(ServedModel(name=name, path=str(e.path), enabled=True))
            for row in s.scalars(select(ModelAlias)):
                if row.model in self.entries:
                    self.aliases[row.alias] = row.model
            for alias, name in zip(DEFAULT_ALIASES, names):
                if alias not in self.aliases:
                    self.aliases[alias] = name
                    s.merge(ModelAlias(alias=alias, model=name))
        for e in self.entries.values():
            e.worker.disabled = not e.enabled

    def resolve(self, name: str) -> Entry:
        """The enabled version a request's ``model`` names (a version or an alias)."""
        e = self.entries.get(self.aliases.get(name, name))
        if e is None:
            raise model_not_found(name)
        if not e.enabled:
            raise model_disabled(name, e.name)
        return e

    def aliases_of(self, name: str) -> list[str]:
        return sorted(a for a, n in self.aliases.items() if n == name)

    def describe(self, paths: bool = True) -> list[dict]:
        """Each version's state; ``paths``: include its directory (not for anonymous callers)."""
        return [{"name": e.name, **({"path": str(e.path)} if paths else {}), "enabled": e.enabled,
                 "aliases": self.aliases_of(e.name), "context_length": e.context,
                 **e.worker.load()} for e in self.entries.values()]

    def _get(self, name: str) -> Entry:
        if name not in self.entries:
            raise model_not_found(name)
        return self.entries[name]

    def set_enabled(self, name: str, enabled: bool) -> Entry:
        with self._lock:
            e = self._get(self.aliases.get(name, name))
            e.enabled = enabled
            e.worker.disabled = not enabled  # the worker drops its queue and batch at once
            with self.store.Session.begin() as s:
                s.merge(ServedModel(name=e.name, path=str(e.path), enabled=enabled))
            return e

    def promote(self, name: str, alias: str) -> Entry:
        with self._lock:
            if alias in self.entries:
                raise invalid(f"alias {alias!r} is the name of a model version", "alias")
            e = self._get(name)
            self.aliases[alias] = e.name
            with self.store.Session.begin() as s:
                s.merge(ModelAlias(alias=alias, model=e.name))
            return e
