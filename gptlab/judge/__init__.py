"""The gold judge (a deterministic scripted rater over miniworld's kb.json), where evals,
alignment and the red team can all import it. `rater` holds the checks and their table."""
from gptlab.judge.rater import HARD_CHECKS, SOFT_WEIGHTS, Judge, Verdict, judge_file

__all__ = ["HARD_CHECKS", "SOFT_WEIGHTS", "Judge", "Verdict", "judge_file"]
