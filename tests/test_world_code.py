"""miniworld's code tasks: files, held-out split, hidden tests that the gold solutions pass
and the buggy ones fail in the sandbox, failure outputs in the SFT data that match a real
run, and pass@k."""
from __future__ import annotations

import json

import pytest

from gptlab.data.world import generate_world
from gptlab.data.world_code import extract_code, generate_code, judge_code, pass_at_k


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("code")
    generate_world(out, seed=0, scale="tiny")
    counts = generate_code(out, seed=0)
    read = {name: [json.loads(line) for line in (out / "code" / f"{name}.jsonl").read_text().splitlines()]
            for name in ("tasks", "sft", "eval", "prompts")}
    return out, counts, read


def test_files_split_and_determinism(world, tmp_path):
    out, counts, data = world
    assert counts == {k: len(v) for k, v in data.items()} and counts["eval"] >= 4
    held = {t["family"].split("#")[0] for t in data["tasks"] if t["split"] == "heldout"}
    assert {True, False} == {t["easy"] for t in data["tasks"] if t["split"] == "heldout"}
    assert not held & {c["meta"]["family"] for c in data["sft"]}
    assert {c["meta"]["kind"] for c in data["sft"]} == {"write", "fix", "explain", "followup"}
    (tmp_path / "kb.json").write_bytes((out / "kb.json").read_bytes())
    generate_code(tmp_path, seed=0)
    assert (tmp_path / "code" / "sft.jsonl").read_bytes() == (out / "code" / "sft.jsonl").read_bytes()


def test_gold_passes_and_bugs_fail_in_the_sandbox(world):
    _, _, data = world
    tasks = {t["id"]: t for t in data["tasks"]}
    for task in [t for t in data["tasks"] if t["split"] == "heldout"] + data["tasks"][:4]:
        r = judge_code(task, f"Here you go:\n```python\n{task['solution']}```")
        assert r["passed"] and r["score"] == 1.0, (task["id"], r["output"])
    fixes = [c for c in data["sft"] if c["meta"]["kind"] == "fix"][:5]
    for conv in fixes:
        r = judge_code(tasks[conv["meta"]["task_id"]], extract_code(conv["messages"][0]["content"]), timeout=2)
        assert not r["passed"] and r["score"] == 0.0


def test_followup_shows_the_real_test_output(world):
    _, _, data = world
    tasks = {t["id"]: t for t in data["tasks"]}
    conv = next(c for c in data["sft"] if c["meta"]["kind"] == "followup" and c["meta"]["family"] == "palindrome")
    assert conv["meta"]["masked_turns"] == [1]
    r = judge_code(tasks[conv["meta"]["task_id"]], conv["messages"][1]["content"])
    assert not r["passed"] and r["output"].strip() in conv["messages"][2]["content"]


def test_judge_limits_and_style(world):
    _, _, data = world
    task = next(t for t in data["tasks"] if t["family"] == "fizzbuzz")
    loop = judge_code(task, "```python\ndef fizzbuzz(n):\n    while True:\n        pass\n```", timeout=1.5)
    assert loop["timed_out"] and not loop["passed"]
    chatty = judge_code(task, task["solution"] + "\nprint(fizzbuzz(3))\n")
    assert chatty["passed"] and chatty["style"]["prints"] and chatty["score"] == pytest.approx(0.9)


def test_pass_at_k():
    assert pass_at_k(10, 0, 1) == 0.0 and pass_at_k(10, 10, 5) == 1.0
    assert pass_at_k(5, 1, 1) == pytest.approx(0.2) and pass_at_k(4, 2, 2) == pytest.approx(5 / 6)
