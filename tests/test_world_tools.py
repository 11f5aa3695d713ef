"""miniworld's `tools` category and the built-in tools behind it (gptlab/tools.py)."""
from __future__ import annotations

import json
import random
import re

import pytest

from gptlab.chat import render_chat
from gptlab.data.world_kb import build_kb, heldout_matcher
from gptlab.data.world_tools import (CASES, SYSTEM_FACT_SHARE, generate_tools, heldout_template_ids, to_prompt,
                                     tools_eval_records, tools_sft_records)
from gptlab.tokenizer import Tokenizer
from gptlab.tools import (MAX_EXPONENT, TOOL_SPECS, KnowledgeBase, ToolError, calculate,
                          parse_tool_names, run_tool)


@pytest.fixture(scope="module")
def kb():
    return build_kb(random.Random(0), 0, "tiny")


@pytest.fixture(scope="module")
def sft(kb):
    return tools_sft_records(kb, seed=0, n=120)


@pytest.fixture(scope="module")
def evals(kb):
    return tools_eval_records(kb, seed=0, per_case=10)


def _dump(records) -> str:
    return "".join(json.dumps(r, sort_keys=True) + "\n" for r in records)


# ---------------------------------------------------------------------------- the tools

def test_calculator_is_exact_arithmetic():
    assert calculate("84 / 12") == "7"            # exact, not 7.0
    assert calculate("0.1 + 0.2") == "0.3"        # fractions, not floats
    assert calculate("(12 + 3) * -4") == "-60"
    assert calculate("1 / 3") == "0.333333"
    assert calculate("2 ** 10") == calculate("2^10") == "1024"
    assert calculate("(98 - 32) * 5 / 9") == "36.666667"


def test_calculator_converts_units_exactly():
    assert calculate("10 mi to km") == "16.09344"            # 1 mi is 1609.344 m by definition
    assert calculate("1 kg to lb") == calculate("1 kilogram in pounds") == "2.204623"
    assert calculate("100 C to F") == calculate("100 °C to °F") == "212"
    assert calculate("(98 - 32) F to C") == calculate("66 degrees Fahrenheit to Celsius") == "18.888889"
    assert calculate("-40 celsius into fahrenheit") == "-40"
    assert calculate("16 oz to lb") == "1" and calculate("1000 m to km") == "1"
    with pytest.raises(ToolError, match="cannot convert mass"):
        calculate("3 kg to km")
    with pytest.raises(ToolError, match="unknown unit 'parsecs'"):
        calculate("3 parsecs to km")


@pytest.mark.parametrize("expr", [
    "__import__('os').system('true')", "x + 1", "(1).real", "abs(-1)", "[1, 2]", "'a' * 3",
    "1 if 1 else 2", "1 < 2", "True + 1", "lambda: 1",
])
def test_calculator_rejects_anything_but_arithmetic(expr):
    with pytest.raises(ToolError, match="only numbers"):
        calculate(expr)


@pytest.mark.parametrize("expr, why", [
    ("2 ** 99999999", "exponents"), ("9 ** 9 ** 9", "exponents"), (f"2 ** {MAX_EXPONENT + 1}", "exponents"),
    ("2 ** 0.5", "exponents"), ("10 ** 31", "too large"), ("99999999999 * 99999999999 * 99999999999", "too large"),
    ("1 / 0", "division by zero"), ("0 ** -1", "division by zero"), ("1e999", "cannot evaluate"),
    ("(" * 300 + "1" + ")" * 300, "longer than"), ("", "empty"), ("1 +", "cannot evaluate"),
])
def test_calculator_refuses_huge_or_broken_input_quickly(expr, why):
    with pytest.raises(ToolError, match=why):
        calculate(expr)


def test_lookup_answers_from_the_kb_and_errors_otherwise(kb):
    base = KnowledgeBase(kb)
    c = next(c for c in kb["countries"] if c["code"] in kb["heldout"]["countries"])
    got = base.lookup(c["name"].upper(), "population")        # names match case-insensitively
    assert got == {"entity": c["name"], "relation": "population", "value": c["population"], "unit": "people"}
    assert base.lookup(c["name"], "area")["value"] == c["area_km2"]
    city = kb["cities"][0]
    assert base.lookup(city["name"], "country")["value"] == base.by_code[city["country"]]["name"]
    fake = kb["fake_entities"][0]["name"]
    with pytest.raises(ToolError, match="no country or city named"):
        base.lookup(fake, "capital")
    with pytest.raises(ToolError, match="is a city"):
        base.lookup(city["name"], "capital")


