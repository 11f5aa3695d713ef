"""The code suite (gptlab.evals.code_eval) and the execution reward: a world carries the code
files, scripted replies (gold or buggy code) give the pass@1 / pass@k they must, the reply's
code block is found past a usage example, and `load_reward("code")` scores replies by their
hidden tests, in RL too."""
from __future__ import annotations

import json

import pytest

from gptlab.align.reward import load_reward
from gptlab.data.world import generate_world
from gptlab.evals import evaluate
from gptlab.evals.code_eval import CodeTasks, load_code_records


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("codeworld")
    generate_world(out, seed=0, scale="tiny")
    return out


def _read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_the_world_carries_code_tasks_requests_and_prompts(world):
    manifest = json.loads((world / "manifest.json").read_text())
    for name in ("tasks", "sft", "eval", "prompts"):
        assert f"code/{name}.jsonl" in manifest["files"]
    tasks = {t["id"]: t for t in _read(world / "code" / "tasks.jsonl")}
    evals, prompts = _read(world / "code" / "eval.jsonl"), _read(world / "code" / "prompts.jsonl")
    assert {tasks[r["meta"]["task_id"]]["split"] for r in evals} == {"heldout"}
    assert {tasks[r["meta"]["task_id"]]["split"] for r in prompts} == {"train"}
    # every held-out task is asked in the three "write" wordings and once as "fix"
    per_task = {}
    for r in evals:
        per_task.setdefault(r["meta"]["task_id"], []).append(r["meta"]["kind"])
    assert all(sorted(k) == ["fix", "write", "write", "write"] for k in per_task.values())


def _scripted(tasks: CodeTasks):
    """Greedy: gold code for easy tasks, the buggy version for hard ones. Sampled: gold for
    every other sample, plain prose for the rest."""
    def respond(records, *, max_new_tokens, temperature=0.0, seed=None):
        out = []
        for i, r in enumerate(records):
            task = tasks.task_of(r)
            if temperature == 0:
                code = task["solution"] if task["easy"] else "def nothing():\n    return None\n"
            else:
                code = task["solution"] if i % 2 == 0 else None
            # a usage example after the function: the judge must still run the function
            out.append("Sure." if code is None else
                       f"Here it is:\n```python\n{code}```\nUse it like this:\n```python\nprint(1)\n```")
        return out
    return respond


def test_code_suite_scores_scripted_replies(world, tmp_path):
    tasks = CodeTasks.from_dir(world)
    records = load_code_records(world)
    easy = [tasks.task_of(r)["easy"] for r in records]
    res = evaluate(None, world, ["code"], responder=_scripted(tasks), write=False, code_samples=6,
                   samples=tmp_path / "samples")
    m = res["metrics"]
    assert m["code_pass@1_easy"] == 1.0 and m["code_pass@1_hard"] == 0.0
    assert m["code_pass@1"] == pytest.approx(sum(easy) / len(easy))
    assert m["code_pass@1_sampled"] == pytest.approx(0.5)       # 3 of 6 samples pass everywhere
    assert m["code_pass@k"] == 1.0                                # k = 5 of 6 always holds a pass
    assert res["counts"]["code_pass@1"] == len(records) and "code_pass@1/fix" in m
    rows = _read(tmp_path / "samples" / "code.jsonl")
    assert len(rows) == len(records)
    assert [r["outcome"]["passed"] for r in rows] == easy


def test_the_execution_reward(world):
    reward = load_reward("code", world_dir=world)
    prompts = _read(world / "code" / "prompts.jsonl")
    rec = next(r for r in prompts if r["meta"]["task_id"].startswith("code.fizzbuzz"))
    task = reward.task_of(rec)
    body = task["solution"]
    chatty = body.replace("\n", "\n    print('checking')\n", 1) if body.startswith("def") else None
    replies = [f"```python\n{body}```", "```python\ndef fizzbuzz(n):\n    return []\n```",
               "I can't write code."]
    scores = reward.score([rec] * 3, replies)
    assert scores == [1.0, 0.0, 0.0]
    if chatty:   # passing code that prints: 0.1 off for style
        assert reward.score([rec], [f"```python\n{chatty}```"]) == [pytest.approx(0.9)]
    with pytest.raises(ValueError, match="task_id"):
        reward.score([{"messages": rec["messages"], "meta": {}}], ["x"])
    with pytest.raises(ValueError, match="world"):
        load_reward("code")


def test_grpo_runs_on_the_execution_reward(world, tiny_chat_ckpt, tmp_path):
    from gptlab.align.rl import RLConfig, run_rl
    from gptlab.train.metrics import read_metrics

    cfg = RLConfig(init=str(tiny_chat_ckpt), prompts=str(world / "code" / "prompts.jsonl"),
                   world=str(world), reward="code", algo="grpo", out=str(tmp_path / "rl"), steps=1,
                   batch_size=4, group_size=2, max_new_tokens=4, eval_per_category=0, save_every=0,
                   progress=False, device="cpu", seed=0)
    final = run_rl(cfg)
    rec = read_metrics(tmp_path / "rl" / "metrics.jsonl")[-1]
    # a random 4-token answer holds no passing function; unfinished answers lose the penalty too
    assert rec["reward"] == 0.0 and rec["reward_total"] < 0.0
    assert json.loads((final / "gptlab.json").read_text())["reward"] == "code"
