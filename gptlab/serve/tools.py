"""Tool calling on ``/v1/chat/completions``: OpenAI's ``tools``, ``tool_choice`` and
``parallel_tool_calls``, in the chat format of gptlab.tool_format.

- The request's tools are checked (a clear 400 for a bad one) and, unless ``tool_choice`` is
  ``none``, rendered at the end of the system turn (gptlab.chat.render_prompt).
- Generation is constrained with an xgrammar *structural tag* (the compiler that
  ``response_format`` uses, gptlab.serve.grammar). A call is
  ``<tool_call>\\n{"name": <a tool's name>, "arguments": <its parameters>}\\n</tool_call>``
  with the arguments in compact JSON (json.dumps' ", " and ": ", properties in the schema's
  order, no property the schema does not name). ``auto``: free text, but from the moment the
  text says ``<tool_call>`` the rest of the call must fit one of the functions;
  ``required`` / a named function: nothing but calls (one, or several separated by a newline
  when ``parallel_tool_calls``). The grammar's closer finishes an open call before
  ``max_tokens`` runs out, so a call always parses; a call that no longer fits when its tag
  would open is not started, and the reply ends with ``finish_reason: "length"``.
- The reply is read block by block (``ToolStream``, for streamed and whole replies alike):
  each ``<tool_call>`` block that parses, names a tool and whose arguments validate against
  its schema (jsonschema) becomes a ``tool_calls`` entry; anything else stays content, so a
  malformed call is never returned. With at least one call, ``finish_reason`` is
  ``tool_calls``. Streamed, each call is sent whole in one ``delta.tool_calls`` chunk when its
  block closes; text that may be the start of ``<tool_call>`` is held back until it is not.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

import jsonschema
from xgrammar.structural_tag import (GrammarFormat, StructuralTag, TagFormat, TagsWithSeparatorFormat,
                                     TriggeredTagsFormat)

from gptlab.serve.errors import invalid
from gptlab.serve.grammar import GrammarError, GrammarFactory, check_schema, json_schema_ebnf
from gptlab.serve.schemas import ChatCompletionRequest
from gptlab.tool_format import (TOOL_CALL_CLOSE, TOOL_CALL_OPEN, new_call_id, parse_tool_calls)

MAX_TOOLS = 128                                   # OpenAI's limit
NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")       # OpenAI's rule for function names
CHOICES = ("none", "auto", "required")
EMPTY_PARAMETERS = {"type": "object", "properties": {}}   # a function without parameters takes {}


@dataclass
class ToolPlan:
    """What a request's tools mean for its prompt, its grammar and its reply."""

    functions: list[dict]          # the function objects of the request's tools, in order
    choice: str                    # none | auto | required | named
    allowed: list[str]             # the names the reply may call
    parallel: bool = True
    validators: dict = field(default_factory=dict)   # name -> jsonschema validator

    @property
    def active(self) -> bool:
        """Whether the reply may call (so it is constrained and read for calls)."""
        return self.choice != "none"

    def prompt_tools(self) -> list[dict] | None:
        """The tool definitions rendered in the prompt (none for tool_choice none)."""
        return [{"type": "function", "function": f} for f in self.functions] if self.active else None

    def grammar_format(self) -> "ToolGrammar | None":
        return ToolGrammar(structural_tag(self)) if self.active else None

    def check_block(self, block: str) -> dict | None:
        """The call a ``<tool_call>`` block holds, if it parses, names an allowed function and
        its arguments validate; else None."""
        _, calls = parse_tool_calls(block)
        if len(calls) != 1 or calls[0]["name"] not in self.allowed:
            return None
        validator = self.validators.get(calls[0]["name"])
        if validator is not None and not validator.is_valid(calls[0]["arguments"]):
            return None
        return calls[0]


@dataclass
class ToolGrammar:
    """A response format for GrammarFactory: compiled with compile_structural_tag."""

    structural_tag: str
    type: str = "structural_tag"


class AutoToolConstraints:
    """tools -> a fresh Constraint for one reply that may call them (``tool_choice: auto``):
    the grammar this server decodes such a reply under, for decoding outside it (the
    in-process tools evals, gptlab.evals.runner, and ``gptlab chat --tools``). Each tool set
    is compiled once."""

    def __init__(self, tokenizer, vocab_size: int, stop_ids: list[int]):
        self.factory = GrammarFactory(tokenizer, vocab_size, stop_ids, compile_workers=1)
        self._compiled: dict[str, object] = {}

    def __call__(self, tools: list[dict] | None):
        if not tools:
            return None
        key = json.dumps(tools, sort_keys=True)
        if key not in self._compiled:
            request = ChatCompletionRequest(model="-", messages=[{"role": "user", "content": "-"}],
                                            tools=tools, tool_choice="auto")
            self._compiled[key] = self.factory.compile(plan_tools(request).grammar_format())
        return self.factory.constraint(self._compiled[key])


# ----------------------------------------------------------------------------- request


