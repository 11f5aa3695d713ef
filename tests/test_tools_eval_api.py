"""The tools eval through a live `gptlab serve` (gptlab/evals/tools_api.py): the official
`openai` client sends each conversation with its tools, and the replies are scored by the
same code as a model's. A random-weight model is served; the grammar (gptlab.serve.tools)
alone makes every call it returns parse and validate, so the malformed count is 0."""

from __future__ import annotations

import json
import random

import pytest
from openai.types.chat import ChatCompletionMessage
from serve_fixtures import save_tiny_chat_model, start_server

from gptlab.cli import main
from gptlab.data.world_kb import build_kb
from gptlab.evals.tools_api import ApiToolGenerator, reply_text
from gptlab.evals.tools_eval import MAX_ROUNDS, load_tool_records, run_episodes, score_episodes
from gptlab.judge import Judge
from gptlab.tool_format import parse_tool_calls

pytestmark = pytest.mark.usefixtures("one_thread")

SECRET = "sk-test-not-to-be-written"


@pytest.fixture(scope="module")
def kb():
    return build_kb(random.Random(0), 0, "tiny")


@pytest.fixture(scope="module")
def world(kb, tmp_path_factory):
    """A world with only kb.json: the tools records are built from it."""
    out = tmp_path_factory.mktemp("tools_api_world")
    (out / "kb.json").write_text(json.dumps(kb))
    return out


@pytest.fixture(scope="module")
def api_base(tiny_tokenizer, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tools_api_serve")
    model = save_tiny_chat_model(tmp / "tiny-chat", tiny_tokenizer, max_seq_len=2048)  # tools take ~500 tokens
    url, stop = start_server(tmp, models=[str(model)], max_batch=8)
    yield url + "/v1"
    stop()


def test_gptlab_eval_api_base_runs_the_tools_suite_end_to_end(api_base, world, tmp_path, capsys):
    out = tmp_path / "eval.json"
    rc = main(["eval", "--world", str(world), "--api-base", api_base, "--api-key", SECRET,
               "--suite", "tools", "--suite", "chat", "--limit", "1", "--max-new-tokens", "16",
               "--out", str(out), "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    text = out.read_text()
    assert SECRET not in text
    res = json.loads(text)
    assert res["model"] == f"{api_base} (tiny-chat)"     # the first model the server lists
    assert res["settings"]["decoding"] == "api" and res["settings"]["api_model"] == "tiny-chat"
    assert res["skipped"] == {"chat": "needs --model (through --api-base only the tools suites run)"}
    assert f"--api-base {api_base}" in res["command"] and "--model" not in res["command"]

    tools = res["suites"]["tools"]
    records = load_tool_records(world, 1)
    by_case = {c: sum(r["meta"]["case"] == c for r in records) for c in tools["by_case"]}
    assert tools["records"] == len(records) == sum(tools["by_case"].values()) and tools["by_case"] == by_case
    needs_tool = sum(by_case.get(c, 0) for c in ("lookup", "calculator", "tool_error"))
    assert tools["counts"]["tool_choice_accuracy"] == needs_tool
    assert tools["counts"]["tool_false_calls"] == by_case["no_tool"]
    assert tools["counts"]["tool_malformed_calls"] >= len(records)   # every reply is checked
    assert tools["metrics"]["tool_malformed_calls"] == 0
    assert tools["max_new_tokens"] == 16


def test_a_server_run_does_not_merge_into_a_model_s_eval_json(api_base, world, tmp_path):
    out = tmp_path / "eval.json"
    out.write_text(json.dumps({"model": "runs/x/sft/final", "model_kind": "chat", "world": str(world),
                               "settings": {}, "suites": {"chat": {"metrics": {"qa_accuracy": 0.5}}}}))
    assert main(["eval", "--world", str(world), "--api-base", api_base, "--limit", "1",
                 "--max-new-tokens", "8", "--out", str(out), "--no-progress"]) == 0
    res = json.loads(out.read_text())
    assert list(res["suites"]) == ["tools"] and "qa_accuracy" not in res["metrics"]   # tools: the default


def test_calls_from_the_server_round_trip_through_the_eval(api_base, world, kb):
    """tool_choice required: every reply of the random model is a call, so every episode
    runs all its tool rounds, the results go back as tool turns, and none is malformed."""
    generate = ApiToolGenerator(api_base, "default", tool_choice="required")
    records = [r for r in load_tool_records(world, 1) if r["meta"]["case"] in ("lookup", "no_tool")][:3]
    episodes = run_episodes(records, generate, kb, max_new_tokens=128)  # a call takes ~80
    for ep in episodes:
        assert len(ep.replies) == MAX_ROUNDS + 1 and all(ep.calls) and ep.malformed == 0
        assert [m["role"] for m in ep.messages].count("tool") >= MAX_ROUNDS
        assert ep.final == ""          # it still called after the last round: no answer
    res = score_episodes(episodes, Judge(kb))
    assert res["metrics"]["tool_malformed_calls"] == 0
    assert res["counts"]["tool_malformed_calls"] == len(records) * (MAX_ROUNDS + 1)
    if any(r["meta"]["case"] == "no_tool" for r in records):
        assert res["metrics"]["tool_false_calls"] == 1.0


def _message(content, *calls):
    return ChatCompletionMessage.model_validate({"role": "assistant", "content": content, "tool_calls": [
        {"id": f"call_{i}", "type": "function", "function": {"name": n, "arguments": a}}
        for i, (n, a) in enumerate(calls)] or None})


def test_a_reply_reads_back_as_the_text_the_model_wrote():
    text = reply_text(_message("Let me check.", ("lookup", '{"entity": "Avaria", "relation": "capital"}'),
                               ("calculator", '{"expression": "2 + 2"}')))
    content, calls = parse_tool_calls(text)
    assert content == "Let me check."
    assert calls == [{"name": "lookup", "arguments": {"entity": "Avaria", "relation": "capital"}},
                     {"name": "calculator", "arguments": {"expression": "2 + 2"}}]
    assert reply_text(_message("Hello.")) == "Hello."
    assert reply_text(_message(None)) == ""


def test_arguments_that_are_not_json_stay_malformed():
    """A server without constrained decoding may return broken arguments: the text keeps
    them, so the eval counts the call as malformed instead of crashing or fixing it."""
    from gptlab.evals.tools_eval import malformed_calls
    for broken in ('{"entity": "Avaria", ', "[1, 2]"):
        text = reply_text(_message(None, ("lookup", broken)))
        content, calls = parse_tool_calls(text)
        assert calls == [] and broken in content
        assert malformed_calls(text, calls, {"lookup"}) == 1


def test_an_unreachable_server_is_one_clear_error(world, capsys):
    rc = main(["eval", "--world", str(world), "--api-base", "http://127.0.0.1:9/v1", "--api-model", "m",
               "--suite", "tools", "--limit", "1", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "cannot reach the server at http://127.0.0.1:9/v1" in err


def test_a_4xx_names_the_url_and_the_server_s_message(api_base, world, capsys):
    rc = main(["eval", "--world", str(world), "--api-base", api_base, "--api-model", "no-such-model",
               "--suite", "tools", "--limit", "1", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and f"{api_base} answered HTTP 404" in err and "no-such-model" in err


def test_api_base_and_model_together_are_refused(world, tiny_chat_ckpt, capsys):
    rc = main(["eval", "--world", str(world), "--api-base", "http://127.0.0.1:9/v1",
               "--model", str(tiny_chat_ckpt), "--suite", "tools"])
    assert rc == 2 and "not both" in capsys.readouterr().err
