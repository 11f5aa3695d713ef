"""The `tools` eval suite (gptlab/evals/tools_eval.py) and tools in `gptlab chat`.

Scoring is checked with scripted "models" (functions from conversations to reply texts:
a perfect one, one that never calls, one that calls the wrong tool, one that writes broken
calls); the mechanics (rendering with tools, batched generation, the runner) with a real
random-weight model.
"""
from __future__ import annotations

import json
import random

import pytest

from gptlab.chat.terminal import DECLINED, ChatSession, _CallHider
from gptlab.fileio import read_jsonl
from gptlab.judge import Judge
from gptlab.data.world_kb import build_kb
from gptlab.data.world_tools import tools_eval_records
from gptlab.evals import evaluate, format_table, resolve_suites
from gptlab.evals.tools_eval import (MAX_ROUNDS, TOOL_METRICS, load_tool_records, malformed_calls,
                                     run_episodes, score_episodes)
from gptlab.tool_format import format_tool_calls

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def kb():
    return build_kb(random.Random(0), 0, "tiny")


@pytest.fixture(scope="module")
def records(kb):
    return tools_eval_records(kb, seed=0, per_case=6)


@pytest.fixture(scope="module")
def world(kb, tmp_path_factory):
    """A world directory with only kb.json: the tools records are built from it."""
    out = tmp_path_factory.mktemp("tools_world")
    (out / "kb.json").write_text(json.dumps(kb))
    return out


def scripted(records, on_user):
    """generate() that answers each conversation from its record: `on_user(record)` for the
    first reply, the reference after a tool result."""
    by_prompt = {json.dumps(r["messages"]): r for r in records}

    def generate(conversations, max_new_tokens):
        out = []
        for messages, _tools in conversations:
            n = max(i for i, m in enumerate(messages) if m["role"] == "user") + 1
            rec = by_prompt[json.dumps(messages[:n])]
            out.append(on_user(rec) if messages[-1]["role"] == "user" else rec["reference"])
        return out
    return generate


def perfect(rec):
    calls = rec["meta"]["expected_calls"]
    return format_tool_calls(calls) if calls else rec["reference"]


def score(records, kb, generate):
    return score_episodes(run_episodes(records, generate, kb), Judge(kb))["metrics"]


def test_a_perfect_model_scores_perfectly(records, kb):
    m = score(records, kb, scripted(records, perfect))
    for name in ("tool_choice_accuracy", "tool_args_exact_match", "tool_answer_accuracy",
                 "qa_numeric_with_tools", "tool_error_handled"):
        assert m[name] == 1.0, name
    assert m["tool_false_calls"] == 0.0 and m["tool_malformed_calls"] == 0


def test_a_model_that_never_calls_scores_zero(records, kb):
    m = score(records, kb, scripted(records, lambda rec: "Hello."))
    for name in ("tool_choice_accuracy", "tool_args_exact_match", "tool_answer_accuracy",
                 "qa_numeric_with_tools", "tool_error_handled"):
        assert m[name] == 0.0, name
    assert m["tool_false_calls"] == 0.0


def test_wrong_tools_wrong_arguments_and_false_calls_count(records, kb):
    def wrong_tool(rec):
        calls = rec["meta"]["expected_calls"]
        if calls and calls[0]["name"] == "lookup":
            return format_tool_calls([{"name": "calculator", "arguments": {"expression": "1 + 1"}}])
        return format_tool_calls([{"name": "lookup", "arguments": {"entity": "France", "relation": "area"}}])
    m = score(records, kb, scripted(records, wrong_tool))
    assert m["tool_choice_accuracy"] == 0.0 and m["tool_args_exact_match"] == 0.0
    assert m["tool_false_calls"] == 1.0

    def right_tool_wrong_args(rec):
        calls = [dict(c, arguments={k: "9" + v for k, v in c["arguments"].items()})
                 for c in rec["meta"]["expected_calls"]]
        return format_tool_calls(calls) if calls else rec["reference"]
    m = score(records, kb, scripted(records, right_tool_wrong_args))
    assert m["tool_choice_accuracy"] == 1.0 and m["tool_args_exact_match"] == 0.0


UNIT_WORDS = {"km": "kilometres", "mi": "miles", "kg": "kilograms", "lb": "pounds", "C": "°C",
              "F": "degrees Fahrenheit"}


def test_equivalent_arguments_match(records, kb):
    def respaced(rec):
        calls = rec["meta"]["expected_calls"]
        if not calls:
            return rec["reference"]
        args = calls[0]["arguments"]
        if " to " in args.get("expression", ""):   # a unit conversion, other unit names
            x, src, _, dst = args["expression"].split()
            args = {"expression": f"({x}) {UNIT_WORDS[src]} in {UNIT_WORDS[dst]}"}
        elif "expression" in args:   # same value, other spelling
            args = {"expression": "(" + args["expression"].replace(" ", "") + ")"}
        else:
            args = {"entity": args["entity"].upper(), "relation": args["relation"]}
        return format_tool_calls([{"name": calls[0]["name"], "arguments": args}])
    assert score(records, kb, scripted(records, respaced))["tool_args_exact_match"] == 1.0