def plan_tools(body) -> ToolPlan | None:
    """The request's ToolPlan, None without tools. Raises a 400 APIError for bad tools, a bad
    tool_choice, or tools with a JSON response_format."""
    choice = body.tool_choice
    if not body.tools:
        if choice is not None and choice != "none":
            raise invalid("tool_choice is only allowed when tools are given", "tool_choice")
        return None
    if len(body.tools) > MAX_TOOLS:
        raise invalid(f"tools: at most {MAX_TOOLS} tools are allowed, got {len(body.tools)}", "tools")
    functions = [_check_tool(t, i) for i, t in enumerate(body.tools)]
    names = [f["name"] for f in functions]
    if len(set(names)) < len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise invalid(f"tools: two tools are named {dup!r}", "tools")
    kind, allowed = _choice(choice, names)
    fmt = body.response_format
    if kind != "none" and fmt is not None and fmt.type != "text":
        raise invalid("response_format json_object / json_schema cannot be combined with tools on this "
                      "server (use tool_choice none, or a tool whose parameters are the schema)",
                      "response_format")
    validators = {f["name"]: _validator(f) for f in functions}
    return ToolPlan(functions, kind, allowed, body.parallel_tool_calls is not False, validators)


def _check_tool(tool, i: int) -> dict:
    where = f"tools[{i}]"
    if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(tool.get("function"), dict):
        raise invalid(f"{where} must be {{\"type\": \"function\", \"function\": {{\"name\", \"description\", "
                      "\"parameters\"}}}}", where)
    fn = tool["function"]
    name = fn.get("name")
    if not isinstance(name, str) or not NAME.match(name):
        raise invalid(f"{where}.function.name must be 1-64 letters, digits, underscores or dashes, "
                      f"got {name!r}", f"{where}.function.name")
    if fn.get("description") is not None and not isinstance(fn["description"], str):
        raise invalid(f"{where}.function.description must be a string", f"{where}.function.description")
    params = fn.get("parameters")
    if params is None or params == {}:
        params = EMPTY_PARAMETERS
    elif not isinstance(params, dict) or params.get("type") != "object":
        raise invalid(f"{where}.function.parameters must be a JSON schema of type \"object\" "
                      f"(function {name!r})", f"{where}.function.parameters")
    try:
        check_schema(params)
        jsonschema.validators.validator_for(params).check_schema(params)
    except GrammarError as exc:
        raise invalid(f"{where}.function.parameters: {exc}".replace("response_format schema", "the schema"),
                      f"{where}.function.parameters")
    except jsonschema.SchemaError as exc:
        raise invalid(f"{where}.function.parameters is not a valid JSON schema: {exc.message}",
                      f"{where}.function.parameters")
    out = {"name": name, "parameters": params}
    if fn.get("description"):
        out["description"] = fn["description"]
    return out


def _choice(choice, names: list[str]) -> tuple[str, list[str]]:
    if choice is None:
        return "auto", names
    if isinstance(choice, str):
        if choice not in CHOICES:
            raise invalid(f"tool_choice must be one of {CHOICES} or {{\"type\": \"function\", \"function\": "
                          f"{{\"name\": ...}}}}, got {choice!r}", "tool_choice")
        return choice, names
    fn = choice.get("function") if isinstance(choice, dict) and choice.get("type") == "function" else None
    name = fn.get("name") if isinstance(fn, dict) else None
    if not isinstance(name, str):
        raise invalid("tool_choice must be a string or {\"type\": \"function\", \"function\": {\"name\": ...}}",
                      "tool_choice")
    if name not in names:
        raise invalid(f"tool_choice names the function {name!r}, which is not in tools", "tool_choice")
    return "named", [name]


def _validator(fn: dict):
    cls = jsonschema.validators.validator_for(fn["parameters"])
    return cls(fn["parameters"])


# ----------------------------------------------------------------------------- grammar


def structural_tag(plan: ToolPlan) -> str:
    """The xgrammar structural tag (JSON text) that constrains the reply."""
    by_name = {f["name"]: f for f in plan.functions}
    tags = [_call_tag(name, by_name[name]["parameters"]) for name in plan.allowed]
    if plan.choice == "auto":
        fmt = TriggeredTagsFormat(triggers=[TOOL_CALL_OPEN], tags=tags, stop_after_first=not plan.parallel)
    else:  # required / named: nothing but calls
        fmt = TagsWithSeparatorFormat(tags=tags, separator="\n", at_least_one=True,
                                      stop_after_first=not plan.parallel)
    return StructuralTag(format=fmt).model_dump_json()


def _call_tag(name: str, params: dict) -> TagFormat:
    """``<tool_call>\\n{"name": NAME, "arguments": ARGS}\\n</tool_call>``, ARGS compact JSON
    (the grammar of response_format's json_schema: strict, no free whitespace)."""
    try:
        ebnf = json_schema_ebnf(params)
    except Exception as exc:  # an xgrammar error on a schema it cannot convert
        raise GrammarError(f"tools: function {name!r}: its parameters cannot be compiled: "
                           f"{str(exc).strip().splitlines()[0][:300] if str(exc).strip() else exc}") from None
    return TagFormat(begin=f'{TOOL_CALL_OPEN}\n{{"name": "{name}", "arguments": ', content=GrammarFormat(grammar=ebnf),
                     end=f"}}\n{TOOL_CALL_CLOSE}")


