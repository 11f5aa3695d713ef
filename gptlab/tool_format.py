"""Tool calling in the chat format: tool definitions, calls and results as ChatML text.

Messages use OpenAI's shapes. An assistant message may carry
``tool_calls: [{"id": "call_...", "type": "function", "function": {"name": str,
"arguments": str (JSON text)}}]`` (its content None or ""); a tool result is
``{"role": "tool", "tool_call_id": "...", "content": str}``. They are rendered the way
Qwen2.5 / SmolLM2-style templates do (Hermes function calling), so a model tuned on that
format reads ours:

- the tool definitions go at the end of the system turn (a system turn is created when
  there is none, after the template's default system text if it has one): a blank line,
  ``# Tools``, a blank line, one sentence of instructions (``TOOLS_INSTRUCTION``), then
  ``<tools>``, one compact JSON object per function (name, description, parameters) per
  line, ``</tools>`` (``render_tools_block``);
- an assistant call is the turn's text: its content, if any, then one
  ``<tool_call>\\n{"name": "...", "arguments": {...}}\\n</tool_call>`` block per call,
  joined by newlines (``format_tool_calls``, ``assistant_text``);
- a tool result is its own turn of role ``tool``:
  ``<|im_start|>tool\\n<tool_response>\\n{content}\\n</tool_response><|im_end|>\\n``.

``to_template_messages`` turns OpenAI-shaped messages into plain ``{"role", "content"}``
ones that any chat template renders; gptlab.chat does this before rendering, so the SFT
loss mask covers assistant turns (their ``<tool_call>`` text included) and never tool
turns. ``parse_tool_calls`` reads calls back out of generated text; it never returns a
malformed call (any block that does not parse means no calls at all).
"""

from __future__ import annotations

import json
import re
import uuid

TOOL_CALL_OPEN, TOOL_CALL_CLOSE = "<tool_call>", "</tool_call>"
TOOL_RESPONSE_OPEN, TOOL_RESPONSE_CLOSE = "<tool_response>", "</tool_response>"
TOOLS_HEADER = "# Tools"
TOOLS_INSTRUCTION = ("You may call one or more of the functions below to help with the request: write each "
                     'call as a JSON object {"name": <function name>, "arguments": <arguments object>} '
                     "inside <tool_call></tool_call> tags.")
ROLES = ("system", "user", "assistant", "tool")

_CALL_BLOCK = re.compile(re.escape(TOOL_CALL_OPEN) + r"\s*(.*?)\s*" + re.escape(TOOL_CALL_CLOSE), re.DOTALL)


# --------------------------------------------------------------------------- definitions


def tool_function(tool: dict) -> dict:
    """The ``function`` object of an OpenAI tool ``{"type": "function", "function": {...}}``
    (a bare function object ``{"name", ...}`` is taken as is). ValueError if malformed."""
    if not isinstance(tool, dict):
        raise ValueError(f"a tool must be an object, got {type(tool).__name__}")
    if "function" in tool:
        if tool.get("type", "function") != "function":
            raise ValueError(f"tool type must be 'function', got {tool.get('type')!r}")
        fn = tool["function"]
    else:
        fn = tool
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
        raise ValueError("a tool's function needs a non-empty string name")
    params = fn.get("parameters")
    if params is not None and not (isinstance(params, dict) and params.get("type", "object") == "object"):
        raise ValueError(f"function {fn['name']!r}: parameters must be a JSON schema of type object")
    return fn


def render_tools_block(tools: list[dict]) -> str:
    """The tools part of the system turn, from ``# Tools`` to ``</tools>`` (the caller puts a
    blank line before it when the system turn has other text: see ``system_with_tools``)."""
    lines = []
    for tool in tools:
        fn = tool_function(tool)
        entry = {k: fn[k] for k in ("name", "description", "parameters") if fn.get(k) is not None}
        lines.append(json.dumps(entry, ensure_ascii=False))
    return "\n".join([TOOLS_HEADER, "", TOOLS_INSTRUCTION, "<tools>", *lines, "</tools>"])


def system_with_tools(system: str, tools: list[dict]) -> str:
    """A system turn's text with the tool definitions at its end, after a blank line."""
    block = render_tools_block(tools)
    return f"{system}\n\n{block}" if system else block


# --------------------------------------------------------------------------- calls


