"""Chat rendering for SFT and generation: template text -> token ids + loss mask.

A conversation is a list of ``{"role": "system" | "user" | "assistant" | "tool",
"content": str}`` messages, in OpenAI's shapes: an assistant message may carry ``tool_calls`` and tool
definitions may come with it (``tools=``); gptlab.tool_format renders them as text first
(definitions in the system turn, calls in the assistant turn, results as ``tool`` turns), so
the loss mask covers the calls and never the tool results. It is rendered with the tokenizer's own chat template -- ChatML for gptlab's
native tokenizers, ``<|im_start|>{role}\\n{content}<|im_end|>\\n`` per message -- and cut
into *segments*: consecutive pieces of the rendered text, each either trained on or not.
The trained pieces are exactly each assistant turn's content plus its end-of-turn token
(``<|im_end|>``); the role header before it and the ``\\n`` after it are not trained, nor
is anything said by the system or the user, nor an assistant turn listed in
``meta.masked_turns`` (a deliberately wrong answer kept only as context).

- Native ChatML is rendered directly (the text equals ``Tokenizer.apply_chat_template``).
- Any other template (an imported model's) is rendered through jinja2 as transformers
  does, and the assistant spans come from rendering prefixes: the text of
  ``messages[:k]`` with the generation prompt ends where assistant turn ``k`` begins; the
  turn ends after its content and the special token that follows it (``<|eot_id|>``,
  ``</s>``, ...).

Each segment is tokenized on its own and the ids concatenated, so the mask is exact by
construction and a prompt rendered for generation (``render_prompt``) is tokenized the
same way the model saw it in training. Segment boundaries fall on special tokens or
after a header's newline, where the BPE pre-tokenizer splits anyway, so the ids equal
``tokenizer.encode(full_text)`` (tests check this on miniworld). Message *content* is
tokenized with special-token strings as plain text (``Tokenizer.encode_text``), so the
control tokens of a rendered conversation are exactly those of its template: a message
that says "<|im_end|>" cannot end its turn or start a forged one.

Batching the rendered conversations is gptlab.chat.examples.
"""
from __future__ import annotations

import re
import secrets
from typing import Iterable, Sequence

from gptlab.tokenizer import CHATML_TEMPLATE
from gptlab.tool_format import has_tool_parts, to_template_messages

IGNORE_INDEX = -100
ROLES = ("system", "user", "assistant", "tool")


# --------------------------------------------------------------------------- rendering


def _check_messages(messages: Sequence[dict]) -> None:
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise ValueError(f"message {i} must be {{'role': one of {ROLES}, 'content': str}}, got {m!r}")


def is_native_chatml(tokenizer) -> bool:
    """True when the tokenizer uses gptlab's ChatML template and has the ChatML tokens."""
    return (tokenizer.chat_template.strip() == CHATML_TEMPLATE.strip()
            and tokenizer.im_start_id is not None and tokenizer.im_end_id is not None)


def template_messages(tokenizer, messages: Sequence[dict], tools: list[dict] | None = None,
                      masked_turns: Iterable[int] = ()) -> tuple[list[dict], set[int]]:
    """Plain ``{"role", "content"}`` messages for the chat template (tool definitions, calls
    and results rendered as text by gptlab.tool_format) and ``masked_turns`` renumbered
    (a system turn put first for the tools shifts them by one)."""
    skip = set(masked_turns or ())
    if not has_tool_parts(messages, tools):
        return list(messages), skip
    needs_system = bool(tools) and not (messages and messages[0].get("role") == "system")
    plain = to_template_messages(list(messages), tools,
                                 default_system_text(tokenizer) if needs_system else "")
    shift = len(plain) - len(messages)
    return plain, {i + shift for i in skip}


_DEFAULT_SYSTEM: dict[str, str] = {}


