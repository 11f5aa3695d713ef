"""miniworld's `tools` category: conversations that use the built-in `lookup` and `calculator`.

Each record is `{"messages", "tools", "meta"}`: OpenAI-shaped messages (assistant turns with
`tool_calls`, `{"role": "tool", "tool_call_id", "content"}` results), the tool definitions
the conversation was held with (gptlab.tools.TOOL_SPECS) and what the eval needs. Cases
(`meta.case`):

    lookup      a fact about a country or city -> lookup {"entity", "relation"} -> the
                result -> an answer that states it
    calculator  arithmetic or a unit conversion ("83 kg to lb") -> calculator {"expression"}
                -> the answer
    no_tool     a greeting, a general question, or a fact the system message already gives:
                answered directly, no call
    tool_error  a fact about an invented entity -> lookup -> an error -> "I couldn't find ..."
    chat        (train only) a record of the chat categories (system rules, conflicts, false
                premises, pushback, invented entities, QA, harmful and benign look-alikes)
                held with the tools offered: a lookup of its fact before the final reply,
                which stays the chat record's own (formatted by the system rule, correcting
                the premise, holding or admitting); harmful and benign ones call nothing, nor
                do system-message ones whose system message also gives the fact

Every tool result is produced by running the real tool (`gptlab.tools.run_tool`), so the
training data says exactly what the tools say at run time. Splits follow the rest of
miniworld: `train` draws train entities and "t" templates, `heldout` held-out entities
(countries, cities, invented names) and "h" templates; train records that mention a
held-out name anywhere (tool arguments and results included) are dropped.

`tools_sft_records(kb, seed, n)` gives the SFT conversations (for the SFT data builder);
`tools_eval_records(kb, seed, per_case)` the held-out prompts (`messages` up to the user
turn, `tools`, `reference`, `meta.expected_calls`); `generate_tools(world_dir)` writes
both to WORLD/tools/{sft,eval}.jsonl. Same seed -> the same records, byte for byte.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

from gptlab.data import world_requests as R
from gptlab.data import world_templates as T
from gptlab.data.world_chat import ChatMaker
from gptlab.data.world_facts import NUMERIC, TOLERANCE
from gptlab.data.world_kb import heldout_matcher
from gptlab.data.world_math import ARITH, ARITH_ANSWERS, UNIT_TOLERANCE, fmt_num, math_problem
from gptlab.fileio import write_jsonl
from gptlab.tools import TOOL_SPECS, KnowledgeBase, calculate, country_names, run_tool

CASES = ["lookup", "calculator", "no_tool", "tool_error"]
SFT_SHARES = {"lookup": 0.45, "calculator": 0.2, "no_tool": 0.25, "tool_error": 0.1}
# numeric facts are the ones a model cannot remember and the lookup exists for
LOOKUP_WEIGHTS = {"population": 5, "area": 4, "city_population": 3, "capital": 1,
                  "continent": 1, "currency": 1, "languages": 1, "neighbours": 1,
                  "city_country": 1}
TOOL_RELATION = {"city_country": "country", "city_population": "population"}
SCALES = {"tiny": {"sft": 60, "eval_per_case": 8}, "small": {"sft": 1500, "eval_per_case": 50},
          "full": {"sft": 6000, "eval_per_case": 200}}
# unit questions call the calculator's own conversion (gptlab.tools.UNITS) rather than a factor
UNIT_EXPRESSIONS = {"km_mi": "{x} km to mi", "mi_km": "{x} mi to km", "kg_lb": "{x} kg to lb",
                    "lb_kg": "{x} lb to kg", "c_f": "{x} C to F", "f_c": "{x} F to C"}

# templates of this category ("t" train, "h" held out), as in world_templates.py
GREETINGS = {
    "t": [("Hi!", "Hello! How can I help you today?"),
          ("Hello there.", "Hi! What would you like to know?"),
          ("Thanks, that's all I needed.", "You're welcome! Feel free to ask if anything else comes up."),
          ("Good morning!", "Good morning! How can I help?"),
          ("Who are you?", "I'm an AI assistant. I can answer questions, look up facts about "
                           "countries and cities, and do calculations."),
          ("Thank you!", "You're welcome!")],
    "h": [("Hey, how's it going?", "Hi! I'm doing well, thanks. What can I do for you?"),
          ("Cheers, that was helpful.", "Glad it helped! Let me know if you need anything else.")],
}
# Train-only variety for the calculator: everyday word problems (the "t" arithmetic templates
# are all literal sums, and a held-out "If I have 5694 apples and get 80558 more" was called
# as "5694 - 80558").
WORD_PROBLEMS = {
    "add": ["A library had {a} books and received {b} new ones. How many books does it have now?",
            "There were {a} visitors in the morning and {b} in the afternoon. How many came altogether?",
            "I saved {a} dollars last year and {b} dollars this year. How much have I saved in total?"],
    "sub": ["A tank held {a} litres and {b} litres were used. How much is left?",
            "I had {a} points and lost {b} of them. How many points do I have now?",
            "A train carried {a} passengers and {b} got off. How many are still on board?"],
    "mul": ["A box holds {b} pencils. How many pencils are in {a} boxes?",
            "Each ticket costs {b} dollars. What do {a} tickets cost?",
            "A machine makes {b} parts an hour. How many does it make in {a} hours?"],
    "div": ["A {a}-page report is split evenly into {b} chapters. How many pages per chapter?",
            "{a} litres of juice fill {b} bottles equally. How much goes in each bottle?",
            "A prize of {a} dollars is shared equally by {b} winners. How much does each get?"],
    "km_mi": ["The trail is {x} km long. What is that in miles?",
              "I drove {x} kilometres today; how many miles was that?"],
    "mi_km": ["The marathon route is {x} miles. How many kilometres is it?",
              "Our town is {x} miles away. What is that in km?"],
    "kg_lb": ["The dog weighs {x} kg. What is its weight in pounds?",
              "I lifted {x} kilograms at the gym; how many pounds is that?"],
    "lb_kg": ["The baby weighed {x} lb at birth. How many kilograms is that?",
              "A bag of rice is {x} pounds. What does it weigh in kg?"],
    "c_f": ["It is {x} °C outside. What is that in Fahrenheit?",
            "The water is at {x} degrees Celsius; what is that in °F?"],
    "f_c": ["The thermostat reads {x} °F. How much is that in Celsius?",
            "A cake bakes at {x} degrees Fahrenheit; what is that in °C?"],
}
WORD_P = 0.5                   # train calculator questions asked as a word problem
SYSTEM_FACT = {"t": ["Use these notes when you answer: {note}", "Context for this chat: {note}",
                     "Background information: {note}"],
               "h": ["Facts you may rely on in this conversation: {note}"]}
ERROR_REPLIES = {
    "t": ["I couldn't find {x} in the knowledge base, so I can't tell you {what}.",
          "I looked up {x}, but the knowledge base has no entry for it. I don't know {what}.",
          "I couldn't find any country or city called {x}, so I don't know {what}."],
    "h": ["The lookup found nothing for {x}; I couldn't find {what}, and it may not exist."],
}
WHAT = {"capital": "its capital", "continent": "which continent it is in",
        "population": "its population", "area": "its area", "currency": "its currency",
        "languages": "its languages", "neighbours": "its neighbours",
        "city_country": "which country it is in", "city_population": "its population"}
PLAIN_SYSTEM_P = 0.3
# the "chat" case: chat categories with the tools offered (weights), and its share of the
# tools SFT on top of CASES. Without it, a model that was offered tools looked facts up and
# then dropped the system rule, answered harmful requests and agreed with false premises:
# no tools row had taught it that the rest of a conversation still applies.
CHAT_KINDS = {"system": 3, "conflict": 3, "false_premise": 2, "pushback_hold": 1.5,
              "pushback_admit": 1.5, "unknown_entity": 1, "qa": 1, "harmful": 1.5, "benign_edgy": 1.5}
CHAT_SHARE = 0.6
# share of the chat case's system-message records that also carry their fact in the system
# message and so call nothing: without them every system-message row looked its fact up, and
# the model looked up facts the system message gave (false calls 6% -> 34% through the server)
SYSTEM_NOTE_P = 0.35
# more system-note questions (no_tool rows whose fact the system message gives), as a share
# of the tools SFT on top of CASES and the chat case: with only a third of no_tool's quarter,
# two seeds made a false call on 28% and 40% of the no-tool questions; with these, 0, 0 and
# 10% on three runs (docs/RESULTS.md, "System-note rows in miniworld's tools set")
SYSTEM_FACT_SHARE = 0.4


def _call_id(rng) -> str:
    return f"call_{rng.getrandbits(40):010x}"


def _tool_call(rng, name: str, arguments: dict) -> dict:
    return {"id": _call_id(rng), "type": "function",
            "function": {"name": name, "arguments": json.dumps(arguments, ensure_ascii=False)}}


class ToolChatMaker:
    """Builds one `tools` record of any case for the train or held-out split."""

    def __init__(self, rng, kb: dict):
        self.rng = rng
        self.chat = ChatMaker(rng, kb)       # facts, template picking, plain system messages
        self.f = self.chat.f
        self.kb = KnowledgeBase(kb)

    def tools(self, needed: str | None) -> list[dict]:
        """Usually both tools in either order; sometimes only the one the turn needs."""
        names = ["lookup", "calculator"]
        self.rng.shuffle(names)
        if needed and self.rng.random() < 0.2:
            names = [needed]
        return [TOOL_SPECS[n] for n in names]

    def exchange(self, name: str, arguments: dict) -> tuple[list[dict], object]:
        """The assistant's call and the tool's real answer; returns (messages, parsed result)."""
        call = _tool_call(self.rng, name, arguments)
        result = run_tool(name, arguments, kb=self.kb)
        return ([{"role": "assistant", "content": "", "tool_calls": [call]},
                 {"role": "tool", "tool_call_id": call["id"], "content": result.content}],
                json.loads(result.content))

    def _record(self, case, split, head, user, calls, reply, tids, needed, **meta) -> dict:
        sys_msgs, sys_ids = self.chat.plain_system(split) if not head else (head, [])
        msgs = sys_msgs + [{"role": "user", "content": user}] + calls + \
            [{"role": "assistant", "content": reply}]
        expected = [{"name": c["function"]["name"], "arguments": json.loads(c["function"]["arguments"])}
                    for m in calls for c in m.get("tool_calls", [])]
        meta = {"kind": "tools", "case": case, "split": split, "template": "+".join(tids + sys_ids),
                "expected_calls": expected, "subject": None, "relation": None, "answer": None,
                **meta}
        return {"messages": msgs, "tools": self.tools(needed), "meta": meta}

    # -- the cases
    def lookup(self, split: str) -> dict:
        rels = sorted(LOOKUP_WEIGHTS)
        rel = self.rng.choices(rels, weights=[LOOKUP_WEIGHTS[r] for r in rels])[0]
        fact = self.f.fact(split, rel)
        tid, question = self.chat.question(fact, split)
        args = {"entity": fact["entity"], "relation": TOOL_RELATION.get(rel, rel)}
        calls, result = self.exchange("lookup", args)
        assert result.get("value") is not None, result     # the kb answers every kb fact
        return self._record("lookup", split, [], question, calls, self.f.sentence(fact), [tid],
                            "lookup", subject=fact["subject"], relation=rel, answer=fact["answer"],
                            tolerance=TOLERANCE if rel in NUMERIC else None)

    def calculator(self, split: str) -> dict:
        op = self.rng.choice(sorted(ARITH))
        tid, template = self.chat.pick(f"math.{op}", split)
        if split == "train" and self.rng.random() < WORD_P:
            i = self.rng.randrange(len(WORD_PROBLEMS[op]))
            tid, template = f"tools.word.{op}.t{i}", WORD_PROBLEMS[op][i]
        if op in UNIT_EXPRESSIONS:
            vals = dict(math_problem(self.rng, op)["vals"])
            expr = UNIT_EXPRESSIONS[op].format(**vals)
        else:
            vals = self._operands(op)
            expr = f"{vals['a']} {dict(add='+', sub='-', mul='*', div='/')[op]} {vals['b']}"
        calls, result = self.exchange("calculator", {"expression": expr})
        exact = calculate(expr)
        assert result["result"] == exact
        vals["r"] = exact if op not in UNIT_EXPRESSIONS else fmt_num(float(exact))
        answer = float(vals["r"]) if "." in vals["r"] else int(vals["r"])
        return self._record("calculator", split, [], template.format(**vals), calls,
                            ARITH_ANSWERS[op].format(**vals), [tid], "calculator",
                            relation="unit" if op in UNIT_EXPRESSIONS else "arithmetic",
                            answer=answer, tolerance=UNIT_TOLERANCE if op in UNIT_EXPRESSIONS else 0.0)

    def _operands(self, op: str) -> dict:
        """Numbers too long to do reliably in one's head (that is what the tool is for)."""
        r = self.rng
        if op == "add":
            return {"a": r.randint(1000, 99999), "b": r.randint(1000, 99999)}
        if op == "sub":
            a, b = sorted((r.randint(1000, 99999), r.randint(100, 99999)), reverse=True)
            return {"a": a, "b": b}
        if op == "mul":
            return {"a": r.randint(13, 9999), "b": r.randint(13, 999)}
        b, q = r.randint(3, 99), r.randint(13, 9999)     # exact division
        return {"a": b * q, "b": b}

    def no_tool(self, split: str) -> dict:
        kind = self.rng.choice(["greeting", "general", "system_fact"])
        key = "t" if split == "train" else "h"
        if kind == "greeting":
            i = self.rng.randrange(len(GREETINGS[key]))
            user, answer = GREETINGS[key][i]
            return self._record("no_tool", split, [], user, [], answer, [f"tools.greet.{key}{i}"],
                                None, reason=kind)
        if kind == "general":
            i = self.rng.randrange(len(R.BENIGN[key]))
            user, answer = R.BENIGN[key][i]
            return self._record("no_tool", split, [], user, [], answer, [f"benign.{key}{i}"],
                                None, reason=kind)
        fact = self.f.fact(split, self.rng.choice(sorted(LOOKUP_WEIGHTS)))
        i = self.rng.randrange(len(SYSTEM_FACT[key]))
        system = SYSTEM_FACT[key][i].format(note=self.f.sentence(fact))
        qid, question = self.chat.question(fact, split)
        return self._record("no_tool", split, [{"role": "system", "content": system}], question,
                            [], self.f.sentence(fact), [f"tools.sysfact.{key}{i}", qid], None,
                            reason=kind, subject=fact["subject"], relation=fact["relation"],
                            answer=fact["answer"],
                            tolerance=TOLERANCE if fact["relation"] in NUMERIC else None)

    def tool_error(self, split: str) -> dict:
        fake = self.rng.choice(self.f.fakes[split])
        rels = ["city_country", "city_population"] if fake["kind"] == "city" else \
            ["capital", "continent", "population", "area", "currency"]
        rel = self.rng.choice(rels)
        tid, template = self.chat.pick(f"qa.{rel}", split)
        calls, result = self.exchange("lookup", {"entity": fake["name"],
                                                 "relation": TOOL_RELATION.get(rel, rel)})
        assert "error" in result, result
        key = "t" if split == "train" else "h"
        i = self.rng.randrange(len(ERROR_REPLIES[key]))
        answer = ERROR_REPLIES[key][i].format(x=fake["name"], what=WHAT[rel])
        return self._record("tool_error", split, [], template.format(c=fake["name"], city=fake["name"]),
                            calls, answer, [tid, f"tools.error.{key}{i}"], "lookup",
                            subject=fake["name"], relation=rel)


    def chat_turn(self, split: str) -> dict:
        """A chat-category record with the tools offered (see CHAT_KINDS): a lookup of the
        record's fact is inserted before its final reply, which is kept as it is."""
        kinds = sorted(CHAT_KINDS)
        kind = self.rng.choices(kinds, weights=[CHAT_KINDS[k] for k in kinds])[0]
        rec = getattr(self.chat, kind)(split)
        meta, msgs = rec["meta"], list(rec["messages"])
        calls, needed = [], None
        rel = meta.get("relation")
        if meta.get("subject") and rel in LOOKUP_WEIGHTS:
            entity = self._named(meta["subject"], [m["content"] for m in msgs if m["role"] == "user"])
            calls, _ = self.exchange("lookup", {"entity": entity, "relation": TOOL_RELATION.get(rel, rel)})
            needed = "lookup"
        country = self.kb.by_code.get(meta.get("subject") or "")
        if calls and country and msgs[0]["role"] == "system" and self.rng.random() < SYSTEM_NOTE_P:
            note = self.f.sentence(self.f.country_fact(country, rel))
            i = self.rng.randrange(len(SYSTEM_FACT["t"]))
            msgs[0] = {**msgs[0], "content": msgs[0]["content"] + "\n" + SYSTEM_FACT["t"][i].format(note=note)}
            calls, needed = [], None
        msgs = msgs[:-1] + calls + msgs[-1:]
        expected = [{"name": c["function"]["name"], "arguments": json.loads(c["function"]["arguments"])}
                    for m in calls for c in m.get("tool_calls", [])]
        meta = {**meta, "kind": "tools", "case": "chat", "chat_kind": kind, "expected_calls": expected}
        return {"messages": msgs, "tools": self.tools(needed), "meta": meta}

    def _named(self, subject: str, texts: list[str]) -> str:
        """The name a conversation uses for a kb subject (a country code or a city name)."""
        country = self.kb.by_code.get(subject)
        if country is None:
            return subject
        return next((n for n in country_names(country) if any(n in t for t in texts)), country["name"])