def test_malformed_calls_are_counted(records, kb):
    m = score(records, kb, scripted(records, lambda rec: '<tool_call>\n{"name": "lookup", oops\n</tool_call>'))
    assert m["tool_malformed_calls"] == len(records)       # one broken reply each, then no call
    assert m["tool_choice_accuracy"] == 0.0 and m["tool_false_calls"] == 1.0
    names = {"lookup", "calculator"}
    assert malformed_calls("", [{"name": "shell", "arguments": {}}], names) == 1
    assert malformed_calls("", [{"name": "lookup", "arguments": {"entity": "X", "relation": "mood"}}], names) == 1
    assert malformed_calls("", [{"name": "lookup", "arguments": {"entity": "X", "relation": "area"}}], names) == 0


def test_tool_rounds_stop_at_the_limit(records, kb):
    def generate(conversations, max_new_tokens):   # calls the calculator forever
        return [format_tool_calls([{"name": "calculator", "arguments": {"expression": "2 * 3"}}])
                for _ in conversations]
    eps = run_episodes(records[:3], generate, kb)
    assert all(len(ep.replies) == MAX_ROUNDS + 1 and ep.final == "" for ep in eps)
    tool_turns = [m for m in eps[0].messages if m["role"] == "tool"]
    assert len(tool_turns) == MAX_ROUNDS and json.loads(tool_turns[0]["content"]) == {"result": "6"}


def test_the_runner_runs_the_suite_only_when_asked(records, kb, world, tmp_path):
    assert "tools" not in resolve_suites(None, "chat") and "tools" not in resolve_suites(["all"], "chat")

    class Responder:
        tools_generate = staticmethod(scripted(load_tool_records(world, limit=6), perfect))

        def __call__(self, recs, **kw):
            return ["" for _ in recs]
    res = evaluate(None, world, ["tools"], limit=6, responder=Responder(), write=False, progress=False,
                   samples=tmp_path / "samples")
    m = res["suites"]["tools"]["metrics"]
    rows = read_jsonl(tmp_path / "samples" / "tools.jsonl")     # --samples: one row per episode
    assert len(rows) == res["suites"]["tools"]["records"] and "_samples" not in res["suites"]["tools"]
    needs = [r for r in rows if r["meta"]["case"] in ("lookup", "calculator")]
    assert needs and all(r["outcome"]["choice"] and r["outcome"]["args"] and r["calls"][0] for r in needs)
    assert all(r["outcome"]["false_call"] is False for r in rows if r["meta"]["case"] == "no_tool")
    assert m["tool_choice_accuracy"] == 1.0 and m["qa_numeric_with_tools"] == 1.0
    assert "qa_numeric_without_tools" in m          # the same questions, no tools: "" is wrong
    assert m["qa_numeric_without_tools"] == 0.0
    assert "| tool_malformed_calls (lower is better) | 0 |" in format_table(res)
    skipped = evaluate(None, world, ["tools"], responder=lambda recs, **kw: [], write=False, progress=False)
    assert "tools" in skipped["skipped"]


@pytest.fixture(scope="module")
def chat_ckpt(tiny_tokenizer, tmp_path_factory):
    """A random-weight depth-1 chat model with a context that holds the tool definitions."""
    import torch

    from gptlab.checkpoint import save_checkpoint
    from gptlab.model import GPT, preset
    from gptlab.tokenizer import Tokenizer

    tok = Tokenizer.load(tiny_tokenizer)
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("tools_chat") / "sft"
    save_checkpoint(out, GPT(preset(1, tok.vocab_size, 2048)), tok, meta={"stage": "sft"})
    return out


def test_a_real_model_runs_through_the_loop(chat_ckpt, world):
    res = evaluate(chat_ckpt, world, ["tools"], limit=1, max_new_tokens=8, write=False,
                   progress=False, batch_size=4)
    suite = res["suites"]["tools"]
    assert suite["records"] == 5                     # 2 lookups + one of each other case
    assert set(suite["metrics"]) <= set(TOOL_METRICS)
    assert {"tool_choice_accuracy", "tool_false_calls", "tool_malformed_calls"} <= set(suite["metrics"])


# ---------------------------------------------------------------------------- gptlab chat

