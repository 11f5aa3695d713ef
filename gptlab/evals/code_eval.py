"""The `code` eval suite and the execution reward.

Held-out programming tasks (WORLD/code/eval.jsonl, written by gptlab.data.world_code: tasks
of families never seen in SFT, each asked as "write a function ..." in every wording and
once as "fix this buggy one") are answered by the model; the last code block of each reply
runs against the task's hidden tests in the sandbox (gptlab.sandbox: a subprocess with
time, memory and file limits and no network, never this process). Metrics (docs/EVALS.md,
"Code"):

  code_pass@1            greedy replies whose code passes every hidden test (what a person
                         gets at temperature 0)
  code_pass@1_easy/_hard the same over the easy / hard tasks
  code_pass@1/write, /fix  the same by kind of request
  code_pass@1_sampled    the unbiased pass@1 of `n` samples per prompt at `temperature`
  code_pass@k            pass@k of the same samples (Chen et al. 2021's estimator)

`CodeTasks.score(records, responses)` is the same check as a reward: 1.0 for passing code
(less 0.1 per style problem), 0.0 otherwise; `gptlab rl --reward code` trains on it.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Sequence

from gptlab.data.world_code import judge_code, pass_at_k
from gptlab.evals.metrics import mean, rate
from gptlab.evals.tools_eval import SAMPLES    # the rows the runner pops (gptlab eval --samples)
from gptlab.fileio import read_jsonl

SAMPLES_N = 10          # samples per prompt for pass@k (0: greedy only)
PASS_K = 5
TEMPERATURE = 0.8       # sampling temperature of pass@k (the usual choice for k > 1)
MAX_NEW_TOKENS = 320    # the gold solutions are 30-120 tokens; room for a sentence around them

# name -> (description, unit, higher is better), registered in gptlab.evals.tasks.METRICS
CODE_METRICS = {
    "code_pass@1": ("held-out code tasks: the greedy reply's code passes every hidden test", "rate", True),
    "code_pass@1_easy": ("code_pass@1 on the easy tasks", "rate", True),
    "code_pass@1_hard": ("code_pass@1 on the hard tasks", "rate", True),
    "code_pass@1/write": ("code_pass@1 on 'write a function' requests", "rate", True),
    "code_pass@1/fix": ("code_pass@1 on 'fix this function' requests", "rate", True),
    "code_pass@1_sampled": ("unbiased pass@1 of N samples per prompt at temperature T", "rate", True),
    "code_pass@1_sampled_easy": ("code_pass@1_sampled on the easy tasks", "rate", True),
    "code_pass@k": ("pass@k of the same samples: at least one of k passes", "rate", True),
}


class CodeTasks:
    """The tasks of a world's code/tasks.jsonl, and the sandboxed check of replies to them.
    Replies are judged `workers` at a time (each is a subprocess, so threads suffice)."""

    name = "code"

    def __init__(self, tasks: dict[str, dict], workers: int = 2, timeout: float = 5.0):
        self.tasks, self.workers, self.timeout = tasks, workers, timeout

    @classmethod
    def from_dir(cls, world_dir: str | Path, **kw) -> "CodeTasks":
        path = Path(world_dir) / "code" / "tasks.jsonl"
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: regenerate the world with `gptlab data world` "
                                    "(code tasks were added to miniworld after it was made)")
        return cls({t["id"]: t for t in read_jsonl(path)}, **kw)

    def task_of(self, record: dict) -> dict:
        task_id = (record.get("meta") or {}).get("task_id")
        if task_id not in self.tasks:
            raise ValueError(f"record has no known meta.task_id ({task_id!r}): a code prompt must name "
                             "its task in code/tasks.jsonl")
        return self.tasks[task_id]

    def judge(self, records: Sequence[dict], responses: Sequence[str]) -> list[dict]:
        if len(records) != len(responses):
            raise ValueError(f"{len(records)} prompts but {len(responses)} responses")
        tasks = [self.task_of(r) for r in records]
        with ThreadPoolExecutor(max(1, self.workers)) as pool:
            return list(pool.map(lambda tr: judge_code(tr[0], tr[1], timeout=self.timeout),
                                 zip(tasks, responses)))

    def score(self, records: Sequence[dict], responses: Sequence[str]) -> list[float]:
        """The execution reward: judge_code's score per reply."""
        return [j["score"] for j in self.judge(records, responses)]