def test_lookup_reads_a_near_miss_as_the_one_close_name(kb):
    base = KnowledgeBase(kb)
    want = base.lookup("Isle of Man", "area")
    assert base.lookup("Ile of Man", "area") == want           # a letter off: that entry answers
    assert base.lookup("isle of  mann", "area") == want
    with pytest.raises(ToolError, match="did you mean Nigeria or Niger"):
        base.lookup("Nigera", "capital")                       # two as close: asks, answers nothing
    with pytest.raises(ToolError, match="no country or city named 'Irak'"):
        base.lookup("Irak", "capital")                         # short names must match exactly
    for fake in kb["fake_entities"]:                           # no invented name reads as a real one
        with pytest.raises(ToolError, match="no country or city named"):
            base.lookup(fake["name"], "capital")


def test_run_tool_returns_errors_as_results(kb):
    ok = run_tool("lookup", '{"entity": "France", "relation": "capital"}', kb=kb)
    assert ok.ok and json.loads(ok.content)["value"] == "Paris"
    for name, args, why in [("lookup", {"entity": "France"}, "missing argument"),
                            ("lookup", {"entity": "France", "relation": "mood"}, "relation must be one of"),
                            ("calculator", "{not json", "not valid JSON"),
                            ("calculator", {"expression": 7}, "must be a string"),
                            ("rm", {}, "no tool named")]:
        r = run_tool(name, args, kb=kb)
        assert not r.ok and why in json.loads(r.content)["error"]
    assert not run_tool("calculator", {"expression": "1+1"}, allowed=["lookup"]).ok
    with pytest.raises(ValueError, match="unknown tool"):
        parse_tool_names("lookup,shell")


def test_python_tool_runs_in_the_sandbox():
    r = run_tool("python", {"code": "print(sum(range(10)))"})
    assert r.ok and r.content.strip() == "45"
    bad = run_tool("python", {"code": "import os; os.system('true')"})
    assert not bad.ok and "error" in json.loads(bad.content)


# ---------------------------------------------------------------------------- the data

def test_records_are_deterministic_by_seed(kb, sft, evals):
    assert _dump(tools_sft_records(kb, seed=0, n=120)) == _dump(sft)
    assert _dump(tools_eval_records(kb, seed=0, per_case=10)) == _dump(evals)
    assert _dump(tools_sft_records(kb, seed=1, n=120)) != _dump(sft)


def test_every_case_is_present_with_its_shape(sft, evals):
    assert {r["meta"]["case"] for r in sft} == set(CASES) | {"chat"}     # chat: train only
    assert {r["meta"]["case"] for r in evals} == set(CASES)
    for r in sft:
        case, msgs = r["meta"]["case"], r["messages"]
        calls = [c for m in msgs for c in m.get("tool_calls", [])]
        assert [c["function"]["name"] for c in calls] == [e["name"] for e in r["meta"]["expected_calls"]]
        if case != "chat":
            assert bool(calls) == (case != "no_tool")
        assert msgs[-1]["role"] == "assistant" and msgs[-1]["content"]
        assert r["tools"] and all(t in TOOL_SPECS.values() for t in r["tools"])


def test_system_note_rows_answer_from_the_note_without_a_call(sft):
    notes = [r for r in sft if r["meta"].get("reason") == "system_fact"]
    assert len(notes) >= round(120 * SYSTEM_FACT_SHARE)       # the extra rows, plus no_tool's own
    for r in notes:
        system, reply = r["messages"][0], r["messages"][-1]
        answer = r["meta"]["answer"]
        for value in answer if isinstance(answer, list) else [answer]:   # the note gives the answer
            assert str(value) in system["content"] and str(value) in reply["content"]
        assert system["role"] == "system"
        assert r["meta"]["case"] == "no_tool" and not any(m.get("tool_calls") for m in r["messages"])


def test_chat_rows_look_the_fact_up_and_keep_the_chat_reply(kb, sft):
    """The chat case: a fact-bearing chat record gets a lookup of its own subject and
    relation just before its final reply, which is the chat category's reply unchanged
    (the system rule's format, the premise correction, the admission); harmful and benign
    requests call nothing."""
    chat = [r for r in sft if r["meta"]["case"] == "chat"]
    noted = 0
    assert len(chat) >= 40 and {"system", "harmful", "pushback_admit"} <= {r["meta"]["chat_kind"] for r in chat}
    for r in chat:
        msgs, meta = r["messages"], r["meta"]
        calls = [m for m in msgs if m.get("tool_calls")]
        if meta["chat_kind"] in ("harmful", "benign_edgy"):
            assert not calls
            continue
        if not calls:      # the system message gives the fact, so nothing is looked up
            assert msgs[0]["role"] == "system" and meta["chat_kind"] in ("system", "conflict")
            from gptlab.data.world_tools import SYSTEM_FACT
            assert any(t.split("{note}")[0] in msgs[0]["content"] for t in SYSTEM_FACT["t"])
            noted += 1
            continue
        assert len(calls) == 1 and msgs[-3] is calls[0] and msgs[-2]["role"] == "tool"
        args = json.loads(calls[0]["tool_calls"][0]["function"]["arguments"])
        assert args["relation"] == {"city_country": "country", "city_population": "population"}.get(
            meta["relation"], meta["relation"])
        user_text = " ".join(m["content"] for m in msgs if m["role"] == "user")
        assert args["entity"] in user_text
        found = "error" not in json.loads(msgs[-2]["content"])
        assert found == (meta["chat_kind"] != "unknown_entity")
        if meta["chat_kind"] == "system" and meta["constraints"][0]["type"] == "json":
            assert isinstance(json.loads(msgs[-1]["content"]), dict)   # still the rule's format
    assert noted > 0