class ScriptedEngine:
    """Stands in for the Engine in a ChatSession (a random model never writes a tool call;
    the eval tests above script their models the same way): replies come from a list,
    streamed in small pieces, so markup is split across deltas as a real stream splits it.
    The prompt it gets is still rendered for real, tools and tool turns included."""

    def __init__(self, replies):
        self.replies, self.last_finish_reasons = list(replies), ["stop"]
        self.constraints = []       # what each reply was asked to follow (None: nothing)

    def stream(self, prompt, **kw):
        text = self.replies.pop(0)
        self.constraints.append(kw.get("constraint"))
        for i in range(0, len(text), 3):
            yield text[i:i + 3]


@pytest.fixture(scope="module")
def chat_model(chat_ckpt):
    from gptlab.checkpoint import load_checkpoint
    return load_checkpoint(chat_ckpt)


def _session(chat_model, replies, **kw):
    s = ChatSession(chat_model.model, chat_model.tokenizer, tools=["calculator"], **kw)
    s.engine = ScriptedEngine(replies)
    return s


def test_chat_shows_each_call_and_runs_it_only_when_approved(chat_model):
    call = "Let me compute.\n" + format_tool_calls([{"name": "calculator", "arguments": {"expression": "3 * 4"}}])
    shown, notes, asked = [], [], []
    s = _session(chat_model, [call, "3 * 4 = 12."])
    reply = s.respond("What is 3 * 4?", shown.append, notes.append, lambda q: asked.append(q) or "y")
    assert reply == "3 * 4 = 12." and len(asked) == 1
    assert "".join(shown) == "Let me compute.3 * 4 = 12." and "<tool" not in "".join(shown)
    assert notes == ['[tool call] calculator {"expression": "3 * 4"}', '[tool result] {"result": "12"}']
    assert [m["role"] for m in s.messages] == ["user", "assistant", "tool", "assistant"]
    assert s.messages[1]["tool_calls"][0]["function"]["name"] == "calculator"

    notes = []
    s = _session(chat_model, [call, "I could not run it."])
    s.respond("What is 3 * 4?", shown.append, notes.append, lambda q: "n")
    assert s.messages[2]["content"] == DECLINED and notes[-1] == "[tool call declined]"

    s = _session(chat_model, [call, "12."], auto_approve=True)      # --yes: nobody is asked
    s.respond("What is 3 * 4?", shown.append, notes.append, None)
    assert json.loads(s.messages[2]["content"]) == {"result": "12"}
    # each reply was decoded under the server's call grammar: the call fits it, a broken one not
    grammar = s.engine.constraints
    assert len(grammar) == 2 and all(g is not None for g in grammar) and grammar[0] is not grammar[1]
    assert grammar[0].matcher.accept_string(call)
    assert not s._call_grammar().matcher.accept_string('<tool_call>\n{"name": "calculator", "arguments": {"expr"')


def test_without_tools_the_chat_is_unchanged(chat_model):
    s = ChatSession(chat_model.model, chat_model.tokenizer)
    s.engine = ScriptedEngine(["<tool_call>\n{}\n</tool_call>"])
    out = []
    assert s.respond("hi", out.append, out.append) == "<tool_call>\n{}\n</tool_call>"
    assert [m["role"] for m in s.messages] == ["user", "assistant"] and s.tools is None
    assert s.engine.constraints == [None]


def test_call_markup_is_held_back_across_deltas():
    out = []
    hide = _CallHider(out.append)
    for piece in ["Sure <", "tool", "_ca", "ll>\n{}"]:
        hide(piece)
    hide.flush()
    assert "".join(out) == "Sure"
    out = []
    hide = _CallHider(out.append)
    for piece in ["a <", "b"]:
        hide(piece)
    hide.flush()
    assert "".join(out) == "a <b"


# ---------------------------------------------------------------------------- chat_tools