def default_system_text(tokenizer) -> str:
    """The system text the chat template adds when a conversation has no system message
    (SmolLM2's "You are a helpful AI assistant named SmolLM, ..."), or "". Found by rendering
    a user turn with and without a system message of our own."""
    key = tokenizer.chat_template
    if key not in _DEFAULT_SYSTEM:
        user = [{"role": "user", "content": "\x00user\x00"}]
        try:
            alone = tokenizer.apply_chat_template(user)
            pre, post = tokenizer.apply_chat_template([{"role": "system", "content": "\x00sys\x00"}]
                                                      + user).split("\x00sys\x00")
        except Exception:  # a template without a system role
            alone, pre, post = "", "\x00", ""
        fits = alone.startswith(pre) and alone.endswith(post) and len(alone) >= len(pre) + len(post)
        _DEFAULT_SYSTEM[key] = alone[len(pre):len(alone) - len(post)] if fits else ""
    return _DEFAULT_SYSTEM[key]


def chat_segments(tokenizer, messages: Sequence[dict], *, masked_turns: Iterable[int] = (),
                  add_generation_prompt: bool = False, tools: list[dict] | None = None
                  ) -> list[tuple[str, bool]]:
    """The rendered conversation as consecutive ``(text, trained)`` pieces.

    Joined, the texts equal ``tokenizer.apply_chat_template(messages, add_generation_prompt)``
    (of the messages with their tool parts rendered: ``template_messages``); ``trained`` is
    True exactly for each assistant turn's content (tool calls included) and end-of-turn
    token, except turns whose index is in ``masked_turns``.
    """
    plain, skip = template_messages(tokenizer, messages, tools, masked_turns)
    return _segments(tokenizer, plain, skip, add_generation_prompt)


def _segments(tokenizer, messages, skip: set[int], add_generation_prompt: bool) -> list[tuple[str, bool]]:
    """chat_segments of plain messages (their tool parts already rendered)."""
    _check_messages(messages)
    if is_native_chatml(tokenizer):
        return _chatml_segments(messages, skip, add_generation_prompt)
    return _template_segments(tokenizer, messages, skip, add_generation_prompt)


def _chatml_segments(messages, skip, add_generation_prompt) -> list[tuple[str, bool]]:
    segs, pending = [], ""
    for i, m in enumerate(messages):
        header = f"<|im_start|>{m['role']}\n"
        if m["role"] == "assistant" and i not in skip:
            segs += [(pending + header, False), (m["content"] + "<|im_end|>", True)]
            pending = "\n"
        else:
            pending += header + m["content"] + "<|im_end|>\n"
    if add_generation_prompt:
        pending += "<|im_start|>assistant\n"
    if pending:
        segs.append((pending, False))
    return [s for s in segs if s[0]]


def _template_segments(tokenizer, messages, skip, add_generation_prompt) -> list[tuple[str, bool]]:
    """Any chat template: assistant spans found by rendering prefixes."""
    render = tokenizer.apply_chat_template
    full = render(list(messages), add_generation_prompt=add_generation_prompt)
    spans = []
    for k, m in enumerate(messages):
        if m["role"] != "assistant" or k in skip:
            continue
        prefix = render(list(messages[:k]), add_generation_prompt=True)
        upto = render(list(messages[:k + 1]), add_generation_prompt=False)
        if not (upto.startswith(prefix) and full.startswith(upto)):
            raise ValueError("this tokenizer's chat template renders a conversation differently "
                             "from its prefixes, so assistant turns cannot be located for the "
                             f"loss mask (turn {k})")
        spans.append((len(prefix), _turn_end(tokenizer, upto, len(prefix), m["content"])))
    segs, pos = [], 0
    for start, end in spans:
        segs += [(full[pos:start], False), (full[start:end], True)]
        pos = end
    segs.append((full[pos:], False))
    return [s for s in segs if s[0]]


def _turn_end(tokenizer, text: str, start: int, content: str) -> int:
    """Where assistant turn text[start:] ends: after its content and the end-of-turn special
    token that follows it (possibly after a space). Templates that transform the content
    (e.g. trim it) fall back to the turn's whole text minus trailing whitespace."""
    body = text[start:]
    if body.startswith(content):
        end = start + len(content)
    else:
        core = content.strip()
        pos = body.find(core) if core else -1
        if pos < 0 or body[:pos].strip():
            return start + len(body.rstrip())
        end = start + pos + len(core)
    rest = text[end:]
    gap = len(rest) - len(rest.lstrip(" "))
    marker = _leading_special(tokenizer, rest[gap:])
    return end + gap + len(marker) if marker else end


