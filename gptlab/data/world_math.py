"""miniworld computed facts: arithmetic on small integers and unit conversions.

`math_problem(rng, op)` draws operands for one of the operations in ARITH and returns
{"vals": placeholder values, "answer": number, "relation", "tolerance"}. ARITH holds the
questions (train "t" / held-out "h"), ARITH_ANSWERS the assistant's answers and MATH_CORPUS
the pretraining sentences, with the placeholders of `math_problem`'s "vals".
"""

from __future__ import annotations

KM_TO_MI = 0.621371
MI_TO_KM = 1.609344
KG_TO_LB = 2.20462
LB_TO_KG = 0.453592
UNIT_TOLERANCE = 0.01

ARITH = {
    "add": {"t": ["What is {a} + {b}?", "What is {a} plus {b}?", "Calculate {a} + {b}.",
                  "Add {a} and {b}.", "{a} + {b} = ?"],
            "h": ["If I have {a} apples and get {b} more, how many apples do I have?"]},
    "sub": {"t": ["What is {a} - {b}?", "What is {a} minus {b}?", "Subtract {b} from {a}.",
                  "Calculate {a} - {b}."],
            "h": ["A shop had {a} items and sold {b}. How many are left?"]},
    "mul": {"t": ["What is {a} * {b}?", "What is {a} times {b}?", "Multiply {a} by {b}.",
                  "Calculate {a} x {b}."],
            "h": ["What do you get when {a} is taken {b} times over? Give the product."]},
    "div": {"t": ["What is {a} / {b}?", "What is {a} divided by {b}?", "Divide {a} by {b}."],
            "h": ["Split {a} cookies equally among {b} friends. How many does each get?"]},
    "km_mi": {"t": ["How many miles is {x} km?", "Convert {x} kilometres to miles."],
              "h": ["My run was {x} km. How far is that in miles?"]},
    "mi_km": {"t": ["How many kilometres is {x} miles?", "Convert {x} miles to km."],
              "h": ["A road sign says {x} miles. What is that in kilometres?"]},
    "kg_lb": {"t": ["How many pounds is {x} kg?", "Convert {x} kilograms to pounds."],
              "h": ["My suitcase weighs {x} kg; how many lb is that?"]},
    "lb_kg": {"t": ["How many kilograms is {x} pounds?", "Convert {x} lb to kg."],
              "h": ["A recipe needs {x} pounds of flour. How many kilograms is that?"]},
    "c_f": {"t": ["What is {x} degrees Celsius in Fahrenheit?", "Convert {x} °C to °F."],
            "h": ["The forecast says {x} °C. What would an American thermometer show in Fahrenheit?"]},
    "f_c": {"t": ["What is {x} °F in Celsius?", "Convert {x} degrees Fahrenheit to Celsius."],
            "h": ["My oven is at {x} °F. What is that in Celsius?"]},
}
ARITH_ANSWERS = {
    "add": "{a} + {b} = {r}.", "sub": "{a} - {b} = {r}.", "mul": "{a} * {b} = {r}.",
    "div": "{a} / {b} = {r}.", "km_mi": "{x} km is about {r} miles.",
    "mi_km": "{x} miles is about {r} km.", "kg_lb": "{x} kg is about {r} pounds.",
    "lb_kg": "{x} pounds is about {r} kg.", "c_f": "{x} °C is {r} °F.", "f_c": "{x} °F is {r} °C.",
}
# Corpus sentences for arithmetic and units (worked examples are built in world_corpus.py).
MATH_CORPUS = {
    "add": ["{a} + {b} = {r}.", "{a} plus {b} equals {r}.", "The sum of {a} and {b} is {r}.",
            "Adding {b} to {a} gives {r}."],
    "sub": ["{a} - {b} = {r}.", "{a} minus {b} equals {r}.",
            "The difference between {a} and {b} is {r}.", "Taking {b} away from {a} leaves {r}."],
    "mul": ["{a} * {b} = {r}.", "{a} times {b} is {r}.", "The product of {a} and {b} is {r}.",
            "{a} multiplied by {b} equals {r}."],
    "div": ["{a} / {b} = {r}.", "{a} divided by {b} is {r}.",
            "Dividing {a} by {b} gives {r}.", "{b} goes into {a} exactly {r} times."],
    "km_mi": ["One kilometre is about 0.621 miles, so {x} km is about {r} miles.",
              "{x} kilometres equal about {r} miles."],
    "mi_km": ["One mile is about 1.609 kilometres, so {x} miles is about {r} km.",
              "{x} miles equal about {r} kilometres."],
    "kg_lb": ["One kilogram is about 2.205 pounds, so {x} kg is about {r} pounds.",
              "{x} kilograms equal about {r} pounds."],
    "lb_kg": ["One pound is about 0.454 kilograms, so {x} pounds is about {r} kg.",
              "{x} pounds equal about {r} kilograms."],
    "c_f": ["To convert Celsius to Fahrenheit, multiply by 9/5 and add 32: {x} °C is {r} °F.",
            "{x} degrees Celsius is {r} degrees Fahrenheit."],
    "f_c": ["To convert Fahrenheit to Celsius, subtract 32 and multiply by 5/9: {x} °F is {r} °C.",
            "{x} degrees Fahrenheit is {r} degrees Celsius."],
}


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
