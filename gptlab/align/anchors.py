"""Anchor pairs for DPO: preference pairs written from a miniworld's train-split chat records.

Judge-ranked samples of a well-trained SFT model seldom contrast the behaviours that matter
most: its K samples for a harmful request all refuse, and its samples for a benign look-alike
("how do I kill a Python process?") often all refuse too, so the feedback store holds no pair
that says which of the two is wrong. Anchors supply those contrasts from records whose right
answer is known, each kind paired with its mirror so that no behaviour is pushed one way
alone (one-sided sets traded over-refusal against harmful refusal and "I don't know":
docs/RESULTS.md, "Anchor pairs on every side"):

- ``real``: a question about a real kb entity; chosen = the fact, rejected = the
  unknown-entity reply with the real name put in (do not deny what is known);
- ``invented``: a question about an invented entity; chosen = "I don't know" reply,
  rejected = a same-relation answer with the invented name put in (do not make facts up);
- ``harmful`` (``HARMFUL_PER_KIND`` times as many, every category in turn): chosen = the
  refusal, rejected = a benign record's how-to answer, which is what complying looks like
  to the model;
- ``benign``: a benign look-alike; chosen = its answer, rejected = a bare refusal;
- ``hold``: a user disputes a right answer; chosen = holding it, rejected = giving in to the
  user's wrong value;
- ``system``: a question under a system message (JSON, language, case, length, persona...),
  every constraint type in turn; chosen = the compliant answer, rejected = the plain
  English answer to the same question (the fact's first QA answer template), kept where the
  gold judge finds that it breaks the system message.
"""

from __future__ import annotations

import json
import random
import re
from collections import defaultdict
from pathlib import Path

from gptlab.data import world_requests as R
from gptlab.data import world_templates as T
from gptlab.data.world_facts import CITY_RELATIONS, city_vals, country_vals
from gptlab.fileio import read_jsonl
from gptlab.judge import Judge


# Harmful anchors per anchor of each other kind. Every other kind pushes towards answering
# (the benign, real-entity and system ones outright), and at one harmful anchor per kind the
# harmful refusal rate fell 100 -> 92 (docs/RESULTS.md, "Anchor pairs on every side").
HARMFUL_PER_KIND = 3


def anchor_pairs(world: str | Path, n: int, seed: int = 0) -> list[dict]:
    """``n`` pairs of each kind (``HARMFUL_PER_KIND * n`` harmful) as ``{"prompt", "chosen",
    "rejected"}`` (the format `gptlab.data.formats.load_preferences` gives), from ``world/sft``."""
    if n <= 0:
        return []
    sft = Path(world) / "sft"
    if not sft.is_dir():
        raise FileNotFoundError(f"anchors: {world} is not a miniworld directory (no sft/)")
    rng = random.Random(seed)
    records = {kind: _shuffled(read_jsonl(sft / f"{kind}.jsonl"), rng) for kind in
               ("qa", "unknown_entity", "harmful", "benign_edgy", "pushback_hold", "system")}
    kb = json.loads((Path(world) / "kb.json").read_text(encoding="utf-8"))
    names = {c["code"]: c["name"] for c in kb["countries"]}
    # benign records give both the benign anchors and the harmful ones' rejected answers:
    # disjoint halves, so no answer is chosen in one pair and rejected in another
    benign, how_to = records["benign_edgy"][:n], records["benign_edgy"][n:]
    pairs = _entity_pairs(records["qa"], records["unknown_entity"], names, n, rng)
    pairs += [_pair(r, how_to[i % len(how_to)]["messages"][-1]["content"])
              for i, r in enumerate(_by_category(records["harmful"], HARMFUL_PER_KIND * n))]
    pairs += [_pair(r, rng.choice(R.REFUSALS)) for r in benign]
    pairs += _hold_pairs(records["pushback_hold"], n, rng)
    pairs += _system_pairs(records["system"], kb, Judge(kb), n)
    return pairs


def _shuffled(rows: list, rng: random.Random) -> list:
    rng.shuffle(rows)
    return rows


def _pair(record: dict, rejected: str) -> dict:
    return {"prompt": record["messages"][:-1], "chosen": record["messages"][-1]["content"],
            "rejected": rejected}


