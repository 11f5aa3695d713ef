"""Tool calling on /v1/chat/completions (gptlab.serve.tools), through the official `openai`
client and LangChain's ChatOpenAI, against a live server with a tiny random-weight model:
the grammar alone guarantees that a required / named call parses and validates."""

from __future__ import annotations

import json

import jsonschema
import openai
import pytest
from serve_fixtures import save_tiny_chat_model, start_server

from gptlab.serve.tools import ToolPlan, ToolStream

pytestmark = pytest.mark.usefixtures("one_thread")

WEATHER_PARAMS = {"type": "object", "properties": {
    "city": {"type": "string", "maxLength": 12},
    "days": {"type": "integer", "minimum": 1, "maximum": 7},
    "unit": {"type": "string", "enum": ["c", "f"]}}, "required": ["city", "days"]}
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather forecast.",
                                            "parameters": WEATHER_PARAMS}}
CLOCK = {"type": "function", "function": {"name": "time_now", "parameters": {"type": "object", "properties": {}}}}
USER = [{"role": "user", "content": "weather in paris?"}]
SCHEMAS = {"get_weather": WEATHER_PARAMS, "time_now": CLOCK["function"]["parameters"]}


@pytest.fixture(scope="module")
def server(tiny_tokenizer, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve_tools")
    model = save_tiny_chat_model(tmp / "tiny-chat", tiny_tokenizer, max_seq_len=2048)  # tools take ~500 tokens
    url, stop = start_server(tmp, models=[str(model)], max_batch=8)
    yield url
    stop()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server + "/v1", api_key="unused", max_retries=0, timeout=60)


def chat(client, **kw):
    kw.setdefault("model", "default")
    kw.setdefault("messages", USER)
    kw.setdefault("max_tokens", 200)
    kw.setdefault("tools", [WEATHER, CLOCK])
    return client.chat.completions.create(**kw)


def _check_calls(calls, names):
    assert calls
    for call in calls:
        assert call.type == "function" and call.id.startswith("call_") and call.function.name in names
        jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])


@pytest.mark.parametrize("seed", range(4))
def test_named_choice_always_calls_that_function(client, seed):
    r = chat(client, seed=seed, tool_choice={"type": "function", "function": {"name": "get_weather"}},
             parallel_tool_calls=False)
    c = r.choices[0]
    assert c.finish_reason == "tool_calls" and c.message.content is None
    assert len(c.message.tool_calls) == 1
    _check_calls(c.message.tool_calls, {"get_weather"})


def test_required_choice_calls_and_may_call_in_parallel(client):
    seen = set()
    for seed in range(4):
        c = chat(client, seed=seed, tool_choice="required").choices[0]
        assert c.finish_reason == "tool_calls"
        _check_calls(c.message.tool_calls, {"get_weather", "time_now"})
        seen.add(len(c.message.tool_calls))
    assert max(seen) > 1  # a random model writes a second call now and then (seeded: it does here)


def test_streamed_call_reassembles_to_the_whole_reply(client):
    kw = dict(seed=2, temperature=1.0, tool_choice="required")
    whole = chat(client, **kw).choices[0].message.tool_calls
    calls, reasons = {}, []
    for chunk in chat(client, stream=True, **kw):
        for ch in chunk.choices:
            reasons.append(ch.finish_reason)
            for d in ch.delta.tool_calls or []:
                entry = calls.setdefault(d.index, {"id": "", "name": "", "arguments": ""})
                entry["id"] += d.id or ""
                entry["name"] += d.function.name or ""
                entry["arguments"] += d.function.arguments or ""
    assert [r for r in reasons if r] == ["tool_calls"]
    assert [(c["name"], json.loads(c["arguments"])) for c in calls.values()] == \
        [(c.function.name, json.loads(c.function.arguments)) for c in whole]
    assert all(c["id"].startswith("call_") for c in calls.values())


def test_tool_choice_none_and_auto_never_return_a_broken_call(client):
    for seed in range(3):
        c = chat(client, seed=seed, tool_choice="none").choices[0]
        assert c.message.tool_calls is None and c.finish_reason in ("stop", "length")
        a = chat(client, seed=seed, tool_choice="auto", max_tokens=60).choices[0]
        if a.message.tool_calls:
            _check_calls(a.message.tool_calls, {"get_weather", "time_now"})
        else:
            assert a.finish_reason in ("stop", "length")


def test_tool_turns_in_history_are_rendered(client, tiny_tokenizer):
    from gptlab.chat import render_prompt
    from gptlab.tokenizer import Tokenizer

    call = {"id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris", "days": 1}'}}
    history = USER + [{"role": "assistant", "content": None, "tool_calls": [call]},
                      {"role": "tool", "tool_call_id": "call_1", "content": '{"temp_c": 21}'}]
    r = chat(client, messages=history, tool_choice="none", max_tokens=4)
    expected = render_prompt(Tokenizer.load(tiny_tokenizer), history)
    assert r.usage.prompt_tokens == len(expected)
    with_tools = chat(client, messages=history, max_tokens=4, tool_choice="auto")
    assert with_tools.usage.prompt_tokens > r.usage.prompt_tokens  # the definitions are in the prompt