def load_code_records(world_dir: str | Path, limit: int | None = None) -> list[dict]:
    """WORLD/code/eval.jsonl; `limit` keeps the prompts of the first `limit` tasks."""
    path = Path(world_dir) / "code" / "eval.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: regenerate the world with `gptlab data world`")
    records = read_jsonl(path)
    if limit is not None:
        keep = list(dict.fromkeys(r["meta"]["task_id"] for r in records))[:limit]
        records = [r for r in records if r["meta"]["task_id"] in keep]
    return records


def _generate(responder: Callable, records: list[dict], max_new_tokens: int, temperature: float,
              seed: int | None, desc: str) -> list[str]:
    kw = {"desc": desc} if hasattr(responder, "engine") else {}   # ModelResponder's progress bar
    out = responder(records, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed, **kw)
    if len(out) != len(records):
        raise ValueError(f"responder returned {len(out)} replies for {len(records)} records")
    return out


def _row(record: dict, response: str, verdict: dict) -> dict:
    return {"messages": record["messages"], "meta": record["meta"], "response": response,
            "outcome": {k: verdict[k] for k in ("passed", "score", "failed", "tests", "timed_out", "output")}}


def suite_code(world_dir, responder: Callable, *, n: int = SAMPLES_N, k: int = PASS_K,
               temperature: float = TEMPERATURE, seed: int = 0, limit: int | None = None,
               cap: int | None = None, workers: int = 2) -> dict:
    """Greedy pass@1 (overall, easy/hard, by kind) and, with n > 0, sampled pass@1 and pass@k."""
    tasks = CodeTasks.from_dir(world_dir, workers=workers)
    records = load_code_records(world_dir, limit)
    max_new = min(cap, MAX_NEW_TOKENS) if cap else MAX_NEW_TOKENS
    greedy = _generate(responder, records, max_new, 0.0, None, "code greedy")
    verdicts = tasks.judge(records, greedy)
    ok = [v["passed"] for v in verdicts]
    easy = [bool(tasks.task_of(r)["easy"]) for r in records]
    kinds = [r["meta"].get("kind", "write") for r in records]
    metrics, counts = {"code_pass@1": rate(ok)}, {"code_pass@1": len(ok)}
    groups = {"code_pass@1_easy": easy, "code_pass@1_hard": [not e for e in easy],
              "code_pass@1/write": [kd == "write" for kd in kinds], "code_pass@1/fix": [kd == "fix" for kd in kinds]}
    for name, member in groups.items():
        flags = [o for o, m in zip(ok, member) if m]
        if flags:       # a --limit may leave a group empty
            metrics[name], counts[name] = rate(flags), len(flags)
    out = {"n": n, "k": k, "temperature": temperature, "max_new_tokens": max_new}
    if n > 0:
        rows = [r for r in records for _ in range(n)]
        samples = _generate(responder, rows, max_new, temperature, seed, f"code x{n}")
        passed = [v["passed"] for v in tasks.judge(rows, samples)]
        c = [sum(passed[i * n:(i + 1) * n]) for i in range(len(records))]
        metrics["code_pass@1_sampled"] = mean(ci / n for ci in c)
        counts["code_pass@1_sampled"] = len(rows)
        if any(easy):
            metrics["code_pass@1_sampled_easy"] = mean(ci / n for ci, e in zip(c, easy) if e)
            counts["code_pass@1_sampled_easy"] = n * sum(easy)
        if k <= n:
            metrics["code_pass@k"], counts["code_pass@k"] = mean(pass_at_k(n, ci, k) for ci in c), len(records)
        out["passed_of_n"] = {r["meta"]["task_id"] + "/" + r["meta"].get("kind", "write"): ci
                              for r, ci in zip(records, c)}
    fails = [i for i, o in enumerate(ok) if not o][:3]
    wins = [i for i, o in enumerate(ok) if o][:1]
    examples = {"code": [{"prompt": records[i]["messages"][-1]["content"], "response": greedy[i],
                          "passed": ok[i], "output": verdicts[i]["output"][-400:]} for i in fails + wins]}
    return {**out, "metrics": metrics, "counts": counts, "examples": examples,
            SAMPLES: [_row(r, g, v) for r, g, v in zip(records, greedy, verdicts)]}
