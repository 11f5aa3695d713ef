"""The `tools` eval suite: a model answers held-out questions with `lookup` and `calculator`
available, the real tools run in a loop (at most MAX_ROUNDS tool rounds), and the episodes
are scored.

Records come from WORLD/tools/eval.jsonl (`gptlab.data.world_tools.generate_tools`), or,
when a world has none, are built from its kb.json with the same seeded generator. Metrics
(docs/EVALS.md, "Tools"):

  tool_choice_accuracy     questions that need a tool (lookup, calculator, error cases): the
                           first reply calls exactly the expected tool
  tool_args_exact_match    same questions: the first reply's call has the expected arguments
                           (lookup: the same entity, up to case and spacing, and relation;
                           calculator: an expression with the same exact value)
  tool_answer_accuracy     lookup and calculator questions: the final reply states the right
                           value (gold judge, as for qa / arithmetic: numbers within 5% / exact)
  qa_numeric_with_tools    the numeric lookup questions (population, area, city population)
  qa_numeric_without_tools the same questions asked with no tools (the model's memory)
  tool_error_handled       lookups of invented entities: the final reply says it could not
                           find it and invents nothing
  tool_false_calls         questions that need no tool (greetings, general questions, facts
                           the system message gives): the first reply tries a call (lower is better)
  tool_malformed_calls     replies with a `<tool_call>` that does not parse, or a call that
                           names an unknown tool or breaks its parameter schema (a count; target 0)

`run_episodes(records, generate, kb)` is the loop; `score_episodes` the scoring (it only
reads texts, so tests can feed scripted replies); `suite_tools` what `gptlab eval --suite
tools` runs.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from gptlab.chat import render_prompt, stop_token_ids
from gptlab.data import phrases
from gptlab.data.world_facts import NUMERIC
from gptlab.engine import Engine
from gptlab.evals.metrics import rate
from gptlab.fileio import read_jsonl
from gptlab.tool_format import TOOL_CALL_CLOSE, TOOL_CALL_OPEN, parse_tool_calls
from gptlab.tools import TOOL_SPECS, KnowledgeBase, ToolError, calculate, check_arguments, run_tool

MAX_ROUNDS = 3                 # tool rounds per question; one more reply must then answer
MAX_NEW_TOKENS = 128
NEEDS_TOOL = ("lookup", "calculator", "tool_error")
ANSWERED = ("lookup", "calculator")

# name -> (description, unit, higher is better), registered in gptlab.evals.tasks.METRICS
TOOL_METRICS = {
    "tool_choice_accuracy": ("questions that need a tool: the first reply calls the expected one", "rate", True),
    "tool_args_exact_match": ("questions that need a tool: the first call's arguments are the expected ones",
                              "rate", True),
    "tool_answer_accuracy": ("lookup and calculator questions: the final reply states the right value",
                             "rate", True),
    "qa_numeric_with_tools": ("held-out numeric facts (population, area) with the lookup tool", "rate", True),
    "qa_numeric_without_tools": ("the same numeric questions with no tools", "rate", True),
    "tool_error_handled": ("lookups of invented entities: says it could not find it", "rate", True),
    "tool_false_calls": ("questions that need no tool: a call is tried (lower is better)", "rate", False),
    "tool_malformed_calls": ("replies whose tool call does not parse or breaks the schema (target 0)",
                             "count", False),
}

# a suite result's per-item rows: `gptlab.evals.runner.evaluate` takes them out of eval.json
# and writes them to SAMPLES_DIR/<suite>.jsonl when asked (`gptlab eval --samples DIR`)
SAMPLES = "_samples"

# generate(conversations, max_new_tokens) -> one reply text per (messages, tools) pair
Generate = Callable[..., list[str]]


@dataclass
class Episode:
    record: dict
    messages: list[dict]
    replies: list[str] = field(default_factory=list)     # every generated text, in order
    calls: list[list[dict]] = field(default_factory=list)  # the parsed calls of each reply
    malformed: int = 0
    final: str = ""


def malformed_calls(text: str, calls: list[dict], tool_names) -> int:
    """How many call attempts of a reply are malformed: a `<tool_call>` that did not parse
    (counted once per reply), or a parsed call to a tool that is not offered or whose
    arguments break its schema."""
    if not calls:
        return int(TOOL_CALL_OPEN in text or TOOL_CALL_CLOSE in text)
    bad = 0
    for c in calls:
        try:
            if c["name"] not in tool_names or c["name"] not in TOOL_SPECS:
                raise ToolError("unknown tool")
            check_arguments(c["name"], c["arguments"])
        except ToolError:
            bad += 1
    return bad


def _names(tools) -> set[str]:
    return {t["function"]["name"] for t in tools or []}


def run_episodes(records: list[dict], generate: Generate, kb, *, max_rounds: int = MAX_ROUNDS,
                 max_new_tokens: int = MAX_NEW_TOKENS) -> list[Episode]:
    """Every record as a tool-using conversation: generate (all open episodes in one batch),
    run the calls with the real tools, feed the results back, until a reply makes no call
    or max_rounds tool rounds are used (a reply that still calls then has no final answer)."""
    kb = kb if isinstance(kb, KnowledgeBase) else KnowledgeBase(kb)
    episodes = [Episode(r, list(r["messages"])) for r in records]
    active = list(range(len(episodes)))
    for rnd in range(max_rounds + 1):
        if not active:
            break
        texts = generate([(episodes[i].messages, episodes[i].record.get("tools")) for i in active],
                         max_new_tokens=max_new_tokens)
        if len(texts) != len(active):
            raise ValueError(f"generate returned {len(texts)} replies for {len(active)} conversations")
        still = []
        for i, text in zip(active, texts):
            ep = episodes[i]
            content, calls = parse_tool_calls(text)
            ep.replies.append(text)
            ep.calls.append(calls)
            ep.malformed += malformed_calls(text, calls, _names(ep.record.get("tools")))
            if not calls:
                ep.final = content
            elif rnd < max_rounds:
                _run_calls(ep, content, calls, rnd, kb)
                still.append(i)
        active = still
    return episodes


def _run_calls(ep: Episode, content: str, calls: list[dict], rnd: int, kb: KnowledgeBase) -> None:
    allowed = _names(ep.record.get("tools"))
    # ids are not rendered in the prompt; fixed ones keep the transcript reproducible
    oa = [{"id": f"call_{rnd}_{j}", "type": "function",
           "function": {"name": c["name"], "arguments": json.dumps(c["arguments"], ensure_ascii=False)}}
          for j, c in enumerate(calls)]
    ep.messages.append({"role": "assistant", "content": content, "tool_calls": oa})
    for c, call in zip(calls, oa):
        result = run_tool(c["name"], c["arguments"], kb=kb, allowed=allowed)
        ep.messages.append({"role": "tool", "tool_call_id": call["id"], "content": result.content})


# ----------------------------------------------------------------------------- scoring

def _same_args(name: str, got: dict, want: dict) -> bool:
    if name == "calculator":
        try:
            return calculate(str(got.get("expression"))) == calculate(want["expression"])
        except ToolError:
            return False
    norm = {k: " ".join(str(v).split()).casefold() for k, v in got.items()}
    return norm == {k: " ".join(str(v).split()).casefold() for k, v in want.items()}


def episode_flags(ep: Episode, judge) -> dict:
    """Per-episode outcomes (None where a metric does not apply)."""
    meta = ep.record["meta"]
    case = meta["case"]
    first = ep.calls[0] if ep.calls else []
    expected = meta.get("expected_calls") or []
    tried = bool(first) or (bool(ep.replies) and TOOL_CALL_OPEN in ep.replies[0])
    flags = {"case": case, "choice": None, "args": None, "answer": None, "error_handled": None,
             "false_call": None, "malformed": ep.malformed}
    if case in NEEDS_TOOL:
        want = {c["name"] for c in expected}
        flags["choice"] = bool(first) and {c["name"] for c in first} == want
        flags["args"] = flags["choice"] and any(
            c["name"] == e["name"] and _same_args(c["name"], c["arguments"], e["arguments"])
            for c in first for e in expected)
    else:
        flags["false_call"] = tried
    question = ep.record["messages"]
    if case in ANSWERED:
        flags["answer"] = not judge.score(question, ep.final, meta).hard_failed
    elif case == "tool_error":
        flags["error_handled"] = not judge.score(question, ep.final,
                                                 {**meta, "kind": "unknown_entity"}).hard_failed \
            and phrases.contains_any(ep.final, phrases.IDK_MARKERS)
    return flags


def score_episodes(episodes: list[Episode], judge) -> dict:
    """{"metrics", "counts", "by_case", "examples"} over the episodes."""
    flags = [episode_flags(ep, judge) for ep in episodes]
    metrics, counts = {}, {}

    def put(name, values):
        values = [v for v in values if v is not None]
        if values:
            metrics[name], counts[name] = rate(values), len(values)

    put("tool_choice_accuracy", [f["choice"] for f in flags])
    put("tool_args_exact_match", [f["args"] for f in flags])
    put("tool_answer_accuracy", [f["answer"] for f in flags])
    put("qa_numeric_with_tools", [f["answer"] for f, ep in zip(flags, episodes)
                                  if f["case"] == "lookup" and ep.record["meta"]["relation"] in NUMERIC])
    put("tool_error_handled", [f["error_handled"] for f in flags])
    put("tool_false_calls", [f["false_call"] for f in flags])
    metrics["tool_malformed_calls"] = sum(f["malformed"] for f in flags)
    counts["tool_malformed_calls"] = sum(len(ep.replies) for ep in episodes)
    by_case: dict[str, int] = {}
    for f in flags:
        by_case[f["case"]] = by_case.get(f["case"], 0) + 1
    return {"metrics": metrics, "counts": counts, "by_case": by_case,
            "examples": _examples(episodes, flags), SAMPLES: episode_samples(episodes, flags)}


def episode_samples(episodes: list[Episode], outcomes: list[dict]) -> list[dict]:
    """One row per episode for `gptlab eval --samples`: the prompt, every reply and call,
    the final answer, and its outcome (tool flags, or the judge's verdict)."""
    return [{"meta": ep.record["meta"], "messages": ep.record["messages"], "replies": ep.replies,
             "calls": ep.calls, "final": ep.final, "outcome": o} for ep, o in zip(episodes, outcomes)]


def _examples(episodes, flags, k: int = 2) -> dict:
    """Up to k failed episodes per case (any flag False, or a malformed call)."""
    out: dict[str, list] = {}
    for ep, f in zip(episodes, flags):
        bad = f["malformed"] or any(f[n] is False for n in ("choice", "args", "answer", "error_handled")) \
            or f["false_call"]
        if bad and len(out.setdefault(f"tools/{f['case']}", [])) < k:
            out[f"tools/{f['case']}"].append({"prompt": ep.record["messages"][-1]["content"],
                                              "replies": ep.replies, "final": ep.final})
    return {k: v for k, v in out.items() if v}


def qa_without_tools(episodes: list[Episode], generate: Generate, judge,
                     max_new_tokens: int = MAX_NEW_TOKENS) -> tuple[float | None, int]:
    """The numeric lookup questions asked with no tools at all: (rate, n)."""
    recs = [ep.record for ep in episodes
            if ep.record["meta"]["case"] == "lookup" and ep.record["meta"]["relation"] in NUMERIC]
    if not recs:
        return None, 0
    texts = generate([(r["messages"], None) for r in recs], max_new_tokens=max_new_tokens)
    ok = [not judge.score(r["messages"], t, r["meta"]).hard_failed for r, t in zip(recs, texts)]
    return rate(ok), len(ok)


# ----------------------------------------------------------------------------- the suite

def load_tool_records(world_dir, limit: int | None = None, seed: int = 0) -> list[dict]:
    """WORLD/tools/eval.jsonl, or the same records built from kb.json; at most `limit` per
    case (the lookup case 2 x limit, as generated)."""
    path = Path(world_dir) / "tools" / "eval.jsonl"
    if path.is_file():
        records = read_jsonl(path)
    else:
        from gptlab.data.world_tools import tools_eval_records
        kb = json.loads((Path(world_dir) / "kb.json").read_text(encoding="utf-8"))
        records = tools_eval_records(kb, seed)
    if limit is None:
        return records
    seen: dict[str, int] = {}
    out = []
    for r in records:
        case = r["meta"]["case"]
        if seen.get(case, 0) < (2 * limit if case == "lookup" else limit):
            seen[case] = seen.get(case, 0) + 1
            out.append(r)
    return out


class ModelToolGenerator:
    """`generate` over a model: each conversation rendered with its tools
    (gptlab.chat.render_prompt), greedy, batched with the Engine, stopping at end of turn.
    `constrain(tools)`: a fresh grammar constraint for a reply that may call those tools
    (gptlab.serve.tools.AutoToolConstraints: the server's), or None to decode freely."""

    def __init__(self, model, tokenizer, batch_size: int = 32, constrain=None):
        self.engine, self.tokenizer = Engine(model, tokenizer), tokenizer
        self.batch_size, self.stops = batch_size, stop_token_ids(tokenizer)
        self.max_len = int(model.config.max_position_embeddings)
        self.constrain = constrain

    def __call__(self, conversations, *, max_new_tokens: int = MAX_NEW_TOKENS) -> list[str]:
        keep = max(1, self.max_len - max_new_tokens)
        ids = [render_prompt(self.tokenizer, msgs, tools=tools)[-keep:] for msgs, tools in conversations]
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        out = [""] * len(ids)
        for b in range(0, len(order), self.batch_size):
            chunk = order[b:b + self.batch_size]
            constraints = None if self.constrain is None else \
                [self.constrain(conversations[i][1]) for i in chunk]
            gens = self.engine.generate([ids[i] for i in chunk], max_new_tokens=max_new_tokens,
                                        temperature=0.0, stop_token_ids=self.stops, constraints=constraints)
            for i, g in zip(chunk, gens):
                out[i] = self.tokenizer.decode(g, skip_special_tokens=True)
        return out


def suite_tools(world_dir, generate: Generate, judge, *, limit: int | None = None,
                cap: int | None = None, without_tools: bool = True) -> dict:
    """Run the tools eval; the result is a suite entry of eval.json."""
    records = load_tool_records(world_dir, limit)
    if not records:
        raise FileNotFoundError(f"no tools eval records for {world_dir}")
    n_new = min(MAX_NEW_TOKENS, cap) if cap else MAX_NEW_TOKENS
    episodes = run_episodes(records, generate, judge.kb, max_new_tokens=n_new)
    res = score_episodes(episodes, judge)
    if without_tools:
        r, n = qa_without_tools(episodes, generate, judge, n_new)
        if n:
            res["metrics"]["qa_numeric_without_tools"], res["counts"]["qa_numeric_without_tools"] = r, n
    res.update(max_rounds=MAX_ROUNDS, max_new_tokens=n_new, records=len(records))
    return res


WITH_TOOLS = "with_tools/"     # prefix of the chat_tools suite's metrics (tasks.suite_chat_tools)