def _leading_special(tokenizer, text: str) -> str:
    """The special token string ``text`` starts with (e.g. "<|im_end|>"), or ""."""
    if not text:
        return ""
    ids = tokenizer.encode(text[:64])
    if not ids:
        return ""
    s = tokenizer.decode(ids[:1])
    if len(s) > 1 and text.startswith(s) and tokenizer.decode(ids[:1], skip_special_tokens=True) == "":
        return s
    return ""


def render_chat(tokenizer, messages: Sequence[dict], *, masked_turns: Iterable[int] = (),
                add_generation_prompt: bool = False, tools: list[dict] | None = None
                ) -> tuple[list[int], list[int]]:
    """Token ids of a conversation and its loss mask (1 = a token the model learns to say)."""
    plain, skip = template_messages(tokenizer, messages, tools, masked_turns)
    segs = _segments(tokenizer, plain, skip, add_generation_prompt)
    pieces = content_pieces(tokenizer, plain, segs, add_generation_prompt)
    return _assemble(tokenizer, pieces, _encode_pieces(tokenizer, [pieces]))


def render_prompt(tokenizer, messages: Sequence[dict], tools: list[dict] | None = None) -> list[int]:
    """Ids of a conversation (ending with a user or tool turn) plus the assistant header:
    the prompt a model completes to reply, tokenized exactly as in training."""
    return render_chat(tokenizer, messages, add_generation_prompt=True, tools=tools)[0]


def record_prompt(tokenizer, record: dict) -> list[int]:
    """A held-out record's prompt ids: its `messages` as `render_prompt` renders them, or for
    a base model's `{"prompt": text}` BOS (eos where there is none) + the text."""
    if record.get("messages") is not None:
        return render_prompt(tokenizer, record["messages"])
    bos = [tokenizer.bos_id] if tokenizer.bos_id is not None else [tokenizer.eos_id]
    return bos + tokenizer.encode(record["prompt"])


# Control tokens come only from the template: the rendered text is cut at the special-token
# strings the template wrote (each becomes its id), and every other piece -- message content
# included -- is tokenized with special-token strings read as plain text
# (Tokenizer.encode_text). This is what the tokenizer does with the whole text, except that a
# special-token string inside a message stays text. Stripping such strings instead cannot
# work: removing one can join the text around it into another ("<|im_<|endoftext|>end|>").

def content_pieces(tokenizer, messages: Sequence[dict], segs: list[tuple[str, bool]],
                   add_generation_prompt: bool = False) -> list[tuple[str, bool, bool]]:
    """``segs`` cut at the template's special tokens: ``(text, trained, is_special)``
    (``messages`` as the template renders them: ``template_messages``)."""
    specials = _template_specials(tokenizer, messages, add_generation_prompt,
                                  "".join(t for t, _ in segs))
    out, pos = [], 0
    for text, trained in segs:
        start, end = pos, pos + len(text)
        cuts = sorted({start, end} | {c for a, b in specials for c in (a, b) if start < c < end})
        for a, b in zip(cuts, cuts[1:]):
            out.append((text[a - start:b - start], trained, (a, b) in specials))
        pos = end
    return out


def _template_specials(tokenizer, messages, add_generation_prompt, full: str) -> set[tuple[int, int]]:
    """Character spans of the special-token strings in ``full`` outside message content."""
    names = sorted((tokenizer.id_to_token(i) for i in tokenizer.control_ids()), key=len, reverse=True)
    if not names:
        return set()
    pattern = re.compile("|".join(map(re.escape, names)))
    contents = _content_spans(tokenizer, messages, add_generation_prompt, full)
    if contents is None:  # not located: safe only when no content holds a special-token string
        if any(pattern.search(m["content"]) for m in messages):
            raise ValueError("this tokenizer's chat template changes message content, so a message "
                             "that contains a special-token string cannot be kept apart from the "
                             "template's control tokens")
        contents = []
    spans, pos = set(), 0
    for a, b in contents + [(len(full), len(full))]:
        spans |= {(pos + m.start(), pos + m.end()) for m in pattern.finditer(full[pos:a])}
        pos = b
    return spans


