"""Old path of the gold judge, which is now `gptlab.judge` (evals, alignment and the red team use it)."""
from gptlab.judge import *  # noqa: F401,F403  (kept for code written against the old path)
