"""gptlab.tool_format and tool turns in gptlab.chat: the exact text of tool definitions, calls
and results, parsing calls back (never a malformed one), and the SFT loss mask (calls
trained, tool results not), on the native ChatML tokenizer and SmolLM2's template."""

from __future__ import annotations

import json
import shutil

import pytest

from gptlab.chat import chat_segments, render_chat, render_prompt, render_records
from gptlab.tokenizer import Tokenizer
from gptlab.tool_format import (format_tool_calls, openai_tool_calls, parse_tool_calls, render_tools_block,
                                to_template_messages)

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
CALC = {"type": "function", "function": {"name": "calculator", "parameters": {
    "type": "object", "properties": {"expression": {"type": "string"}}}}}
CALL = {"id": "call_1", "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}
CONV = [
    {"role": "user", "content": "weather in paris?"},
    {"role": "assistant", "content": None, "tool_calls": [CALL]},
    {"role": "tool", "tool_call_id": "call_1", "content": '{"temp_c": 21}'},
    {"role": "assistant", "content": "It is 21 C in Paris."},
]
SMOL_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


@pytest.fixture(scope="module")
def tok(tiny_tokenizer) -> Tokenizer:
    return Tokenizer.load(tiny_tokenizer)


@pytest.fixture(scope="module")
def smol_tok(tiny_tokenizer, tmp_path_factory) -> Tokenizer:
    """The tiny tokenizer with SmolLM2's chat template (a default system message)."""
    d = tmp_path_factory.mktemp("smol_template")
    shutil.copytree(tiny_tokenizer, d, dirs_exist_ok=True)
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    cfg["chat_template"] = (
        "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
        "{{ '<|im_start|>system\n" + SMOL_SYSTEM + "<|im_end|>\n' }}{% endif %}"
        "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    return Tokenizer.load(d)


def test_tools_block_text():
    block = render_tools_block([WEATHER, CALC])
    lines = block.split("\n")
    assert lines[:2] == ["# Tools", ""] and "<tool_call></tool_call>" in lines[2]
    assert lines[3] == "<tools>" and lines[-1] == "</tools>" and len(lines) == 7
    assert json.loads(lines[4]) == WEATHER["function"]
    assert lines[5] == '{"name": "calculator", "parameters": {"type": "object", "properties": ' \
                       '{"expression": {"type": "string"}}}}'


def test_call_text_and_round_trip():
    text = format_tool_calls([CALL, {"name": "calculator", "arguments": {"expression": "2+2"}}])
    assert text == ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
                    '<tool_call>\n{"name": "calculator", "arguments": {"expression": "2+2"}}\n</tool_call>')
    content, calls = parse_tool_calls("Let me check.\n" + text)
    assert content == "Let me check."
    assert calls == [{"name": "get_weather", "arguments": {"city": "Paris"}},
                     {"name": "calculator", "arguments": {"expression": "2+2"}}]
    out = openai_tool_calls(calls)
    assert out[0]["id"].startswith("call_") and out[0]["id"] != out[1]["id"]
    assert json.loads(out[0]["function"]["arguments"]) == {"city": "Paris"}


@pytest.mark.parametrize("text", [
    "just an answer",
    '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Par\n</tool_call>',   # broken JSON
    '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}',           # never closed
    '<tool_call>\n{"arguments": {"city": "Paris"}}\n</tool_call>',                    # no name
    '<tool_call>\n{"name": "f", "arguments": [1]}\n</tool_call>',                     # not an object
    '<tool_call>\n{"name": "f", "arguments": {}}\n</tool_call>\n<tool_call>\n{"name": ',  # 2nd broken
])
def test_malformed_calls_are_content(text):
    assert parse_tool_calls(text) == (text, [])


def test_messages_as_template_text():
    plain = to_template_messages(CONV, [WEATHER], default_system="Be brief.")
    assert [m["role"] for m in plain] == ["system", "user", "assistant", "tool", "assistant"]
    assert plain[0]["content"] == "Be brief.\n\n" + render_tools_block([WEATHER])
    assert plain[2]["content"] == format_tool_calls([CALL])
    assert plain[3]["content"] == '<tool_response>\n{"temp_c": 21}\n</tool_response>'
    mixed = to_template_messages([{"role": "assistant", "content": "Checking.", "tool_calls": [CALL]}])
    assert mixed[0]["content"] == "Checking.\n" + format_tool_calls([CALL])
    with pytest.raises(ValueError, match="not valid JSON"):
        to_template_messages([{"role": "assistant", "tool_calls": [
            {"function": {"name": "f", "arguments": "{oops"}}]}])


def test_native_mask_trains_calls_not_tool_results(tok):
    ids, mask = render_chat(tok, CONV, tools=[WEATHER])
    text = tok.decode(ids)
    assert text.startswith("<|im_start|>system\n# Tools\n\n")  # no default system text here
    assert ('<|im_start|>tool\n<tool_response>\n{"temp_c": 21}\n</tool_response><|im_end|>\n'
            '<|im_start|>assistant\n') in text
    assert ids == tok.encode(tok.apply_chat_template(to_template_messages(CONV, [WEATHER])))
    trained = [t for t, on in chat_segments(tok, CONV, tools=[WEATHER]) if on]
    assert trained == [format_tool_calls([CALL]) + "<|im_end|>", "It is 21 C in Paris.<|im_end|>"]
    assert tok.decode([i for i, m in zip(ids, mask) if m]) == "".join(trained)
    # the prompt after the tool result is the training prefix of the final answer
    prompt = render_prompt(tok, CONV[:3], tools=[WEATHER])
    assert ids[:len(prompt)] == prompt and mask[len(prompt)] == 1 and not any(mask[:len(prompt)][-20:])


def test_default_system_text_kept_and_masked_turns_shift(smol_tok):
    rec = {"messages": CONV, "tools": [WEATHER], "meta": {"masked_turns": [1]}}
    (ids, mask), = render_records(smol_tok, [rec])
    text = smol_tok.decode(ids)
    assert text.startswith(f"<|im_start|>system\n{SMOL_SYSTEM}\n\n# Tools\n\n")
    assert text.count("<|im_start|>system") == 1
    # turn 1 (the call) is masked out even though a system turn was put before it
    assert smol_tok.decode([i for i, m in zip(ids, mask) if m]) == "It is 21 C in Paris.<|im_end|>"
    # without tools the template adds its own system text, as before
    plain_ids, _ = render_chat(smol_tok, CONV[:1])
    assert smol_tok.decode(plain_ids).startswith(f"<|im_start|>system\n{SMOL_SYSTEM}<|im_end|>")


def test_explicit_system_message_gets_the_tools(smol_tok):
    conv = [{"role": "system", "content": "Be brief."}] + CONV
    ids, mask = render_chat(smol_tok, conv, tools=[WEATHER])
    assert smol_tok.decode(ids).startswith("<|im_start|>system\nBe brief.\n\n# Tools\n\n")
    assert SMOL_SYSTEM not in smol_tok.decode(ids)


def test_sft_file_with_tools_loads_and_masks(tok, tmp_path):
    """An OpenAI fine-tuning style record (tools, tool_calls, a tool turn) read by SFT's
    loader keeps its tool parts, and only the assistant turns are trained."""
    from gptlab.train.sft_data import load_chat_records

    path = tmp_path / "tools.jsonl"
    path.write_text(json.dumps({"messages": CONV, "tools": [WEATHER]}) + "\n")
    records = load_chat_records(str(path))
    assert records[0]["tools"] == [WEATHER] and records[0]["messages"][1]["tool_calls"] == [CALL]
    (ids, mask), = render_records(tok, records)
    assert (ids, mask) == render_chat(tok, CONV, tools=[WEATHER])
    assert "temp_c" not in tok.decode([i for i, m in zip(ids, mask) if m])
