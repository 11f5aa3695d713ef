"""miniworld's `code` category: small Python tasks with hidden tests, judged by running them.

`generate_code(out_dir, seed=0, scale="small")` writes

    code/tasks.jsonl  {"id", "family", "easy", "split", "entry_point", "spec", "solution",
                       "tests": [[call, expected repr], ...]}   every task, hidden tests included
    code/sft.jsonl    {"messages", "meta"} conversations of four kinds:
                        write     -- "write a function that ..." -> code
                        fix       -- a buggy function and "a test fails" -> fixed code
                        explain   -- code + the failing test output -> what is wrong + fix
                        followup  -- write -> (buggy code) -> the failing test output -> fix
                                     (meta.masked_turns = [1]: the buggy turn is not trained)
    code/eval.jsonl   {"messages", "meta": {"task_id", "easy", "kind", ...}} held-out requests:
                      "write" in each of the three wordings and "fix" (the buggy version)
    code/prompts.jsonl the same requests for the train tasks (RL: `gptlab rl --reward code`)

Tasks come from classic exercises (FizzBuzz, palindromes, run-length encoding, ...) and from
the knowledge base (capitals, population density, largest country, ...). The held-out split
is by family: eval families never appear in SFT. `judge_code(task, response)` extracts the
code from a reply and runs the hidden tests in `gptlab.sandbox` (never in this process);
`pass_at_k` is the unbiased estimator of Chen et al. (2021). Expected values come from
running the gold solutions (gptlab's own code) in this process at generation time.

Not in sft/ (the from-scratch track's SFT reads that folder whole); the assistant track mixes
code/sft.jsonl in.
"""
from __future__ import annotations

import ast
import json
import math
import random
import re
from dataclasses import dataclass
from pathlib import Path

from gptlab.fileio import write_jsonl, read_package_toml
from gptlab.sandbox import run_python


@dataclass
class Family:
    name: str
    entry: str
    easy: bool
    spec: str            # "a function `f(x)` that ..."
    solution: str
    bug: str             # a buggy version
    bug_note: str        # what is wrong with it
    calls: list[str]     # test calls; the gold solution gives the expected values


def _classic() -> list[Family]:
    """The classic exercises, written as data (world_code.toml) so their code reads as code."""
    rows = read_package_toml(__package__, "world_code.toml")["family"]
    return [Family(**row) for row in rows]


def _kb_families(rng: random.Random, kb: dict) -> list[Family]:
    """Tasks over a few knowledge-base countries, written into the prompt itself."""
    countries = rng.sample([c for c in kb["countries"] if c.get("capital") and c.get("area_km2")], 6)
    caps = {c["name"]: c["capital"] for c in countries[:4]}
    areas = {c["name"]: c["area_km2"] for c in countries[:5]}
    big = max(areas, key=areas.get)
    dens = countries[5]
    return [
        Family("kb_capital", "capital_of", True,
               f"`capital_of(country)` that returns the capital from CAPITALS = {caps!r}, or 'unknown' "
               "for a country not in it",
               f"CAPITALS = {caps!r}\n\ndef capital_of(country):\n    return CAPITALS.get(country, 'unknown')\n",
               f"CAPITALS = {caps!r}\n\ndef capital_of(country):\n    return CAPITALS[country]\n",
               "indexing the dict raises KeyError for a country that is not in it",
               [f"capital_of({n!r})" for n in list(caps)[:3]] + ["capital_of('Atlantis')"]),
        Family("kb_density", "density", True,
               "`density(population, area_km2)` that returns people per square kilometre, rounded to "
               f"one decimal (e.g. {dens['name']}: population {dens['population']}, area {dens['area_km2']} km²)",
               "def density(population, area_km2):\n    return round(population / area_km2, 1)\n",
               "def density(population, area_km2):\n    return round(area_km2 / population, 1)\n",
               "the division is upside down: area over population",
               [f"density({dens['population']}, {dens['area_km2']})", "density(1000, 10)", "density(0, 5)"]),
        Family("kb_largest", "largest", False,
               f"`largest(areas)` that returns the name with the largest area from a dict like {areas!r}",
               "def largest(areas):\n    return max(areas, key=areas.get)\n",
               "def largest(areas):\n    return max(areas)\n",
               "max over a dict compares the names (keys) alphabetically, not the areas",
               [f"largest({areas!r})", "largest({'A': 1, 'B': 3, 'C': 2})", "largest({'Zed': 1, 'Amy': 9})"]),
    ]


# ---------------------------------------------------------------------------- running tests

