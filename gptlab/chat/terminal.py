"""Terminal chat with a checkpoint: ``gptlab chat --model DIR [--system TEXT]``.

Replies stream token by token (``Engine.stream`` on the prompt rendered by
``gptlab.chat.render_prompt``, stopping at the end-of-turn token). Input:

- one line is one message; end a line with ``\\`` to continue the message on the next;
- or put a multi-line message between two lines of ``\"\"\"``.

Commands (``/help`` lists them): ``/system TEXT`` sets the system message (``/system``
shows it, ``/system -`` removes it), ``/reset`` forgets the conversation but keeps the
system message, ``/temperature X`` (0 = greedy), ``/save PATH`` appends the conversation
to a jsonl file as one ``{"messages": [...]}`` record (the SFT data format), ``/quit``.

When the conversation outgrows the model's context, the oldest exchanges are dropped
from what the model sees (whole user + assistant turns; the system message always stays)
and a ``[context: ...]`` note says so; ``/save`` still writes the whole conversation.

Tools (opt-in, ``--tools lookup,calculator,python``; gptlab/tools.py): their definitions go
into the prompt, and when a reply calls one, the call is shown and runs only after the
person answers ``y`` (``--yes`` approves every call, for scripts); a declined call tells
the model so. The result goes back to the model, which then answers (at most
``MAX_TOOL_ROUNDS`` rounds of calls per message). The call markup is not printed. Replies
are decoded under the grammar ``gptlab serve`` uses for ``tool_choice: auto``, so a call
always parses and fits its tool's parameters.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Callable

from gptlab.chat.render import render_prompt, stop_token_ids
from gptlab.chat.session import fit_history, load_chat_model
from gptlab.engine import Engine
from gptlab.tool_format import TOOL_CALL_OPEN, openai_tool_calls, parse_tool_calls
from gptlab.tools import KnowledgeBase, load_kb, parse_tool_names, run_tool, tool_specs
from gptlab.train.dist import resolve_device

USER_PROMPT = "you> "
CONT_PROMPT = "...> "
BOT_PREFIX = "assistant> "
MAX_TOOL_ROUNDS = 3
DECLINED = '{"error": "the user declined to run this call"}'

HELP = """commands:
  /system TEXT     set the system message (the conversation so far is kept)
  /system          show the system message; /system - removes it
  /reset           forget the conversation (the system message stays)
  /temperature X   sampling temperature, 0 = greedy
  /save PATH       append the conversation to PATH as one {"messages": [...]} jsonl line
  /help            this help
  /quit            leave (also /exit or Ctrl-D)
input: end a line with \\ to continue on the next line, or put a multi-line
message between two lines of \"\"\"; Ctrl-C stops a reply."""