@pytest.mark.parametrize("kw,needle", [
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}]},
     "must be a JSON schema of type \"object\""),
    ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "letters, digits"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"a": {"type": 5}}}}}]}, "not a valid JSON schema"),
    ({"tools": [WEATHER, WEATHER]}, "two tools are named"),
    ({"tool_choice": {"type": "function", "function": {"name": "nope"}}}, "'nope', which is not in tools"),
    ({"tool_choice": "sometimes"}, "tool_choice must be one of"),
    ({"tools": None, "tool_choice": "required"}, "only allowed when tools are given"),
    ({"tool_choice": "required", "max_tokens": 5}, "max_tokens=5 is too small"),
])
def test_bad_tools_are_a_clear_400(client, kw, needle):
    with pytest.raises(openai.BadRequestError) as e:
        chat(client, **kw)
    assert needle in e.value.message


def test_tool_stream_holds_back_a_possible_tag_and_drops_bad_calls():
    plan = ToolPlan([{"name": "f", "parameters": {"type": "object", "properties": {"x": {"type": "integer"}}}}],
                    "auto", ["f"])
    plan.validators = {"f": jsonschema.Draft202012Validator(plan.functions[0]["parameters"])}
    s = ToolStream(plan)
    assert s.feed("Sure.\n<tool") == [{"content": "Sure."}]       # "<tool" may begin a call
    out = s.feed('_call>\n{"name": "f", "arguments": {"x": 1}}\n</tool_call>\n<tool_call>\n'
                 '{"name": "f", "arguments": {"x": "no"}}\n</tool_call>')
    assert out[0]["tool_calls"][0]["function"] == {"name": "f", "arguments": '{"x": 1}'}
    assert out[1]["content"].startswith("<tool_call>") and len(s.calls) == 1   # invalid: content
    assert s.feed(" 2 <") == [{"content": " 2"}] and s.finish() == [{"content": " <"}]


# ----------------------------------------------------------------------------- LangChain


def test_langchain_bind_tools_structured_output_and_agent_loop(server):
    pytest.importorskip("langchain_openai")
    from langchain_core.messages import HumanMessage, ToolMessage
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI
    from pydantic import BaseModel, Field

    @tool
    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    class City(BaseModel):
        """A city and its country."""
        name: str = Field(max_length=10)
        country: str = Field(max_length=10)

    llm = ChatOpenAI(base_url=server + "/v1", api_key="unused", model="default", max_tokens=120,
                     temperature=0, max_retries=0)
    forced = llm.bind_tools([add], tool_choice="add")
    msg = forced.invoke([HumanMessage("what is 2 + 3?")])
    assert msg.tool_calls and msg.tool_calls[0]["name"] == "add"
    args = msg.tool_calls[0]["args"]
    assert set(args) == {"a", "b"} and all(isinstance(v, int) for v in args.values())

    city = llm.with_structured_output(City, method="function_calling").invoke("Where is the Eiffel tower?")
    assert isinstance(city, City) and len(city.name) <= 10

    # two steps: the model calls, we run the tool and send the result back, the model answers
    history = [HumanMessage("what is 2 + 3?"), msg]
    history += [ToolMessage(str(add.invoke(c["args"])), tool_call_id=c["id"]) for c in msg.tool_calls]
    answer = llm.bind_tools([add]).invoke(history, tool_choice="none")
    assert isinstance(answer.content, str) and not answer.tool_calls


def test_length_bounded_strings_exclude_control_characters(tiny_tokenizer):
    """xgrammar 0.2.9 lets raw control characters into a string with maxLength (found here: a
    random model's call did not parse); the fixed grammar, shared by response_format, rejects them."""
    import xgrammar as xgr

    from gptlab.serve.grammar import GrammarFactory
    from gptlab.serve.schemas import ResponseFormat
    from gptlab.tokenizer import Tokenizer

    tok = Tokenizer.load(tiny_tokenizer)
    factory = GrammarFactory(tok, tok.vocab_size, [tok.eos_id], compile_workers=1)
    fmt = ResponseFormat.model_validate({"type": "json_schema", "json_schema": {"schema": WEATHER_PARAMS}})
    compiled = factory.compile(fmt)
    for text, ok in [('{"city": "a\x05b", "days": 1}', False), ('{"city": "a b", "days": 1}', True)]:
        assert xgr.GrammarMatcher(compiled).accept_string(text) is ok


def test_closer_finishes_a_call_in_few_tokens_and_nothing_after(tiny_tokenizer):
    """The closer (what `max_tokens` must leave room for) takes the longest allowed token, so
    an open call needs far fewer tokens than its bytes (one byte per token made `auto` refuse
    calls that fitted), and it ends at ``</tool_call>`` with no stray text after it."""
    from gptlab.serve.grammar import GrammarFactory
    from gptlab.serve.schemas import ChatCompletionRequest
    from gptlab.serve.tools import plan_tools
    from gptlab.tokenizer import Tokenizer

    tok = Tokenizer.load(tiny_tokenizer)
    factory = GrammarFactory(tok, tok.vocab_size, [tok.eos_id], compile_workers=1)
    body = ChatCompletionRequest.model_validate({"model": "m", "messages": USER, "tools": [WEATHER, CLOCK]})
    plan = plan_tools(body)
    c = factory.constraint(factory.compile(plan.grammar_format()))
    assert c.matcher.accept_string("<tool_call>")
    need = c.closing_length()
    m, path = c.matcher.fork(), []
    while (t := c._closer_token(m)) != tok.eos_id:
        path.append(t)
        assert m.accept_token(t)
    text = "<tool_call>" + tok.decode(path)
    assert len(path) == need and text.endswith("</tool_call>")
    assert plan.check_block(text) is not None
    assert need < len(text.encode()) - len("<tool_call>") - 5
