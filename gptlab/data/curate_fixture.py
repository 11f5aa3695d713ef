"""A planted corpus for measuring curation: a clean miniworld corpus with known exact and
near duplicates, junk of each quality rule, PII and eval leaks mixed in (`planted_corpus`),
and `score_planted`, the precision and recall of a curation run against what was planted."""
from __future__ import annotations

import json
import random
from pathlib import Path

from gptlab.data.curate import REASONS, eval_texts
from gptlab.data.curate_hash import HAS_CJK, Batch, normalize
from gptlab.fileio import atomic_write_text


FOREIGN_SENTENCES = ["La ville est située au bord de la rivière et compte de nombreux habitants qui travaillent dans les usines.",
                     "Der Fluss fließt durch die Stadt, und im Sommer kommen viele Besucher aus dem ganzen Land hierher.",
                     "El mercado abre todos los días por la mañana y los vecinos compran pan, fruta y pescado fresco.",
                     "Il treno parte dalla stazione centrale ogni mattina e arriva in città dopo due ore di viaggio."]


def junk_text(rng, kind: str) -> str:
    if kind == "symbols":
        return " ".join("".join(rng.choice("@#$%^&*<>{}|~=+") for _ in range(rng.randint(2, 6)))
                        + rng.choice(["", " data", " x"]) for _ in range(rng.randint(20, 60)))
    if kind == "digits":
        return "\n".join(" ".join(str(rng.randint(1000, 99999)) for _ in range(6)) for _ in range(rng.randint(5, 15)))
    if kind == "repetition":
        line = rng.choice(["Click here to subscribe to our newsletter", "Buy cheap watches online now",
                           "Best prices guaranteed, order today"]) + f" (offer {rng.randint(1, 10**6)})"
        return "\n".join([line] * rng.randint(8, 20))
    if kind == "too_short":
        return rng.choice(["Home | Login | {}", "Read more ({})", "Page {} of 90", "Share this {}"]).format(
            rng.randint(1, 10**6))
    if kind == "language":            # word salad from one language's sentence
        words = rng.choice(FOREIGN_SENTENCES).rstrip(".").split()
        return " ".join(rng.choice(words) for _ in range(rng.randint(25, 40))) + "."
    raise ValueError(kind)