def test_tool_results_are_what_the_real_tools_return(kb, sft):
    for r in sft:
        msgs = r["messages"]
        for i, m in enumerate(msgs):
            for call in m.get("tool_calls", []):
                result = next(t for t in msgs[i + 1:] if t.get("tool_call_id") == call["id"])
                fn = call["function"]
                assert result["content"] == run_tool(fn["name"], fn["arguments"], kb=kb).content


def test_answers_use_the_tool_result(sft):
    for r in sft:
        case, final = r["meta"]["case"], r["messages"][-1]["content"]
        result = next((json.loads(m["content"]) for m in r["messages"] if m["role"] == "tool"), None)
        if case == "lookup" and isinstance(result["value"], (int, str)):
            assert str(result["value"]) in final
        elif case == "calculator" and r["meta"]["relation"] == "arithmetic":
            assert result["result"] in final
        elif case == "tool_error":
            assert "error" in result
            assert "couldn't find" in final.lower() or "don't know" in final.lower()


def test_splits_are_disjoint_by_entity_and_template(kb, sft, evals):
    mentions_heldout = heldout_matcher(kb)
    for r in sft:
        texts = [m.get("content") or "" for m in r["messages"]]
        texts += [c["function"]["arguments"] for m in r["messages"] for c in m.get("tool_calls", [])]
        assert not any(mentions_heldout(t) for t in texts), r
        assert all(re.search(r"\.t\d+$", tid) for tid in r["meta"]["template"].split("+")), r["meta"]
    held_templates = heldout_template_ids() | set(kb["heldout"]["templates"])
    for r in evals:
        assert r["meta"]["split"] == "heldout"
        ids = r["meta"]["template"].split("+")
        assert all(re.search(r"\.h\d+$", tid) for tid in ids), ids
        assert {t for t in ids if t.startswith("tools.")} <= held_templates
        if r["meta"]["case"] == "lookup":
            assert mentions_heldout(r["messages"][-1]["content"])
    train_prompts = {json.dumps(to_prompt(r)["messages"]) for r in sft}
    assert not train_prompts & {json.dumps(r["messages"]) for r in evals}


def test_generate_tools_writes_both_files(kb, tmp_path):
    counts = generate_tools(tmp_path, seed=0, scale="tiny", kb=kb)
    sft = (tmp_path / "tools" / "sft.jsonl").read_text().splitlines()
    assert len(sft) == counts["sft"] >= 50
    assert len((tmp_path / "tools" / "eval.jsonl").read_text().splitlines()) == counts["eval"]
    with pytest.raises(ValueError, match="unknown scale"):
        generate_tools(tmp_path, scale="huge", kb=kb)


# ---------------------------------------------------------------------------- rendering

def test_each_conversation_renders_with_the_call_trained_and_the_result_not(tiny_tokenizer, sft):
    tok = Tokenizer.load(tiny_tokenizer)
    for r in sft:
        ids, mask = render_chat(tok, r["messages"], tools=r["tools"])
        trained = tok.decode([i for i, m in zip(ids, mask) if m])
        untrained = tok.decode([i for i, m in zip(ids, mask) if not m])
        first_tool = r["tools"][0]["function"]["name"]
        assert "<tools>" in untrained and f'"name": "{first_tool}"' in untrained  # definitions: context
        assert r["messages"][-1]["content"] in trained
        for m in r["messages"]:
            if m["role"] == "tool":
                assert m["content"] in untrained and m["content"] not in trained
                assert "<tool_response>" in untrained and "<tool_response>" not in trained
            for call in m.get("tool_calls", []):
                args = json.loads(call["function"]["arguments"])
                body = json.dumps({"name": call["function"]["name"], "arguments": args}, ensure_ascii=False)
                assert f"<tool_call>\n{body}\n</tool_call>" in trained
        if r["meta"]["case"] == "no_tool":
            assert "<tool_call>" not in trained