def _run_in_process(source: str, calls: list[str]) -> list[tuple[bool, str]]:
    """(returned, repr of the result or "Type: message") per call, for gptlab's own gold and
    buggy code only (model code goes through the sandbox: `judge_code`)."""
    ns: dict = {}
    exec(compile(source, "solution.py", "exec"), ns)   # noqa: S102 -- our own code
    out = []
    for call in calls:
        try:
            out.append((True, repr(eval(call, ns))))  # noqa: S307
        except Exception as e:  # the buggy versions raise on purpose
            out.append((False, f"{type(e).__name__}: {e}"))
    return out


_RUNNER = '''import ast, json, sys
from solution import *
TESTS = json.loads(open("tests.json").read())
failed = 0
for call, expected in TESTS:
    try:
        got = eval(call)
    except Exception as e:
        failed += 1
        print(f"FAIL {call} raised {type(e).__name__}: {e}")
        continue
    if got != ast.literal_eval(expected):
        failed += 1
        print(f"FAIL {call} returned {got!r}, expected {expected}")
print(f"{len(TESTS) - failed} passed, {failed} failed")
sys.exit(1 if failed else 0)
'''


def _failure_text(task: dict, buggy: str) -> str:
    """What _RUNNER prints for the buggy code. Computed here, not in the sandbox (it is
    gptlab's code); a call that would never finish is shown as the sandbox's timeout."""
    calls = [c for c, _ in task["tests"]]
    hangs = [task["family"] == "gcd" and not c.endswith(", 0)") for c in calls]  # its bug loops when b > 0
    results = iter(_run_in_process(buggy, [c for c, h in zip(calls, hangs) if not h]))
    lines, failed = [], 0
    for (call, expected), hang in zip(task["tests"], hangs):
        if hang:
            lines.append(f"(no more output: {call} never returned, and the run was stopped by the timeout)")
            return "\n".join(lines)
        returned, got = next(results)
        if not returned:
            failed += 1
            lines.append(f"FAIL {call} raised {got}")
        elif got != expected:
            failed += 1
            lines.append(f"FAIL {call} returned {got}, expected {expected}")
    lines.append(f"{len(calls) - failed} passed, {failed} failed")
    return "\n".join(lines)


# ---------------------------------------------------------------------------- conversations

_WRITE = ["Write a Python function {spec}.", "Could you implement {spec} in Python?",
          "I need {spec}. Please write it in Python."]
_FIX = ["This function should be {spec}, but a test fails. Can you fix it?\n\n```python\n{code}```",
        "My {entry} is wrong somewhere. It is meant to be {spec}.\n\n```python\n{code}```"]
_EXPLAIN = ["I ran the tests for this code and got the output below. What is wrong?\n\n```python\n{code}```\n\n```\n{out}\n```"]
_FOLLOW = ["I ran the tests and got:\n\n```\n{out}\n```", "It fails:\n\n```\n{out}\n```\nPlease fix it."]


def _code(src: str) -> str:
    return f"```python\n{src}```"


def _conversations(rng: random.Random, task: dict, fam: Family) -> list[dict]:
    spec = fam.spec
    out_text = _failure_text(task, fam.bug)
    meta = {"category": "code", "task_id": task["id"], "family": fam.name.split("#")[0], "easy": fam.easy}
    write = rng.choice(_WRITE).format(spec=spec)
    return [
        {"messages": [{"role": "user", "content": write},
                      {"role": "assistant", "content": _code(fam.solution)}], "meta": {**meta, "kind": "write"}},
        {"messages": [{"role": "user", "content": rng.choice(_FIX).format(spec=spec, code=fam.bug, entry=fam.entry)},
                      {"role": "assistant", "content": f"The problem: {fam.bug_note}. Fixed:\n\n{_code(fam.solution)}"}],
         "meta": {**meta, "kind": "fix"}},
        {"messages": [{"role": "user", "content": rng.choice(_EXPLAIN).format(code=fam.bug, out=out_text)},
                      {"role": "assistant", "content": f"The failing test shows it: {fam.bug_note}. A fixed version:\n\n{_code(fam.solution)}"}],
         "meta": {**meta, "kind": "explain"}},
        {"messages": [{"role": "user", "content": write},
                      {"role": "assistant", "content": _code(fam.bug)},
                      {"role": "user", "content": rng.choice(_FOLLOW).format(out=out_text)},
                      {"role": "assistant", "content": f"The failing test shows the bug: {fam.bug_note}. Fixed:\n\n{_code(fam.solution)}"}],
         "meta": {**meta, "kind": "followup", "masked_turns": [1]}},
    ]


