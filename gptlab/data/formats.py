"""Read common public data formats into miniworld's record shapes (TRL-style).

Input formats (detected from the first record, or forced with `fmt=`):

    "messages"  {"messages": [{"role", "content"}, ...]}          SmolTalk, UltraChat, TRL
    "sharegpt"  {"conversations": [{"from", "value"}, ...]}        ShareGPT, OpenHermes
                (from: human/user -> user, gpt/assistant/chatgpt/model -> assistant, system)
    "prefs"     {"prompt", "chosen", "rejected"}                   UltraFeedback binarized, TRL
                chosen / rejected are strings, or message lists (the full conversation, or
                only the assistant reply); prompt is a string or a message list
    "hh"        {"chosen", "rejected"} transcripts                 Anthropic HH-RLHF
                "\\n\\nHuman: ...\\n\\nAssistant: ..."; the shared turns become the prompt
    "text"      {"text": str}                                      FineWeb, any plain corpus

Output records:

    chat   -> {"messages": [{"role": "system|user|assistant", "content": str}, ...]}
    prefs  -> {"prompt": [messages ending with a user turn], "chosen": str, "rejected": str}
              (TRL's conversational prompt with plain-string completions)
    text   -> {"text": str}

Files: .jsonl (optionally .gz), .json (a list of records), .parquet (via pyarrow), a
directory of those, or ``hf:org/name[:config][:split]`` (streamed through `datasets`). A malformed record raises `FormatError` naming the file, the line (or
parquet row) and the field.
"""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path
from typing import Iterator

FORMATS = ("messages", "sharegpt", "prefs", "hh", "text")
KIND = {"messages": "chat", "sharegpt": "chat", "prefs": "prefs", "hh": "prefs", "text": "text"}
ROLES = ("system", "user", "assistant", "tool")  # tool turns and tool_calls: gptlab.tool_format
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "chatgpt": "assistant", "bing": "assistant", "bard": "assistant",
                  "model": "assistant", "system": "system"}
_HH_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant):[ \t]?")
_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".parquet")


class FormatError(ValueError):
    """A record that does not fit its format: says which file, line and field."""

    def __init__(self, path, line, field: str, message: str, unit: str = "line"):
        self.path, self.line, self.field = str(path), line, field
        super().__init__(f"{path}: {unit} {line}: field '{field}': {message}")