# ----------------------------------------------------------------------------- messages


def prompt_messages(messages) -> list[dict]:
    """The request's messages (schemas.ChatMessage) as the dicts gptlab.chat renders:
    developer is system, assistant tool_calls and tool turns are kept."""
    out = []
    for m in messages:
        d = {"role": "system" if m.role == "developer" else m.role, "content": m.text()}
        if m.tool_calls:
            d["tool_calls"] = [c.model_dump() for c in m.tool_calls]
        out.append(d)
    return out


# ----------------------------------------------------------------------------- reply


class ToolStream:
    """Reads one choice's text as it comes: ``feed`` and ``finish`` return the OpenAI deltas
    to send (``{"content": ...}`` or ``{"tool_calls": [...]}``). The whitespace next to a
    call block (the newlines of the format) is not content."""

    def __init__(self, plan: ToolPlan):
        self.plan, self.buf, self.ws = plan, "", ""
        self.calls: list[dict] = []   # in OpenAI's message shape
        self.content: list[str] = []
        self.after_call = False

    def feed(self, text: str) -> list[dict]:
        self.buf += text
        out = []
        while True:
            start = self.buf.find(TOOL_CALL_OPEN)
            if start < 0:
                keep = _open_prefix(self.buf)
                out += self._text(self.buf[:len(self.buf) - keep])
                self.buf = self.buf[len(self.buf) - keep:]
                return out
            out += self._text(self.buf[:start])
            end = self.buf.find(TOOL_CALL_CLOSE, start)
            if end < 0:                     # the call is not closed yet
                self.buf = self.buf[start:]
                return out
            end += len(TOOL_CALL_CLOSE)
            block, self.buf = self.buf[start:end], self.buf[end:]
            call = self.plan.check_block(block)
            out += self._call(call) if call is not None else self._text(block)

    def finish(self) -> list[dict]:
        """What is left (an unclosed call is content), and the held-back whitespace."""
        out = self._text(self.buf) if self.buf else []
        self.buf = ""
        if self.ws and not self.after_call:
            out.append(self._emit(self.ws))
        self.ws = ""
        return out

    def _text(self, text: str) -> list[dict]:
        if self.after_call:
            text = text.lstrip()
        if not text:
            return []
        body = text.rstrip()
        if not body:                    # whitespace only: held until something follows
            self.ws += text
            return []
        self.after_call = False
        pending, self.ws = self.ws, text[len(body):]
        return [self._emit(pending + body)]

    def _emit(self, text: str) -> dict:
        self.content.append(text)
        return {"content": text}

    def _call(self, call: dict) -> list[dict]:
        self.ws, self.after_call = "", True
        entry = {"id": new_call_id(), "type": "function",
                 "function": {"name": call["name"], "arguments": json.dumps(call["arguments"], ensure_ascii=False)}}
        self.calls.append(entry)
        return [{"tool_calls": [{"index": len(self.calls) - 1, **entry}]}]


def _open_prefix(text: str) -> int:
    """The length of the longest end of ``text`` that begins ``<tool_call>``."""
    for k in range(min(len(TOOL_CALL_OPEN) - 1, len(text)), 0, -1):
        if TOOL_CALL_OPEN.startswith(text[-k:]):
            return k
    return 0


def reply(plan: ToolPlan | None, text: str, reason: str | None) -> tuple[dict, str | None]:
    """One choice's message and finish_reason: tool calls read out of ``text`` when the plan
    allows them, else ``text`` as content."""
    if plan is None or not plan.active:
        return {"role": "assistant", "content": text, "refusal": None}, reason
    stream = ToolStream(plan)
    stream.feed(text)
    stream.finish()
    content = "".join(stream.content)
    if not stream.calls:
        return {"role": "assistant", "content": content, "refusal": None}, reason
    return ({"role": "assistant", "content": content or None, "refusal": None, "tool_calls": stream.calls},
            "tool_calls")


def streams_for(plan: ToolPlan | None, n: int) -> list[ToolStream] | None:
    return [ToolStream(plan) for _ in range(n)] if plan is not None and plan.active else None


def deltas(streams: list[ToolStream] | None, index: int, text: str) -> list[dict]:
    """The deltas to stream for new text of choice ``index``."""
    return [{"content": text}] if streams is None else streams[index].feed(text)


def finish(streams: list[ToolStream] | None, index: int, reason: str) -> tuple[list[dict], str]:
    """The last deltas of choice ``index`` and its finish_reason."""
    if streams is None:
        return [], reason
    tail = streams[index].finish()
    return tail, "tool_calls" if streams[index].calls else reason
