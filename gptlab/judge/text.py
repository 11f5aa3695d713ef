"""Text helpers of the gold judge: normalizing, counting words, reading numbers and JSON,
spotting negation and degenerate (looping) output. Pure functions over strings."""
from __future__ import annotations

import json
import math
import re
import unicodedata

_NEG_FILLER = (r"(?:the|a|an|in|on|at|of|to|from|located|situated|called|named|really|"
               r"actually|use|using|part|city|country|currency|capital|continent|its|it|is|"
               r"be|been)")
_NEG_BEFORE = re.compile(r"(?:\bnot|n't|\bnever|\bno longer|\brather than|\binstead of)"
                         rf"(?:\s+{_NEG_FILLER}){{0,3}}\s+$|(?:不是|并非|而非|不在)\s*$")
_NEG_AFTER = re.compile(r"^\s*(?:is not|isn't|was not|wasn't|are not|aren't|"
                        r"不是|并不是|并非)")
_NUM_RE = re.compile(
    r"(?<![A-Za-z0-9.])(-)?(\d{1,3}(?:,\d{3})+|\d{1,3}(?:[ \u00a0\u202f\u2009]\d{3})+(?!\d)|\d+)"
    r"(\.\d+)?"
    r"(?:\s*(million|billion|trillion|thousand|万亿|百万|千万|万|亿|千)(?![a-z]))?")
_MULTIPLIER = {"thousand": 1e3, "million": 1e6, "billion": 1e9, "trillion": 1e12, "千": 1e3,
               "万": 1e4, "百万": 1e6, "千万": 1e7, "亿": 1e8, "万亿": 1e12}
_FENCE = re.compile(r"```(?:json)?\s*(.*?)\s*```", re.S | re.I)


def is_cjk(c: str) -> bool:
    o = ord(c)
    return 0x4E00 <= o <= 0x9FFF or 0x3400 <= o <= 0x4DBF or 0xF900 <= o <= 0xFAFF \
        or 0x20000 <= o <= 0x2A6DF


def norm(text: str) -> str:
    """Lower-case, strip accents, straighten apostrophes; keeps the length (one char -> one)."""
    out = []
    for c in text:
        if c in "\u2019\u2018\u02bc":
            c = "'"
        elif ord(c) > 127 and not is_cjk(c):
            c = unicodedata.normalize("NFKD", c)[:1] or c
        out.append(c.lower()[:1] or c)
    return "".join(out)


def count_words(text: str) -> int:
    n = 0
    for tok in text.split():
        cjk = sum(is_cjk(c) for c in tok)
        rest = "".join(c for c in tok if not is_cjk(c))
        n += math.ceil(cjk / 2) + (1 if any(c.isalnum() for c in rest) else 0)
    return n


def tokens(text: str) -> list[str]:
    """Words for repetition checks: Latin words and single CJK characters."""
    return re.findall(r"[a-z0-9']+|[\u3400-\u9fff]", norm(text))


def negated(text: str, start: int, end: int) -> bool:
    return bool(_NEG_BEFORE.search(text[max(0, start - 30):start])
                or _NEG_AFTER.match(text[end:end + 20]))


def numbers(text: str) -> list[tuple[int, int, float, bool]]:
    """(start, end, value, plain_int) for every number in normalized text."""
    out = []
    for m in _NUM_RE.finditer(text):
        digits = re.sub(r"[ ,\u00a0\u202f\u2009]", "", m.group(2))
        value = float(digits + (m.group(3) or ""))
        if m.group(4):
            value *= _MULTIPLIER[m.group(4)]
        if m.group(1):
            value = -value
        plain = digits == m.group(2) and not m.group(3) and not m.group(4)
        out.append((m.start(), m.end(), value, plain))
    return out


def close(a: float, b: float, tol: float) -> bool:
    return abs(a - b) <= max(tol * abs(b), 1e-9)


def parse_json(text: str):
    """The response as a JSON object, or None. Only a fence around the whole response is ok."""
    s = text.strip()
    m = _FENCE.fullmatch(s)
    if m:
        s = m.group(1)
    try:
        obj = json.loads(s)
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None


def json_strings(obj) -> list[str]:
    if isinstance(obj, str):
        return [obj]
    if isinstance(obj, dict):
        return [s for v in obj.values() for s in json_strings(v)]
    if isinstance(obj, list):
        return [s for v in obj for s in json_strings(v)]
    return []


def degenerate(text: str) -> str | None:
    """A reason if the text loops or repeats itself, else None."""
    for m in re.finditer(r"(.{4,40}?)\1{2,}", text, re.S):
        if re.search(r"[^\W\d_]", m.group(1)):
            return f"repeats {m.group(1)!r} in a loop"
    if re.search(r"(.)\1{9,}", text):
        return "a character repeated 10+ times"
    m = re.search(r"(?<!\S)(\S+)(?:\s+\1){2,}(?!\S)", text)
    if m:
        return f"says {m.group(1)!r} three times in a row"
    sentences = [s.strip() for s in re.split(r"[.!?。！？\n]+", norm(text))]
    sentences = [s for s in sentences if len(tokens(s)) >= 3]
    if len(sentences) != len(set(sentences)):
        return "says the same sentence twice"
    toks = tokens(text)
    grams = list(zip(toks, toks[1:], toks[2:]))
    if len(toks) >= 12 and len(set(grams)) < 0.5 * len(grams):
        return "most word 3-grams are repeats"
    return None

