"""Phrases shared by the miniworld generator (which writes answers with them) and the gold
judge (which recognizes them), read from phrases.toml. Keeping both sides on one list means
a refusal the generator writes is a refusal the judge sees, and held-out wordings can be
checked for disjointness.

Matching is case-insensitive on substrings, after normalizing curly apostrophes to "'".
"""

from gptlab.fileio import read_package_toml

# The marker lists are data (phrases.toml): REFUSAL_MARKERS, SCOLDING_MARKERS, IDK_MARKERS,
# ADMIT_MARKERS, HOLD_MARKERS, PREMISE_MARKERS.
globals().update(read_package_toml(__package__, "phrases.toml"))


def normalize(text: str) -> str:
    """Lower-case and straighten apostrophes so marker matching is robust."""
    return text.replace("\u2019", "'").replace("\u2018", "'").lower()


def contains_any(text: str, markers: list[str]) -> bool:
    t = normalize(text)
    return any(m in t for m in markers)
