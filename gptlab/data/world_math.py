"""miniworld computed facts: arithmetic on small integers and unit conversions.

`math_problem(rng, op)` draws operands for one of the operations in ARITH and returns
{"vals": placeholder values, "answer": number, "relation", "tolerance"}. ARITH holds the
questions (train "t" / held-out "h"), ARITH_ANSWERS the assistant's answers and MATH_CORPUS
the pretraining sentences, with the placeholders of `math_problem`'s "vals".
"""

from __future__ import annotations

from gptlab.fileio import read_package_toml

KM_TO_MI = 0.621371
MI_TO_KM = 1.609344
KG_TO_LB = 2.20462
LB_TO_KG = 0.453592
UNIT_TOLERANCE = 0.01

# The wordings are data (world_math.toml): ARITH, ARITH_ANSWERS and MATH_CORPUS.
_TABLES = read_package_toml(__package__, "world_math.toml")
ARITH: dict = _TABLES["ARITH"]
ARITH_ANSWERS: dict = _TABLES["ARITH_ANSWERS"]
MATH_CORPUS: dict = _TABLES["MATH_CORPUS"]


def fmt_num(x: float) -> str:
    """2 decimals at most, no trailing zeros: 74.56, 77, -1.1."""
    s = f"{x:.2f}".rstrip("0").rstrip(".")
    return "0" if s == "-0" else s


def _as_number(s: str):
    return float(s) if "." in s else int(s)


def _integer_problem(rng, op: str) -> dict:
    """Operands drawn until the result differs from both (a judge skips copied numbers)."""
    while True:
        p = _draw_integers(rng, op)
        if p["answer"] not in (p["vals"]["a"], p["vals"]["b"]):
            return p


def _draw_integers(rng, op: str) -> dict:
    if op == "add":
        a, b = rng.randint(0, 999), rng.randint(0, 999)
        r = a + b
    elif op == "sub":
        a, b = sorted((rng.randint(0, 999), rng.randint(0, 999)), reverse=True)
        r = a - b
    elif op == "mul":
        a, b = rng.randint(2, 30), rng.randint(2, 12)
        r = a * b
    else:  # div, always exact
        b, r = rng.randint(2, 12), rng.randint(2, 30)
        a = b * r
    return {"vals": {"a": a, "b": b, "r": r}, "answer": r, "relation": "arithmetic",
            "tolerance": 0.0}


def _unit_problem(rng, op: str) -> dict:
    lo, hi, f = {"km_mi": (1, 500, lambda x: x * KM_TO_MI), "mi_km": (1, 300, lambda x: x * MI_TO_KM),
                 "kg_lb": (1, 200, lambda x: x * KG_TO_LB), "lb_kg": (1, 400, lambda x: x * LB_TO_KG),
                 "c_f": (-30, 45, lambda x: x * 9 / 5 + 32),
                 "f_c": (-20, 110, lambda x: (x - 32) * 5 / 9)}[op]
    x = rng.randint(lo, hi)
    while fmt_num(f(x)) == str(x):          # -40 °C is -40 °F: not a useful question
        x = rng.randint(lo, hi)
    r = fmt_num(f(x))
    return {"vals": {"x": x, "r": r}, "answer": _as_number(r), "relation": "unit",
            "tolerance": UNIT_TOLERANCE}


def math_problem(rng, op: str) -> dict:
    if op in ("add", "sub", "mul", "div"):
        return _integer_problem(rng, op)
    return _unit_problem(rng, op)


def worked_addition(rng) -> str:
    """Column addition with carries, spelled out digit by digit."""
    a, b = rng.randint(10, 999), rng.randint(10, 999)
    da, db = str(a)[::-1], str(b)[::-1]
    names = ["ones", "tens", "hundreds", "thousands"]
    steps, carry, digits = [], 0, []
    for i in range(max(len(da), len(db))):
        x = int(da[i]) if i < len(da) else 0
        y = int(db[i]) if i < len(db) else 0
        s = x + y + carry
        extra = f" + {carry}" if carry else ""
        note = f", write {s % 10} and carry 1" if s >= 10 else ""
        steps.append(f"Add the {names[i]}: {x} + {y}{extra} = {s}{note}.")
        digits.append(str(s % 10))
        carry = s // 10
    if carry:
        steps.append("Write the final carry 1.")
    assert int("".join(reversed(digits)) if not carry else "1" + "".join(reversed(digits))) == a + b
    return f"Worked example: {a} + {b}. " + " ".join(steps) + f" So {a} + {b} = {a + b}."
