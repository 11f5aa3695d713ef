"""gptlab chat: the terminal chat, driven through a pseudo-terminal, and its parts.

The model is a random tiny GPT, so its replies are gibberish -- but deterministic with
greedy decoding, so each reply the CLI streams must equal the reply computed here from the
conversation it should have sent (with the system message after /system, without the
history after /reset).
"""

from __future__ import annotations

import io
import json
import os
import sys
from pathlib import Path

import pytest
import torch

from gptlab.chat import render_prompt, stop_token_ids
from gptlab.chat.terminal import BOT_PREFIX, ChatSession, chat_loop, read_message

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def model_dir(tiny_tokenizer, tmp_path_factory):
    from gptlab.checkpoint import save_checkpoint
    from gptlab.model import GPT, preset
    from gptlab.tokenizer import Tokenizer

    tok = Tokenizer.load(tiny_tokenizer)
    torch.manual_seed(1)  # a seed whose greedy replies are printable text
    out = tmp_path_factory.mktemp("chatmodel") / "model"
    save_checkpoint(out, GPT(preset(2, tok.vocab_size, 512)), tok, meta={"stage": "sft"})
    return out


@pytest.fixture(scope="module")
def ckpt(model_dir):
    from gptlab.checkpoint import load_checkpoint
    return load_checkpoint(model_dir)


def _greedy(ckpt, messages, max_new=12) -> str:
    from gptlab.engine import Engine
    out = Engine(ckpt.model, ckpt.tokenizer).generate(
        [render_prompt(ckpt.tokenizer, messages)], max_new_tokens=max_new,
        stop_token_ids=stop_token_ids(ckpt.tokenizer))
    return ckpt.tokenizer.decode(out[0])


def test_chat_in_a_pseudo_terminal_streams_and_honours_system_and_reset(model_dir, ckpt, tmp_path):
    pexpect = pytest.importorskip("pexpect")
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    child = pexpect.spawn(sys.executable, ["-m", "gptlab", "chat", "--model", str(model_dir),
                                           "--temperature", "0", "--max-new-tokens", "12"],
                          cwd=str(ROOT), env=env, encoding="utf-8", timeout=90)
    try:
        child.expect_exact("/help for commands")
        child.expect_exact("you> ")

        def send(line: str) -> str:
            """Send a line; return what the chat printed before its next prompt."""
            child.sendline(line)
            child.expect_exact("you> ")
            return child.before.replace("\r\n", "\n")

        def ask(text: str) -> str:
            seen = send(text)
            assert BOT_PREFIX in seen, seen
            reply = seen.split(BOT_PREFIX, 1)[1].removesuffix("\n")
            return reply.split("\n[reply cut at", 1)[0]  # a note when max-new-tokens ends it

        q1, q2 = "where does alice live?", "and bruno?"
        u1, u2 = {"role": "user", "content": q1}, {"role": "user", "content": q2}
        r1 = ask(q1)
        assert r1 == _greedy(ckpt, [u1]) and r1
        r2 = ask(q2)  # the history is in the prompt
        assert r2 == _greedy(ckpt, [u1, {"role": "assistant", "content": r1}, u2])

        assert "[system message set]" in send("/system answer in one word.")
        sys_msg = {"role": "system", "content": "answer in one word."}
        r3 = ask(q1)
        assert r3 == _greedy(ckpt, [sys_msg, u1, {"role": "assistant", "content": r1}, u2,
                                    {"role": "assistant", "content": r2}, u1])

        assert "[conversation reset, system message kept]" in send("/reset")
        r4 = ask(q1)
        assert r4 == _greedy(ckpt, [sys_msg, u1]) and r4 != r1

        save = tmp_path / "conv.jsonl"
        assert "[appended the conversation" in send(f"/save {save}")
        child.sendline("/quit")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0
    saved = json.loads(save.read_text())
    assert saved["messages"] == [sys_msg, u1, {"role": "assistant", "content": r4}]


def test_replies_stream_in_pieces(ckpt):
    session = ChatSession(ckpt.model, ckpt.tokenizer, temperature=0.0, max_new_tokens=12)
    deltas, notes = [], []
    reply = session.respond("where does alice live?", deltas.append, notes.append)
    assert len(deltas) > 1 and "".join(deltas) == reply
    assert reply == _greedy(ckpt, [{"role": "user", "content": "where does alice live?"}])


def test_long_conversations_drop_oldest_turns_and_keep_the_system_message(ckpt):
    session = ChatSession(ckpt.model, ckpt.tokenizer, system="answer briefly.",
                          temperature=0.0, max_new_tokens=16)
    session.context = 160  # as if the model had a 160-token context
    notes, prompts = [], []
    stream = session.engine.stream

    def spy(prompt, **kw):
        prompts.append(prompt)
        return stream(prompt, **kw)

    session.engine.stream = spy
    for i in range(12):
        session.respond(f"question number {i}: where does alice live?", lambda d: None, notes.append)
    assert any("dropped" in n and "system message is kept" in n for n in notes)
    tok = ckpt.tokenizer
    for p in prompts:
        assert len(p) + 16 <= session.context
        assert tok.decode(p).startswith("<|im_start|>system\nanswer briefly.<|im_end|>\n<|im_start|>user\n")
    assert "question number 11" in tok.decode(prompts[-1])
    assert "question number 0:" not in tok.decode(prompts[-1])
    assert len(session.conversation()) == 1 + 2 * 12  # /save would still see everything
    # a single message that cannot fit is refused, not sent
    assert session.respond("alice " * 400, lambda d: None, notes.append) is None
    assert "too long" in notes[-1] and len(session.messages) == 24


def test_read_message_multiline_forms():
    def reader(lines):
        it = iter(lines)
        return lambda prompt: next(it)

    assert read_message(reader(["hello"])) == "hello"
    assert read_message(reader(["first \\", "second\\", "third"])) == "first \nsecond\nthird"
    assert read_message(reader(['"""', "a", "", "b", '"""'])) == "a\n\nb"
    assert read_message(reader(['"""start', 'end"""'])) == "start\nend"
    assert read_message(reader(['"""one line"""'])) == "one line"
    with pytest.raises(EOFError):
        read_message(lambda prompt: (_ for _ in ()).throw(EOFError))


def test_commands_without_a_terminal(ckpt, tmp_path):
    session = ChatSession(ckpt.model, ckpt.tokenizer, temperature=0.5, max_new_tokens=4)
    lines = iter(["/temperature 0", "/temperature -1", "/system", "/system be nice", "/system",
                  "/system -", "/help", "/nope", "hi", f"/save {tmp_path / 's.jsonl'}", "/exit",
                  "never read"])
    out = io.StringIO()
    chat_loop(session, lambda prompt: next(lines), out)
    text = out.getvalue()
    assert session.temperature == 0.0 and session.system is None
    for want in ("[temperature 0]", "usage: /temperature", "no system message",
                 "system: 'be nice'", "[system message removed]", "/save PATH",
                 "unknown command /nope", BOT_PREFIX, "[appended the conversation"):
        assert want in text, want
    assert next(lines) == "never read"
    saved = json.loads((tmp_path / "s.jsonl").read_text())
    assert [m["role"] for m in saved["messages"]] == ["user", "assistant"]