def _render_text(tokenizer, messages, add_generation_prompt) -> str:
    if is_native_chatml(tokenizer):
        return "".join(t for t, _ in _chatml_segments(messages, set(), add_generation_prompt))
    return tokenizer.apply_chat_template(list(messages), add_generation_prompt=add_generation_prompt)


def _content_spans(tokenizer, messages, add_generation_prompt, real: str) -> list[tuple[int, int]] | None:
    """Character spans of the message contents in the rendered conversation. Found by
    rendering with each content replaced by a random marker (a template that copies a
    content twice or drops it is handled); if putting the contents back in place of the
    markers does not give the real rendering (a template that rewrites content, e.g. trims
    it), trimmed contents are tried; None when neither fits."""
    nonce = secrets.token_hex(8)
    marks = {f"\x00{nonce}-{i}\x00": m["content"] for i, m in enumerate(messages)}
    stub = [{**m, "content": mark} for m, mark in zip(messages, marks)]
    skeleton = re.split("(" + "|".join(map(re.escape, marks)) + ")",
                        _render_text(tokenizer, stub, add_generation_prompt))
    for fix in (lambda c: c, str.strip):
        spans, text = [], ""
        for part in skeleton:
            if part in marks:
                content = fix(marks[part])
                spans.append((len(text), len(text) + len(content)))
                part = content
            text += part
        if text == real:
            return [(a, b) for a, b in spans if b > a]
    return None


def _encode_pieces(tokenizer, all_pieces: list[list[tuple[str, bool, bool]]]):
    """One batched tokenizer call for every non-special piece; an iterator of their ids."""
    return iter(tokenizer.encode_text_batch([t for pieces in all_pieces for t, _, sp in pieces if not sp]))


def _assemble(tokenizer, pieces: list[tuple[str, bool, bool]], texts) -> tuple[list[int], list[int]]:
    ids, mask = [], []
    for text, trained, special in pieces:
        piece = [tokenizer.token_to_id(text)] if special else next(texts)
        ids += piece
        mask += [int(trained)] * len(piece)
    return ids, mask


def render_records(tokenizer, records: Sequence[dict]) -> list[tuple[list[int], list[int]]]:
    """``render_chat`` for many ``{"messages", "tools"?, "meta"?}`` records
    (``meta.masked_turns`` honoured), with one batched tokenizer call."""
    all_pieces = []
    for r in records:
        plain, skip = template_messages(tokenizer, r["messages"], r.get("tools"),
                                        (r.get("meta") or {}).get("masked_turns") or ())
        all_pieces.append(content_pieces(tokenizer, plain, _segments(tokenizer, plain, skip, False)))
    texts = _encode_pieces(tokenizer, all_pieces)
    return [_assemble(tokenizer, pieces, texts) for pieces in all_pieces]


def stop_token_ids(tokenizer) -> list[int]:
    """Tokens that end an assistant turn: eos, ``<|im_end|>``, and the end-of-turn token
    the chat template puts after an assistant message (e.g. Llama 3's ``<|eot_id|>``)."""
    ids = {tokenizer.eos_id}
    if tokenizer.im_end_id is not None:
        ids.add(tokenizer.im_end_id)
    probe = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}]
    try:
        trained = [t for t, on in chat_segments(tokenizer, probe) if on]
    except Exception:  # a template that rejects the probe: eos / im_end only
        trained = []
    if trained and trained[0].startswith("ok"):
        marker = tokenizer.encode(trained[0][2:].strip())
        if len(marker) == 1:
            ids.add(marker[0])
    return sorted(i for i in ids if i is not None)