def build_code(seed: int, kb: dict, eval_every: int = 4, kb_variants: int = 4) -> dict:
    """{"tasks", "sft", "eval"}: a task per classic family and `kb_variants` per knowledge-base
    family (other countries each time); every `eval_every`-th family (easy and hard alike) is
    held out for evals only, with all its variants."""
    rng = random.Random(seed)
    families = _classic()
    for v in range(kb_variants):
        for fam in _kb_families(rng, kb):
            fam.name = f"{fam.name}#{v}"
            families.append(fam)
    base = list(dict.fromkeys((f.name.split("#")[0], f.easy) for f in families))
    easy = [name for name, e in base if e]
    hard = [name for name, e in base if not e]
    held = {name for group in (easy, hard) for i, name in enumerate(group) if i % eval_every == eval_every - 1}
    tasks, sft, evals, prompts = [], [], [], []
    for fam in families:
        expected = [text for _, text in _run_in_process(fam.solution, fam.calls)]
        task = {"id": f"code.{fam.name}", "family": fam.name, "easy": fam.easy,
                "split": "heldout" if fam.name.split("#")[0] in held else "train", "entry_point": fam.entry,
                "spec": fam.spec, "solution": fam.solution,
                "tests": [[c, e] for c, e in zip(fam.calls, expected)]}
        tasks.append(task)
        if task["split"] == "heldout":
            # a knowledge-base family's variants differ only in the countries: one is enough
            if fam.name.partition("#")[2] in ("", "0"):
                evals += _requests(task, fam, "heldout")
        else:
            sft += _conversations(rng, task, fam)
            prompts += _requests(task, fam, "train")
    return {"tasks": tasks, "sft": sft, "eval": evals, "prompts": prompts}


def _requests(task: dict, fam: Family, split: str) -> list[dict]:
    """One-turn requests for a task, judged by its hidden tests: "write" in every wording and
    "fix" with the buggy version (held-out evals; for train tasks, the RL prompts)."""
    meta = {"category": "code", "task_id": task["id"], "easy": fam.easy, "split": split}
    asks = [("write", w.format(spec=fam.spec)) for w in _WRITE]
    asks.append(("fix", _FIX[0].format(spec=fam.spec, code=fam.bug, entry=fam.entry)))
    return [{"messages": [{"role": "user", "content": text}], "meta": {**meta, "kind": kind}}
            for kind, text in asks]


def generate_code(out_dir, seed: int = 0, kb: dict | None = None) -> dict:
    """Write code/{tasks,sft,eval,prompts}.jsonl under out_dir (a miniworld directory: its
    kb.json is read unless `kb` is given); returns the counts."""
    out = Path(out_dir)
    kb = kb if kb is not None else json.loads((out / "kb.json").read_text(encoding="utf-8"))
    data = build_code(seed, kb)
    for name, recs in data.items():
        write_jsonl(out / "code" / f"{name}.jsonl", recs)
    return {k: len(v) for k, v in data.items()}


# ---------------------------------------------------------------------------- judging

_BLOCK = re.compile(r"```(?:python|py)?[ \t]*\n(.*?)```", re.S)


def extract_code(response: str, entry_point: str | None = None) -> str:
    """The code of a reply: the last fenced block that defines `entry_point` (a usage example
    often follows the function in a block of its own), else the last block, else the whole
    reply."""
    blocks = _BLOCK.findall(response)
    if entry_point:
        blocks = [b for b in blocks if _defines(b, entry_point)] or blocks
    return blocks[-1] if blocks else response


def _defines(code: str, entry_point: str) -> bool:
    return bool(re.search(rf"^def {re.escape(entry_point)}\(", code, re.M))


def judge_code(task: dict, response: str, *, timeout: float = 5.0) -> dict:
    """Run the task's hidden tests against the code in `response` (`extract_code`), in the sandbox.
    Returns {"passed", "tests", "failed", "output", "style": {...}, "score"}: score is 1.0
    for passing code, less 0.1 per style problem (no `def entry_point`, lines over 100
    characters, print() in the solution), 0.0 when a test fails."""
    code = extract_code(response, task["entry_point"])
    result = run_python(_RUNNER, files={"solution.py": code, "tests.json": json.dumps(task["tests"])},
                        timeout=timeout)
    m = re.search(r"(\d+) passed, (\d+) failed", result.stdout)
    failed = int(m.group(2)) if m else len(task["tests"])
    style = {"defines_entry_point": _defines(code, task["entry_point"]),
             "long_lines": sum(len(line) > 100 for line in code.splitlines()),
             "prints": _calls_print(code)}
    passed = result.ok and failed == 0
    penalty = 0.1 * ((not style["defines_entry_point"]) + bool(style["long_lines"]) + style["prints"])
    return {"passed": passed, "tests": len(task["tests"]), "failed": failed,
            "timed_out": result.timed_out, "output": (result.stdout + result.stderr)[-2000:],
            "style": style, "score": max(0.0, 1.0 - penalty) if passed else 0.0}


def _calls_print(code: str) -> bool:
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return False
    return any(isinstance(n, ast.Call) and getattr(n.func, "id", None) == "print" for n in ast.walk(tree))


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c passed: 1 - C(n-c, k) / C(n, k)."""
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)