class ChatSession:
    """A conversation with one model: the history, the system message, sampling settings."""

    def __init__(self, model, tokenizer, *, system: str | None = None, temperature: float = 0.7,
                 top_k: int | None = None, top_p: float | None = 0.95, max_new_tokens: int = 256,
                 seed: int | None = None, tools: list[str] | None = None, kb=None,
                 auto_approve: bool = False):
        self.engine, self.tokenizer = Engine(model, tokenizer), tokenizer
        self.system = system or None
        self.temperature, self.top_k, self.top_p = temperature, top_k, top_p
        self.max_new_tokens, self.seed = max_new_tokens, seed
        self.context, self.vocab_size = model.config.max_position_embeddings, model.config.vocab_size
        self.stops = stop_token_ids(tokenizer)
        self.messages: list[dict] = []  # user / assistant (/ tool) turns, the whole conversation
        self.tool_names = list(tools or [])
        self.tools = tool_specs(self.tool_names) or None     # definitions in the prompt
        self.kb, self.auto_approve = kb, auto_approve
        self._grammar = None            # tools on: the server's call grammar, built on first use
        self.first = 0                  # messages[first:] still fit in the context
        self.turns = 0

    def conversation(self) -> list[dict]:
        """The whole conversation, the system message first."""
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + self.messages

    def reset(self) -> None:
        self.messages, self.first = [], 0

    def respond(self, text: str, write: Callable[[str], None],
                notice: Callable[[str], None], ask: Callable[[str], str] | None = None) -> str | None:
        """Add a user message, stream the reply through ``write``, return it (None when the
        message alone does not fit the context). ``notice`` gets one-line remarks (turns
        dropped from the context, tool calls and results); ``ask(question)`` gets the
        person's answer to "run this call?" (without it, and without auto_approve, every
        call is declined). A KeyboardInterrupt during the reply removes the unanswered
        message (and any tool turns) and propagates."""
        start = len(self.messages)
        self.messages.append({"role": "user", "content": text})
        try:
            for rnd in range(MAX_TOOL_ROUNDS + 1):
                prompt = self._prompt(notice)
                if prompt is None:
                    del self.messages[start:]
                    return None
                answer = self._generate(prompt, write, rnd)
                calls = parse_tool_calls(answer)[1] if self.tools and rnd < MAX_TOOL_ROUNDS else []
                if not calls:
                    break
                self._run_calls(answer, calls, notice, ask)
        except BaseException:
            del self.messages[start:]
            raise
        self.turns += 1
        if self.tools:
            answer = parse_tool_calls(answer)[0]
        self.messages.append({"role": "assistant", "content": answer})
        if self.engine.last_finish_reasons == ["length"]:
            notice(f"[reply cut at {self.max_new_tokens} tokens or the end of the context]")
        return answer

    def _generate(self, prompt: list[int], write, rnd: int) -> str:
        """One streamed reply; with tools on, the <tool_call> markup is not shown."""
        sink = _CallHider(write) if self.tools else write
        reply = []
        seed = None if self.seed is None else self.seed + self.turns + 1000 * rnd
        for delta in self.engine.stream(prompt, max_new_tokens=min(self.max_new_tokens, self.context - len(prompt)),
                                        temperature=self.temperature, top_k=self.top_k,
                                        top_p=self.top_p, seed=seed, stop_token_ids=self.stops,
                                        constraint=self._call_grammar()):
            reply.append(delta)
            sink(delta)
        if self.tools:
            sink.flush()
        return "".join(reply)

    def _call_grammar(self):
        """With tools on, a fresh constraint for one reply: once it writes ``<tool_call>`` the
        call must name a tool and fit its schema (what ``gptlab serve`` enforces), so a call
        always parses; None without tools."""
        if not self.tools:
            return None
        if self._grammar is None:
            from gptlab.serve.tools import AutoToolConstraints
            self._grammar = AutoToolConstraints(self.tokenizer, self.vocab_size, self.stops)
        return self._grammar(self.tools)

    def _run_calls(self, text: str, calls: list[dict], notice, ask) -> None:
        """Show each call, run the approved ones, and add the call and result turns."""
        oa = openai_tool_calls(calls)
        self.messages.append({"role": "assistant", "content": parse_tool_calls(text)[0], "tool_calls": oa})
        for c, call in zip(calls, oa):
            notice(f"[tool call] {c['name']} {json.dumps(c['arguments'], ensure_ascii=False)}")
            answer = "y" if self.auto_approve else (ask("run it? [y/N] ") if ask else "")
            ok = answer.strip().lower() in ("y", "yes")
            if ok:
                result = run_tool(c["name"], c["arguments"], kb=self.kb, allowed=self.tool_names).content
                notice(f"[tool result] {result}")
            else:
                result = DECLINED
                notice("[tool call declined]")
            self.messages.append({"role": "tool", "tool_call_id": call["id"], "content": result})

    def _prompt(self, notice) -> list[int] | None:
        """The prompt ids; drops the oldest turns when the prompt plus room for a reply
        (max_new_tokens, at most half the context) does not fit."""
        head = [{"role": "system", "content": self.system}] if self.system else []
        room = min(self.max_new_tokens, self.context // 2)
        window = head + self.messages[self.first:]
        fitted, dropped = fit_history(self.tokenizer, window, self.context - room - self._tools_cost())
        if dropped:
            self.first += dropped
            kept = " (the system message is kept)" if head else ""
            notice(f"[context: dropped the {dropped} oldest message(s) to fit the "
                   f"{self.context}-token context{kept}]")
        prompt = render_prompt(self.tokenizer, fitted, tools=self.tools)
        if len(prompt) >= self.context:
            notice(f"[your message is too long: the prompt has {len(prompt)} tokens, the "
                   f"context {self.context}]")
            return None
        return prompt

    def _tools_cost(self) -> int:
        """Prompt tokens the tool definitions take (fit_history does not count them)."""
        if not self.tools:
            return 0
        probe = [{"role": "user", "content": "hi"}]
        with_tools = render_prompt(self.tokenizer, probe, tools=self.tools)
        return len(with_tools) - len(render_prompt(self.tokenizer, probe))

    def save(self, path: str | Path) -> Path:
        path = Path(path).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        record = {"messages": self.conversation()}
        if self.tools:
            record["tools"] = self.tools
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
        return path


class _CallHider:
    """Passes streamed text on until a <tool_call> starts; holds back a tail that may be
    the beginning of one, so the markup never reaches the screen."""

    def __init__(self, write: Callable[[str], None]):
        self.write, self.buf, self.hidden = write, "", False

    def __call__(self, delta: str) -> None:
        if self.hidden:
            return
        self.buf += delta
        at = self.buf.find(TOOL_CALL_OPEN)
        if at >= 0:
            self._emit(self.buf[:at].rstrip())
            self.buf, self.hidden = "", True
            return
        keep = next((k for k in range(min(len(self.buf), len(TOOL_CALL_OPEN) - 1), 0, -1)
                     if TOOL_CALL_OPEN.startswith(self.buf[-k:])), 0)
        cut = len(self.buf[:len(self.buf) - keep].rstrip())   # whitespace before a call: held too
        self._emit(self.buf[:cut])
        self.buf = self.buf[cut:]

    def flush(self) -> None:
        if not self.hidden:
            self._emit(self.buf)
        self.buf = ""

    def _emit(self, text: str) -> None:
        if text:
            self.write(text)


def read_message(read_line: Callable[[str], str]) -> str:
    """One message from the user: a line, ``\\``-continued lines, or a \"\"\" block.
    Raises EOFError at the end of input."""
    line = read_line(USER_PROMPT)
    stripped = line.strip()
    if stripped.startswith('"""'):
        rest = stripped[3:]
        if rest.endswith('"""') and len(rest) >= 3:
            return rest[:-3]
        lines = [rest] if rest else []
        while True:
            more = read_line(CONT_PROMPT)
            if more.rstrip().endswith('"""'):
                last = more.rstrip()[:-3]
                if last:
                    lines.append(last)
                return "\n".join(lines)
            lines.append(more)
    lines = []
    while line.endswith("\\"):
        lines.append(line[:-1])
        line = read_line(CONT_PROMPT)
    lines.append(line)
    return "\n".join(lines)


def handle_command(session: ChatSession, line: str, out: Callable[[str], None]) -> bool:
    """Run a /command; returns False when the user wants to quit."""
    cmd, _, arg = line.strip().partition(" ")
    arg = arg.strip()
    if cmd in ("/quit", "/exit", "/q"):
        return False
    if cmd == "/help":
        out(HELP)
    elif cmd == "/system":
        if not arg:
            out(f"system: {session.system!r}" if session.system else "no system message")
        elif arg == "-":
            session.system = None
            out("[system message removed]")
        else:
            session.system = arg
            out("[system message set]")
    elif cmd == "/reset":
        session.reset()
        out("[conversation reset" + (", system message kept]" if session.system else "]"))
    elif cmd == "/temperature":
        try:
            t = float(arg)
            if t < 0:
                raise ValueError
        except ValueError:
            out("usage: /temperature X with X >= 0 (0 = greedy)")
        else:
            session.temperature = t
            out(f"[temperature {t:g}]")
    elif cmd == "/save":
        if not arg:
            out("usage: /save PATH")
        else:
            try:
                out(f"[appended the conversation to {session.save(arg)}]")
            except OSError as e:
                out(f"[cannot save: {e}]")
    else:
        out(f"unknown command {cmd}; /help lists the commands")
    return True


def chat_loop(session: ChatSession, read_line: Callable[[str], str] = input,
              stdout=None) -> None:
    """The read-reply loop until /quit or end of input."""
    stdout = stdout or sys.stdout

    def out(text: str) -> None:
        stdout.write(text + "\n")
        stdout.flush()

    started = [False]

    def write(delta: str) -> None:  # the reply, after its prefix
        if not started[0]:
            stdout.write(BOT_PREFIX)
            started[0] = True
        stdout.write(delta)
        stdout.flush()

    def notice(note: str) -> None:  # on a line of its own
        out(("\n" if started[0] else "") + note)
        started[0] = False

    def ask(question: str) -> str:  # approve a tool call; end of input declines
        try:
            return read_line(question)
        except EOFError:
            return ""

    while True:
        try:
            text = read_message(read_line)
        except EOFError:
            out("")
            return
        except KeyboardInterrupt:
            out("")
            continue
        if not text.strip():
            continue
        if text.lstrip().startswith("/") and "\n" not in text.strip():
            if not handle_command(session, text, out):
                return
            continue
        started[0] = False
        try:
            reply = session.respond(text, write, notice, ask)
        except KeyboardInterrupt:
            out("\n[reply interrupted]")
            continue
        if reply is None:  # too long for the context: nothing was sent
            continue
        if not reply and not started[0]:
            write("")  # an empty reply still shows its prefix
        if started[0]:
            out("")


def run_chat(model_dir: str, *, system: str | None = None, temperature: float = 0.7,
             top_k: int | None = None, top_p: float | None = 0.95, max_new_tokens: int = 256,
             seed: int | None = None, device: str = "auto", tools: str | None = None,
             world: str | None = None, yes: bool = False) -> None:
    """Load a model (gptlab, HF Llama, or with a LoRA adapter) and chat in the terminal.
    `tools`: "lookup,calculator,python" (built-in tools, off by default); `world`: the
    miniworld whose kb.json the lookup reads; `yes`: run every call without asking."""
    import torch


    names = parse_tool_names(tools) if tools else []
    kb = KnowledgeBase(load_kb(world)) if "lookup" in names else None
    dev = resolve_device(device)
    dtype = torch.bfloat16 if dev.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    ckpt = load_chat_model(model_dir, device=dev, dtype=dtype)
    if ckpt.tokenizer is None:
        raise ValueError(f"{model_dir} has no tokenizer.json")
    session = ChatSession(ckpt.model, ckpt.tokenizer, system=system, temperature=temperature,
                          top_k=top_k, top_p=top_p, max_new_tokens=max_new_tokens, seed=seed,
                          tools=names, kb=kb, auto_approve=yes)
    if sys.stdin.isatty():
        try:
            import readline  # noqa: F401  (line editing and history for input())
        except ImportError:
            pass
    n = sum(p.numel() for p in ckpt.model.parameters())
    stage = ckpt.meta.get("stage") or "HF model"
    print(f"gptlab chat: {model_dir} ({stage}, {n / 1e6:.1f}M params, {session.context}-token "
          f"context, temperature {temperature:g}). /help for commands, /quit to leave.")
    if system:
        print(f"system: {system}")
    if names:
        how = ("every call runs without asking (--yes)" if yes
               else "each call is shown and runs only if you answer y")
        print(f"tools: {', '.join(names)}; {how}")
    chat_loop(session)