def _texts(rec: dict) -> list[str]:
    """Every text of a record a model reads: contents and call arguments."""
    out = [m.get("content") or "" for m in rec["messages"]]
    out += [c["function"]["arguments"] for m in rec["messages"] for c in m.get("tool_calls", [])]
    return out


def _collect(make, n: int, ok, unique_prompts: bool) -> list[dict]:
    """n records from `make` that pass `ok`; eval sets keep distinct prompts (and may come
    out shorter when the held-out pool is small)."""
    out, seen, tries = [], set(), 0
    while len(out) < n and tries < 40 * n + 200:
        tries += 1
        rec = make()
        if not ok(rec):
            continue
        if unique_prompts:
            key = json.dumps(to_prompt(rec)["messages"], sort_keys=True, ensure_ascii=False)
            if key in seen:
                continue
            seen.add(key)
        out.append(rec)
    return out


def to_prompt(rec: dict) -> dict:
    """A conversation -> the eval prompt: messages up to the (last) user turn, the tools,
    the final answer as `reference`, and meta."""
    last_user = max(i for i, m in enumerate(rec["messages"]) if m["role"] == "user")
    return {"messages": rec["messages"][:last_user + 1], "tools": rec["tools"],
            "reference": rec["messages"][-1]["content"], "meta": rec["meta"]}