def near_copy(rng, text: str) -> str:
    """An edited copy: one word edit per 25 words (at least one), then case or spacing."""
    zh = bool(HAS_CJK.search(text))
    parts = list(text) if zh else text.split(" ")
    for _ in range(max(1, len(parts) // (60 if zh else 25))):
        i = rng.randrange(len(parts))
        op = rng.random()
        if op < 0.4:
            parts[i] = rng.choice(["很", "新"] if zh else ["very", "new", "old", "big"])
        elif op < 0.7 and len(parts) > 3:
            del parts[i]
        else:
            parts.insert(i, rng.choice(["也"] if zh else ["also", "really", "indeed"]))
    out = ("" if zh else " ").join(parts)
    return out.upper() if rng.random() < 0.3 else out.replace(". ", ".  ")


PII_SAMPLES = [("email", "Write to {} for details.", ["jane.doe@example.org", "info@mail.example.com", "b.smith+news@example.co.uk"]),
        ("phone", "Call {} to book.", ["+1 555 123 4567", "(555) 987-6543", "020 7946 0958", "+44 20 7946 0958"]),
        ("ip", "The mirror runs at {}.", ["192.168.10.24", "10.0.0.7", "2001:0db8:85a3:0000:0000:8a2e:0370:7334", "fe80::1ff:fe23:4567:890a"])]


def planted_corpus(world: str | Path, out: str | Path, seed: int = 0, n_exact: int = 40,
                   n_near: int = 100, n_junk: int = 10, n_pii: int = 30, n_leak: int = 40) -> dict:
    """A measuring fixture: miniworld's corpus (exact duplicates dropped) with planted
    exact duplicates, near duplicates, junk of each kind, PII and leaked eval items, shuffled,
    written to `out` (jsonl with {"text", "planted"}); returns {planted kind: count}. Leaks
    are eval items long enough to check, verbatim, appended to a copy of a clean document."""
    from gptlab.data.loaders import iter_texts  # deferred: loaders imports torch

    rng = random.Random(seed)
    world = Path(world)
    clean, seen = [], set()
    for t in iter_texts(world / "corpus"):
        key = normalize(t)
        if key not in seen:
            seen.add(key)
            clean.append(t)
    items = []
    for f in sorted((world / "eval").glob("*.jsonl")):
        for line in f.read_text(encoding="utf-8").splitlines():
            text = eval_texts(json.loads(line))
            b = Batch([text])
            if b.words[0] >= (26 if b.cjk[0] else 13):
                items.append(text)
    rng.shuffle(clean)
    pii_base, leak_base, clean = clean[:n_pii], clean[n_pii:n_pii + n_leak], clean[n_pii + n_leak:]
    docs = [(t, "clean") for t in clean]
    docs += [(t if rng.random() < 0.5 else "  " + t.lower() + " ", "exact_dup") for t in rng.sample(clean, n_exact)]
    docs += [(near_copy(rng, t), "near_dup") for t in rng.sample(clean, n_near)]
    for kind in ("symbols", "digits", "repetition", "too_short", "language"):
        docs += [(junk_text(rng, kind), kind) for _ in range(n_junk)]
    for i, t in enumerate(pii_base):         # these replace their clean originals
        _, template, values = PII_SAMPLES[i % 3]
        docs.append((t + " " + template.format(values[(i // 3) % len(values)]), "pii"))
    docs += [(t + "\n\n" + item, "contamination") for t, item in zip(leak_base, rng.sample(items, n_leak))]
    # originals come before their copies, so that the copy is the one counted as a duplicate
    first, rest = docs[:len(clean)], docs[len(clean):]
    rng.shuffle(rest)
    order = first + rest
    atomic_write_text(out, "".join(json.dumps({"text": t, "planted": k}, ensure_ascii=False) + "\n" for t, k in order))
    counts: dict = {}
    for _, k in order:
        counts[k] = counts.get(k, 0) + 1
    return counts


def score_planted(fixture: str | Path, out: str | Path) -> dict:
    """Per rule: recall (planted documents of that kind removed for that reason), precision
    (removals for that reason that were planted as such); plus the clean documents removed
    and, for PII, the share of planted documents kept with the PII replaced."""
    planted = [json.loads(line) for line in Path(fixture).read_text(encoding="utf-8").splitlines()]
    why: dict[int, str] = {}
    for f in (Path(out) / "removed").glob("*.jsonl"):
        for line in f.read_text(encoding="utf-8").splitlines():
            why[json.loads(line)["index"]] = f.stem
    kept = "\n".join(json.loads(line)["text"] for f in sorted((Path(out) / "corpus").glob("*.jsonl"))
                     for line in f.read_text(encoding="utf-8").splitlines())
    result = {}
    for rule in REASONS:
        truth = {i for i, r in enumerate(planted) if r["planted"] == rule}
        got = {i for i, r in why.items() if r == rule}
        if truth or got:
            result[rule] = {"planted": len(truth), "removed": len(got),
                            "recall": len(truth & got) / max(len(truth), 1),
                            "precision": len(truth & got) / max(len(got), 1)}
    clean = [i for i, r in enumerate(planted) if r["planted"] == "clean"]
    result["clean_removed"] = {"n": len(clean), "removed": sum(i in why for i in clean),
                               "fraction": sum(i in why for i in clean) / max(len(clean), 1),
                               "by_reason": {r: sum(why.get(i) == r for i in clean) for r in REASONS}}
    pii = [i for i, r in enumerate(planted) if r["planted"] == "pii"]
    values = [v for _, _, vs in PII_SAMPLES for v in vs]
    leaked = sum(v in kept for v in values)
    result["pii"] = {"planted": len(pii), "kept": sum(i not in why for i in pii),
                     "values_left_in_kept_text": leaked}
    return result