def test_chat_records_with_tools_are_judged_on_the_final_reply(tiny_world):
    """The chat suite's records with lookup and calculator offered: arithmetic answered
    through a calculator call (the final reply quotes the tool's result) passes, the same
    with a wrong final number fails, and tool use is counted per category; the metrics are
    the chat suite's names under with_tools/."""
    from gptlab.evals import tasks as T
    from gptlab.evals.tasks import suite_chat_tools
    from gptlab.evals.tools_eval import WITH_TOOLS

    answers = {r["messages"][-1]["content"]: r["meta"]["answer"]
               for r in T.load_records(tiny_world, "arithmetic")}
    assert answers, "the tiny world has no arithmetic records"

    def model(wrong: bool):
        def generate(conversations, max_new_tokens):
            out = []
            for messages, tools in conversations:
                assert {t["function"]["name"] for t in tools} == {"lookup", "calculator"}
                last = messages[-1]
                if last["role"] == "user" and last["content"] in answers:
                    expr = f"{answers[last['content']]} * 1"
                    out.append(format_tool_calls([{"name": "calculator", "arguments": {"expression": expr}}]))
                elif last["role"] == "tool":
                    value = float(json.loads(last["content"])["result"])
                    out.append(f"It is {value * 3 + 7 if wrong else value}.")
                else:
                    out.append("I don't know that one.")
            return out
        return generate

    judge = Judge.from_dir(tiny_world)
    good = suite_chat_tools(tiny_world, model(False), judge, ["arithmetic", "unknown_entity"])
    bad = suite_chat_tools(tiny_world, model(True), judge, ["arithmetic", "unknown_entity"])
    assert good["counts"][WITH_TOOLS + "arithmetic_accuracy"] == len(answers)
    assert good["metrics"][WITH_TOOLS + "arithmetic_accuracy"] == 1.0
    assert bad["metrics"][WITH_TOOLS + "arithmetic_accuracy"] == 0.0
    assert good["metrics"][WITH_TOOLS + "tool_use/arithmetic"] == 1.0
    assert good["metrics"][WITH_TOOLS + "tool_use/unknown_entity"] == 0.0
    assert good["metrics"][WITH_TOOLS + "tool_malformed_calls"] == 0
    assert all(k.startswith(WITH_TOOLS) for k in good["metrics"])


# ---------------------------------------------------------------------------- calls under the grammar

def test_the_engine_decodes_each_constrained_row_under_its_grammar(chat_ckpt, tiny_tokenizer):
    """Engine.generate(constraints=): a row with a json_object grammar gives JSON that parses
    (a random model's free text never does), a row without one is what it is unconstrained."""
    from gptlab.checkpoint import load_checkpoint
    from gptlab.engine import Engine
    from gptlab.serve.grammar import GrammarFactory
    from gptlab.serve.schemas import ResponseFormat
    from gptlab.tokenizer import Tokenizer

    tok = Tokenizer.load(tiny_tokenizer)
    model = load_checkpoint(chat_ckpt).model.eval()
    factory = GrammarFactory(tok, tok.vocab_size, [tok.eos_id], compile_workers=1)
    compiled = factory.compile(ResponseFormat.model_validate({"type": "json_object"}))
    prompts = [tok.encode("a b c"), tok.encode("hello"), tok.encode("x")]
    engine = Engine(model, tok)
    free = engine.generate(prompts, max_new_tokens=12, stop_token_ids=[tok.eos_id])
    held = engine.generate(prompts, max_new_tokens=12, stop_token_ids=[tok.eos_id],
                           constraints=[factory.constraint(compiled), None, factory.constraint(compiled)])
    assert held[1] == free[1]
    streamed = "".join(engine.stream(prompts[0], max_new_tokens=12, stop_token_ids=[tok.eos_id],
                                     constraint=factory.constraint(compiled)))
    assert streamed == tok.decode(held[0])
    for i in (0, 2):
        assert isinstance(json.loads(tok.decode(held[i])), dict) and len(held[i]) <= 12
    with pytest.raises(json.JSONDecodeError):
        json.loads(tok.decode(free[0]))
    with pytest.raises(ValueError, match="constraints"):
        engine.generate(prompts, max_new_tokens=2, constraints=[None])


def test_auto_tool_constraints_hold_a_started_call_to_its_schema(tiny_tokenizer):
    """The eval's grammar is the server's `auto` one: free text, but a started call must name a
    tool and fit its parameters (the demo's free decoding wrote relation "industry")."""
    from gptlab.serve.tools import AutoToolConstraints
    from gptlab.tokenizer import Tokenizer
    from gptlab.tools import TOOL_SPECS

    tok = Tokenizer.load(tiny_tokenizer)
    constraints = AutoToolConstraints(tok, tok.vocab_size, [tok.eos_id])
    tools = [TOOL_SPECS["lookup"], TOOL_SPECS["calculator"]]
    call = '<tool_call>\n{"name": "lookup", "arguments": {"entity": "Chad", "relation": "%s"}}\n</tool_call>'
    assert constraints(tools).matcher.accept_string("Let me check. " + call % "population")
    assert not constraints(tools).matcher.accept_string(call % "industry")
    assert not constraints(tools).matcher.accept_string('<tool_call>\n{"name": "search"')
    assert constraints(None) is None and len(constraints._compiled) == 1


def test_the_tools_eval_records_how_calls_were_decoded(chat_ckpt, world):
    res = evaluate(chat_ckpt, world, ["tools"], limit=1, max_new_tokens=4, write=False, progress=False,
                   tool_calls="free")
    assert res["settings"]["tool_calls"] == "free" and "--tool-calls free" in res["command"]
    with pytest.raises(ValueError, match="tool_calls"):
        evaluate(chat_ckpt, world, ["tools"], tool_calls="loose", write=False, progress=False)