class _Bad(Exception):
    """Raised inside converters; turned into a FormatError with the file position."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field, self.message = field, message


# ----------------------------------------------------------------------------- reading

def _files(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.name.endswith(_SUFFIXES))
        if not files:
            raise FileNotFoundError(f"no {', '.join(_SUFFIXES)} files under {path}")
        return files
    if not path.exists():
        raise FileNotFoundError(path)
    return [path]


def _raw_rows(path: Path) -> Iterator[tuple[int, str, object]]:
    """(position, unit, record) for one file; positions are 1-based."""
    name = path.name
    if name.endswith(".parquet"):
        import pyarrow.parquet as pq
        row = 0
        for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
            for rec in batch.to_pylist():
                row += 1
                yield row, "row", rec
        return
    opener = gzip.open if name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        if name.endswith(".json"):
            data = json.load(f)
            if not isinstance(data, list):
                raise FormatError(path, 1, "<file>", "a .json file must hold a list of records")
            for i, rec in enumerate(data, 1):
                yield i, "record", rec
            return
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield i, "line", json.loads(line)
            except json.JSONDecodeError as e:
                raise FormatError(path, i, "<json>", f"invalid JSON ({e.msg})") from None


# ----------------------------------------------------------------------------- detection

def detect_format(record: dict) -> str:
    """The input format of one record (see the module docstring)."""
    if not isinstance(record, dict):
        raise _Bad("<record>", f"expected a JSON object, got {type(record).__name__}")
    if "chosen" in record and "rejected" in record:   # before "messages": UltraFeedback has both
        return "prefs" if "prompt" in record else "hh"
    if "messages" in record:
        return "messages"
    if "conversations" in record:
        return "sharegpt"
    if "text" in record:
        return "text"
    raise _Bad("<record>", f"cannot detect the format from keys {sorted(record)}; "
                           f"pass fmt= one of {FORMATS}")


# ----------------------------------------------------------------------------- converters

def _string(value, field: str) -> str:
    if not isinstance(value, str):
        raise _Bad(field, f"expected a string, got {type(value).__name__}")
    return value


def _messages(value, field: str) -> list[dict]:
    if not isinstance(value, list) or not value:
        raise _Bad(field, "expected a non-empty list of messages")
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict):
            raise _Bad(f"{field}[{i}]", "expected an object with role and content")
        if m.get("role") not in ROLES:
            raise _Bad(f"{field}[{i}].role", f"expected one of {ROLES}, got {m.get('role')!r}")
        if m.get("tool_calls"):  # an assistant's tool calls (OpenAI's shape); content may be empty
            out.append({"role": m["role"], "content": m.get("content") or "", "tool_calls": m["tool_calls"]})
            continue
        out.append({"role": m["role"], "content": _string(m.get("content"), f"{field}[{i}].content")})
        if m.get("tool_call_id") is not None:
            out[-1]["tool_call_id"] = m["tool_call_id"]
    return out


def _from_messages(rec: dict) -> dict:
    out = {"messages": _messages(rec.get("messages"), "messages")}
    if rec.get("tools"):  # OpenAI fine-tuning's tool definitions, rendered in the system turn
        out["tools"] = rec["tools"]
    return out


def _from_sharegpt(rec: dict) -> dict:
    conv = rec.get("conversations")
    if not isinstance(conv, list) or not conv:
        raise _Bad("conversations", "expected a non-empty list of turns")
    out = []
    for i, turn in enumerate(conv):
        if not isinstance(turn, dict):
            raise _Bad(f"conversations[{i}]", "expected an object with from and value")
        role = SHAREGPT_ROLES.get(str(turn.get("from", "")).lower())
        if role is None:
            raise _Bad(f"conversations[{i}].from", f"unknown speaker {turn.get('from')!r}")
        out.append({"role": role, "content": _string(turn.get("value"), f"conversations[{i}].value")})
    return {"messages": out}


def _completion(value, field: str) -> tuple[list[dict] | None, str]:
    """chosen / rejected: (prompt messages it carries or None, assistant text)."""
    if isinstance(value, str):
        return None, value
    msgs = _messages(value, field)
    if msgs[-1]["role"] != "assistant":
        raise _Bad(f"{field}[{len(msgs) - 1}].role", "the last message must be the assistant's")
    return (msgs[:-1] or None), msgs[-1]["content"]


def _from_prefs(rec: dict) -> dict:
    c_prompt, chosen = _completion(rec.get("chosen"), "chosen")
    r_prompt, rejected = _completion(rec.get("rejected"), "rejected")
    if c_prompt is not None and r_prompt is not None and c_prompt != r_prompt:
        raise _Bad("rejected", "chosen and rejected conversations have different prompts")
    prompt = c_prompt or r_prompt
    if prompt is None:
        p = rec.get("prompt")
        prompt = [{"role": "user", "content": p}] if isinstance(p, str) else _messages(p, "prompt")
    if prompt[-1]["role"] != "user":
        raise _Bad("prompt", "the prompt must end with a user message")
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def _hh_turns(text, field: str) -> list[dict]:
    text = _string(text, field)
    parts = _HH_TURN.split(text)
    if len(parts) < 3 or parts[0].strip():
        raise _Bad(field, "expected a transcript of '\\n\\nHuman: ...\\n\\nAssistant: ...' turns")
    return [{"role": "user" if who == "Human" else "assistant", "content": body.strip()}
            for who, body in zip(parts[1::2], parts[2::2])]


def _from_hh(rec: dict) -> dict:
    chosen = _hh_turns(rec.get("chosen"), "chosen")
    rejected = _hh_turns(rec.get("rejected"), "rejected")
    k = 0
    while k < min(len(chosen), len(rejected)) - 1 and chosen[k] == rejected[k]:
        k += 1
    for name, turns in (("chosen", chosen), ("rejected", rejected)):
        if len(turns) != k + 1 or turns[-1]["role"] != "assistant":
            raise _Bad(name, "transcripts must share every turn but the final assistant reply")
    prompt = chosen[:k]
    if not prompt or prompt[-1]["role"] != "user":
        raise _Bad("chosen", "the shared prompt must end with a Human turn")
    return {"prompt": prompt, "chosen": chosen[-1]["content"], "rejected": rejected[-1]["content"]}


def _from_text(rec: dict, text_field: str = "text") -> dict:
    return {"text": _string(rec.get(text_field), text_field)}


_CONVERTERS = {"messages": _from_messages, "sharegpt": _from_sharegpt, "prefs": _from_prefs,
               "hh": _from_hh, "text": _from_text}


def convert_record(record: dict, fmt: str, text_field: str = "text") -> dict:
    """One raw record -> its output record; raises FormatError(path='<record>') if malformed."""
    try:
        return _convert(record, fmt, text_field)
    except _Bad as e:
        raise FormatError("<record>", 1, e.field, e.message) from None


def _convert(record, fmt: str, text_field: str) -> dict:
    if not isinstance(record, dict):
        raise _Bad("<record>", f"expected a JSON object, got {type(record).__name__}")
    if fmt == "text":
        return _from_text(record, text_field)
    return _CONVERTERS[fmt](record)


# ----------------------------------------------------------------------------- public API

def iter_records(path, fmt: str = "auto", *, kind: str | None = None,
                 text_field: str = "text") -> Iterator[dict]:
    """Yield converted records from a file or directory.

    fmt: "auto" (detect from each file's first record) or one of FORMATS.
    kind: if given ("chat", "prefs" or "text"), a file of another kind is an error.
    text_field: the field that holds the text when fmt="text"."""
    if fmt != "auto" and fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose 'auto' or one of {FORMATS}")
    if fmt != "auto" and kind and KIND[fmt] != kind:
        raise ValueError(f"format {fmt!r} holds {KIND[fmt]} data, not {kind}")
    if str(path).startswith("hf:"):
        yield from _iter_hf_records(str(path)[3:], fmt, kind, text_field)
        return
    for file in _files(Path(path)):
        file_fmt = None if fmt == "auto" else fmt
        for pos, unit, rec in _raw_rows(file):
            try:
                if file_fmt is None:
                    file_fmt = detect_format(rec)
                    if kind and KIND[file_fmt] != kind:
                        raise _Bad("<record>", f"found {KIND[file_fmt]} data ({file_fmt}), "
                                               f"expected {kind}")
                yield _convert(rec, file_fmt, text_field)
            except _Bad as e:
                raise FormatError(file, pos, e.field, e.message, unit) from None


def _iter_hf_records(spec: str, fmt: str, kind: str | None, text_field: str) -> Iterator[dict]:
    """hf:org/name[:config][:split] (a hub id, or a local data dir), streamed by `datasets`;
    a malformed row is a FormatError naming the data set and the row."""
    import datasets

    from gptlab.data.loaders import parse_hf_spec  # deferred: loaders imports torch

    name, config, split = parse_hf_spec(spec)
    rows = datasets.load_dataset(name, config, split=split, streaming=True)
    row_fmt = None if fmt == "auto" else fmt
    for i, rec in enumerate(rows, 1):
        try:
            if row_fmt is None:
                row_fmt = detect_format(rec)
                if kind and KIND[row_fmt] != kind:
                    raise _Bad("<record>", f"found {KIND[row_fmt]} data ({row_fmt}), expected {kind}")
            yield _convert(rec, row_fmt, text_field)
        except _Bad as e:
            raise FormatError(f"hf:{spec}", i, e.field, e.message, "row") from None


def load_records(path, fmt: str = "auto", *, kind: str | None = None,
                 text_field: str = "text") -> list[dict]:
    """All converted records of a file or directory (see iter_records)."""
    return list(iter_records(path, fmt, kind=kind, text_field=text_field))


def load_chat(path, fmt: str = "auto") -> list[dict]:
    """Chat data -> [{"messages": [...]}]."""
    return load_records(path, fmt, kind="chat")


def load_preferences(path, fmt: str = "auto") -> list[dict]:
    """Preference data -> [{"prompt": [messages], "chosen": str, "rejected": str}]."""
    return load_records(path, fmt, kind="prefs")


def load_text(path, text_field: str = "text") -> list[dict]:
    """Plain text data -> [{"text": str}]."""
    return load_records(path, "text", kind="text", text_field=text_field)


def convert_file(src, dst, fmt: str = "auto", *, kind: str | None = None,
                 text_field: str = "text") -> int:
    """Convert src (file or directory) into one jsonl file dst; returns the record count."""
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.tmp")
    n = 0
    with open(tmp, "w", encoding="utf-8") as f:
        for rec in iter_records(src, fmt, kind=kind, text_field=text_field):
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
            n += 1
    tmp.replace(dst)
    return n