def call_arguments(call: dict) -> tuple[str, dict]:
    """(name, arguments object) of a call in OpenAI's shape (``function.arguments`` a JSON
    text) or the plain ``{"name", "arguments": {...}}``. ValueError if malformed."""
    fn = call.get("function", call) if isinstance(call, dict) else None
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
        raise ValueError(f"a tool call needs a function name, got {call!r}")
    args = fn.get("arguments", {})
    if isinstance(args, str):
        try:
            args = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError as exc:
            raise ValueError(f"tool call {fn['name']!r}: arguments are not valid JSON ({exc.msg})") from None
    if not isinstance(args, dict):
        raise ValueError(f"tool call {fn['name']!r}: arguments must be a JSON object")
    return fn["name"], args


def format_tool_calls(calls: list[dict]) -> str:
    """The calls as ``<tool_call>`` blocks joined by newlines (arguments as a JSON object,
    json.dumps' default separators ", " and ": ")."""
    blocks = []
    for call in calls:
        name, args = call_arguments(call)
        body = json.dumps({"name": name, "arguments": args}, ensure_ascii=False)
        blocks.append(f"{TOOL_CALL_OPEN}\n{body}\n{TOOL_CALL_CLOSE}")
    return "\n".join(blocks)


def assistant_text(content: str | None, calls: list[dict] | None) -> str:
    """An assistant turn's text: its content, then its calls, joined by a newline."""
    parts = [content] if content else []
    if calls:
        parts.append(format_tool_calls(calls))
    return "\n".join(parts)


def parse_tool_calls(text: str) -> tuple[str, list[dict]]:
    """(content, calls) of generated text, calls as ``{"name": str, "arguments": dict}``.

    content is the text outside the ``<tool_call>`` blocks, stripped. If a block's JSON does
    not parse or lacks a name or an arguments object, or a ``<tool_call>`` is left open, the
    whole text is content and there are no calls: a malformed call is never returned."""
    calls = []
    for m in _CALL_BLOCK.finditer(text):
        try:
            obj = json.loads(m.group(1))
            if not isinstance(obj, dict) or set(obj) - {"name", "arguments"}:
                raise ValueError("not a {name, arguments} object")
            calls.append(dict(zip(("name", "arguments"), call_arguments(obj))))
        except ValueError:  # json.JSONDecodeError is a ValueError
            return text, []
    rest = _CALL_BLOCK.sub("", text)
    if TOOL_CALL_OPEN in rest or TOOL_CALL_CLOSE in rest:  # an unclosed or stray tag
        return text, []
    return (rest.strip(), calls) if calls else (text, [])


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def openai_tool_calls(calls: list[dict]) -> list[dict]:
    """Parsed calls in OpenAI's message shape, each with a new id."""
    return [{"id": new_call_id(), "type": "function",
             "function": {"name": c["name"], "arguments": json.dumps(c["arguments"], ensure_ascii=False)}}
            for c in calls]


# --------------------------------------------------------------------------- messages


def tool_response_text(content: str) -> str:
    return f"{TOOL_RESPONSE_OPEN}\n{content}\n{TOOL_RESPONSE_CLOSE}"


def _content(m: dict, i: int) -> str:
    content = m.get("content")
    if content is None and m.get("role") == "assistant" and m.get("tool_calls"):
        return ""
    if not isinstance(content, str):
        raise ValueError(f"message {i} must be {{'role': one of {ROLES}, 'content': str}}, got {m!r}")
    return content


def to_template_messages(messages: list[dict], tools: list[dict] | None = None,
                         default_system: str = "") -> list[dict]:
    """OpenAI-shaped messages (tool calls, tool results) and tool definitions as plain
    ``{"role", "content"}`` messages for a chat template. With tools and no system message,
    one is put first, holding ``default_system`` (the template's own default system text,
    which it would no longer add) and the definitions. ValueError for a malformed message."""
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise ValueError(f"message {i} must be {{'role': one of {ROLES}, 'content': str}}, got {m!r}")
        content = _content(m, i)
        if m["role"] == "assistant" and m.get("tool_calls"):
            if not isinstance(m["tool_calls"], list):
                raise ValueError(f"message {i}: tool_calls must be a list")
            content = assistant_text(content, m["tool_calls"])
        elif m["role"] == "tool":
            content = tool_response_text(content)
        out.append({"role": m["role"], "content": content})
    if tools:
        if out and out[0]["role"] == "system":
            out[0] = {"role": "system", "content": system_with_tools(out[0]["content"], tools)}
        else:
            out.insert(0, {"role": "system", "content": system_with_tools(default_system, tools)})
    return out


def has_tool_parts(messages: list[dict], tools: list[dict] | None = None) -> bool:
    """Whether rendering needs ``to_template_messages`` (tools, tool calls or tool turns)."""
    return bool(tools) or any(isinstance(m, dict) and (m.get("role") == "tool" or m.get("tool_calls"))
                              for m in messages)