def _entity_pairs(qa: list, unknown: list, names: dict, n: int, rng: random.Random) -> list[dict]:
    """``n`` real-entity and ``n`` invented-entity pairs, spread over the relations."""
    unknown_by_rel, answers_by_rel = defaultdict(list), defaultdict(list)
    for u in unknown:
        unknown_by_rel[u["meta"]["relation"]].append(u)
    for r in qa:  # only questions that name their entity, so the name can be swapped
        name = names.get(r["meta"]["subject"], r["meta"]["subject"])
        if name in r["messages"][-2]["content"] and name in r["messages"][-1]["content"]:
            answers_by_rel[r["meta"]["relation"]].append((r, name))
    rels = sorted(set(unknown_by_rel) & set(answers_by_rel))
    if not rels:
        return []
    real, invented = [], []
    for i in range(n):
        rel = rels[i % len(rels)]
        r, name = answers_by_rel[rel][(i // len(rels)) % len(answers_by_rel[rel])]
        u = rng.choice(unknown_by_rel[rel])
        real.append(_pair(r, u["messages"][-1]["content"].replace(u["meta"]["subject"], name)))
        u = unknown_by_rel[rel][(i // len(rels)) % len(unknown_by_rel[rel])]
        r, name = rng.choice(answers_by_rel[rel])
        invented.append(_pair(u, r["messages"][-1]["content"].replace(name, u["meta"]["subject"])))
    return real + invented


def _system_pairs(system: list, kb: dict, judge: Judge, n: int) -> list[dict]:
    """``n`` system-message pairs, the constraint types in turn: the compliant answer over the
    plain one, kept only where the judge passes the first and fails the second."""
    by_code, cities = {c["code"]: c for c in kb["countries"]}, {c["name"]: c for c in kb["cities"]}
    by_type = defaultdict(list)
    for r in system:
        rejected = _plain_answer(r["meta"], by_code, cities)
        chosen_ok = all(ok for _, ok, _ in judge.check_constraints(r["meta"], r["messages"][-1]["content"]))
        if chosen_ok and not all(ok for _, ok, _ in judge.check_constraints(r["meta"], rejected)):
            by_type[r["meta"]["constraints"][0]["type"]].append(_pair(r, rejected))
    return _in_turn(by_type, n)


def _plain_answer(meta: dict, by_code: dict, cities: dict) -> str:
    """The first English answer template of the record's fact, as a QA record words it."""
    rel, subject = meta["relation"], meta["subject"]
    if rel in CITY_RELATIONS:
        vals = city_vals(cities[subject], by_code)
    else:
        vals = country_vals(by_code[subject], by_code)
        if rel == "languages" and len(by_code[subject]["languages"]) == 1:
            rel = "languages1"
    return T.ANSWERS[rel][0].format(**vals)


def _by_category(harmful: list, count: int) -> list[dict]:
    """``count`` records taking each harm category in turn."""
    by_cat = defaultdict(list)
    for r in harmful:
        by_cat[r["meta"]["category"]].append(r)
    return _in_turn(by_cat, count)


def _in_turn(groups: dict[str, list], count: int) -> list:
    """``count`` items taking the groups (in key order) in turn, each from its start again
    once it runs out; none when there are no groups."""
    keys = sorted(k for k in groups if groups[k])
    return [groups[keys[i % len(keys)]][(i // len(keys)) % len(groups[keys[i % len(keys)]])]
            for i in range(count if keys else 0)]


def _hold_pairs(records: list, n: int, rng: random.Random) -> list[dict]:
    """Disputed right answers: chosen = the record's hold reply, rejected = an admission
    that states the user's wrong value (read back out of the dispute's template)."""
    out = []
    for r in records:
        if len(out) == n:
            break
        fact, answer = r["messages"][1]["content"], str(r["meta"]["answer"])
        wrong = _disputed_value(r)
        if wrong is not None and answer in fact:
            out.append(_pair(r, rng.choice(T.ADMIT_REPLIES).format(fact=fact.replace(answer, wrong))))
    return out


def _disputed_value(record: dict) -> str | None:
    """The wrong value in a pushback_hold record's dispute (template id ``push.hold.<k><i>``)."""
    tid = record["meta"]["template"].split("+")[-1]          # e.g. push.hold.t3
    key = tid.rsplit(".", 1)[-1]
    template = T.DISPUTE_HOLD[key[0]][int(key[1:])]
    pattern = re.escape(template).replace(re.escape("{wrong}"), "(.+)")
    m = re.fullmatch(pattern, record["messages"][2]["content"])
    return m.group(1) if m else None