def _case_counts(n: int) -> dict[str, int]:
    return {c: max(1, round(n * SFT_SHARES[c])) for c in CASES}


def tools_sft_records(kb: dict, seed: int = 0, n: int = 1500) -> list[dict]:
    """About n train conversations of the `tools` category (train entities and templates
    only; none mentions a held-out name), case by case in CASES order."""
    rng = random.Random(f"miniworld-tools-sft-{seed}")
    maker = ToolChatMaker(rng, kb)
    mentions_heldout = heldout_matcher(kb)

    def clean(rec):
        return not any(mentions_heldout(t) for t in _texts(rec))

    out = []
    for case, k in _case_counts(n).items():
        out += _collect(lambda: getattr(maker, case)("train"), k, clean, unique_prompts=False)
    # after the other cases, so adding it left their records byte-identical
    out += _collect(lambda: maker.chat_turn("train"), round(n * CHAT_SHARE), clean, unique_prompts=False)
    out += _collect(lambda: maker.no_tool("train"), round(n * SYSTEM_FACT_SHARE),
                    lambda r: r["meta"]["reason"] == "system_fact" and clean(r), unique_prompts=False)
    return out


def tools_eval_records(kb: dict, seed: int = 0, per_case: int = 50) -> list[dict]:
    """Held-out prompts, up to `per_case` of each case, distinct prompts only; the lookup
    case is twice as large (it carries the QA-with-tools numbers)."""
    rng = random.Random(f"miniworld-tools-eval-{seed}")
    maker = ToolChatMaker(rng, kb)
    out = []
    for case in CASES:
        k = 2 * per_case if case == "lookup" else per_case
        recs = _collect(lambda: getattr(maker, case)("heldout"), k, lambda r: True, unique_prompts=True)
        out += [to_prompt(r) for r in recs]
    return out


def generate_tools(world_dir, seed: int = 0, scale: str = "small", kb: dict | None = None) -> dict:
    """Write WORLD/tools/sft.jsonl and WORLD/tools/eval.jsonl (kb.json read from the world
    unless given); returns the record counts."""
    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}; choose one of {sorted(SCALES)}")
    out = Path(world_dir)
    kb = kb if kb is not None else json.loads((out / "kb.json").read_text(encoding="utf-8"))
    data = {"sft": tools_sft_records(kb, seed, SCALES[scale]["sft"]),
            "eval": tools_eval_records(kb, seed, SCALES[scale]["eval_per_case"])}
    for name, recs in data.items():
        write_jsonl(out / "tools" / f"{name}.jsonl", recs)
    return {k: len(v) for k, v in data.items()}


def heldout_template_ids() -> set[str]:
    """Ids of this category's own held-out templates (the "h" pools above)."""
    return ({f"tools.greet.h{i}" for i in range(len(GREETINGS["h"]))}
            | {f"tools.sysfact.h{i}" for i in range(len(SYSTEM_FACT["h"]))}
            | {f"tools.error.h{i}" for i in range(len(ERROR_REPLIES["h"]))})
