"""miniworld generator: files, manifest, held-out disjointness, determinism, answer markers.

Everything runs on the tiny scale (about a second per generation)."""

import hashlib
import json
import re
from pathlib import Path

import pytest

from gptlab.data import phrases
from gptlab.data import world_requests as R
from gptlab.data import world_templates as T
from gptlab.data.world import generate_world
from gptlab.data.world_chat import CATEGORIES, cjk_ratio, heldout_template_texts, template_regex

GROUPS = ("sft", "prompts", "eval")
META_KEYS = {"kind", "subject", "relation", "answer", "constraints", "harmful", "category",
             "template", "split"}
HARM_CATEGORIES = {"violence/weapons", "cyber/malware", "self-harm", "hate", "sexual/minors", "fraud"}


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("world0")
    manifest = generate_world(out, seed=0, scale="tiny")
    kb = json.loads((out / "kb.json").read_text(encoding="utf-8"))
    data = {g: {p.stem: _read_jsonl(p) for p in sorted((out / g).glob("*.jsonl"))} for g in GROUPS}
    return {"dir": out, "manifest": manifest, "kb": kb, **data}


def _final_answers(records, group):
    """(record, reference assistant text) for sft conversations or prompt records."""
    for r in records:
        yield r, (r["messages"][-1]["content"] if group == "sft" else r["reference"])


def _all(world, kind):
    for g in GROUPS:
        yield from ((g, r, a) for r, a in _final_answers(world[g].get(kind, []), g))


# ----------------------------------------------------------------------------- files

def test_writes_all_files(world):
    d = world["dir"]
    assert (d / "kb.json").is_file() and (d / "manifest.json").is_file()
    assert list(d.glob("corpus/*.jsonl"))
    for g in GROUPS:
        for cat in CATEGORIES:
            assert (d / g / f"{cat}.jsonl").stat().st_size > 0, (g, cat)
    assert (d / "eval" / "fact_completion.jsonl").stat().st_size > 0
    assert json.loads((d / "manifest.json").read_text()) == world["manifest"]


def test_manifest_counts_and_hashes_match_files(world):
    d, m = world["dir"], world["manifest"]
    on_disk = {str(p.relative_to(d)) for p in d.rglob("*") if p.is_file()} - {"manifest.json"}
    assert set(m["files"]) == on_disk
    for rel, entry in m["files"].items():
        data = (d / rel).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"], rel
        if rel.endswith(".jsonl"):
            assert data.count(b"\n") == entry["records"], rel
    for g in GROUPS:
        for cat, n in m["counts"][g].items():
            assert m["files"][f"{g}/{cat}.jsonl"]["records"] == n == len(world[g][cat])
    assert abs(sum(m["shares"]["sft"].values()) - 1) < 1e-3
    assert m["corpus"]["documents"] == sum(v["records"] for k, v in m["files"].items()
                                           if k.startswith("corpus/"))


def test_record_shapes(world):
    for g in GROUPS:
        for cat, recs in world[g].items():
            for r in recs:
                meta = r["meta"]
                assert META_KEYS <= set(meta), (g, cat)
                assert meta["kind"] == cat
                assert meta["split"] == ("heldout" if g == "eval" else "train")
                if cat == "fact_completion":
                    assert r["prompt"] and r["answer"]
                    continue
                roles = [m["role"] for m in r["messages"]]
                assert set(roles) <= {"system", "user", "assistant"}
                assert roles[-1] == ("assistant" if g == "sft" else "user")
                if g != "sft":
                    assert isinstance(r["reference"], str) and r["reference"]


def test_kb_schema(world):
    kb = world["kb"]
    c = next(x for x in kb["countries"] if x["code"] == "FR")
    assert c["capital"] == "Paris" and c["continent"] == "Europe" and c["name_zh"] == "法国"
    assert "French" in c["languages"] and "DE" in c["neighbours"]
    assert isinstance(c["population"], int) and isinstance(c["area_km2"], int)
    codes = {x["code"] for x in kb["countries"]}
    assert all(n in codes for x in kb["countries"] for n in x["neighbours"])
    assert all(city["country"] in codes for city in kb["cities"])
    held = kb["heldout"]
    assert held["countries"] and held["cities"] and held["templates"]
    assert set(held["countries"]) < codes


# ----------------------------------------------------------------------------- held out

def _heldout_names(kb):
    held = set(kb["heldout"]["countries"])
    names = set(kb["heldout"]["cities"]) | set(kb["heldout"]["fake_entities"])
    for c in kb["countries"]:
        if c["code"] in held:
            names |= {c["name"], c["name_zh"], c["capital"], *c["aliases"]}
    return names


def _texts(records):
    for r in records:
        for m in r["messages"]:
            yield m["content"]
        if "reference" in r:
            yield r["reference"]


def test_heldout_entities_never_in_sft_or_prompts(world):
    names = _heldout_names(world["kb"])
    latin = [n for n in names if not re.search(r"[\u4e00-\u9fff]", n)]
    pat = re.compile(r"(?<!\w)(?:" + "|".join(map(re.escape, latin)) + r")(?!\w)")
    zh = [n for n in names if n not in latin]
    for g in ("sft", "prompts"):
        for cat, recs in world[g].items():
            for text in _texts(recs):
                hit = pat.search(text)
                assert hit is None, (g, cat, hit and hit.group(), text)
                assert not any(z in text for z in zh), (g, cat, text)


def test_eval_uses_heldout_entities(world):
    kb = world["kb"]
    held_codes = set(kb["heldout"]["countries"])
    held_names = set(kb["heldout"]["cities"]) | set(kb["heldout"]["fake_entities"])
    for cat, recs in world["eval"].items():
        for r in recs:
            subj = r["meta"]["subject"]
            if subj is not None:
                assert subj in held_codes or subj in held_names, (cat, subj)


def test_heldout_template_ids_disjoint(world):
    held = set(world["kb"]["heldout"]["templates"])
    assert held == set(heldout_template_texts())
    for g in ("sft", "prompts"):
        for recs in world[g].values():
            for r in recs:
                assert not set(r["meta"]["template"].split("+")) & held, r["meta"]["template"]
    for recs in world["eval"].values():
        for r in recs:
            assert set(r["meta"]["template"].split("+")) <= held, r["meta"]["template"]


def test_varied_wordings_frame_real_and_invented_questions_alike(world, tmp_path):
    # --varied-wordings: a framing ("Settle a bet for me: ...") must not predict "I don't
    # know", so both the qa and the unknown_entity SFT records carry them; the held-out sets
    # stay byte-identical, and a default world has no framing at all
    varied = generate_world(tmp_path / "varied", seed=0, scale="tiny", varied_wordings=True)
    assert varied["varied_wordings"] and "varied_wordings" not in world["manifest"]
    for rel, entry in world["manifest"]["files"].items():
        if rel.startswith("eval/"):
            assert varied["files"][rel]["sha256"] == entry["sha256"], rel
    sft = {cat: _read_jsonl(tmp_path / "varied" / "sft" / f"{cat}.jsonl") for cat in ("qa", "unknown_entity")}
    for cat, recs in sft.items():
        framed = [r for r in recs if "+frame.t" in r["meta"]["template"]]
        assert 0 < len(framed) < len(recs), cat
        assert not any("+frame." in r["meta"]["template"] for r in world["sft"][cat])
        for r in framed:
            fid = int(r["meta"]["template"].split("+frame.t")[1].split("+")[0])
            head, tail = T.QA_FRAMES["t"][fid].split("{q}")
            user = next(m["content"] for m in r["messages"] if m["role"] == "user")
            assert user.startswith(head) and user.endswith(tail), (user, fid)
    extra = {f"qa.{rel}.t{len(T.QUESTIONS[rel]['t']) + i}" for rel, more in T.QUESTIONS_VARIED.items()
             for i in range(len(more))}
    assert any(r["meta"]["template"].split("+")[0] in extra for r in sft["qa"])
    held = [rx for tid, rx in _heldout_regexes().items() if tid.startswith("qa.")]
    users = [m["content"] for recs in sft.values() for r in recs for m in r["messages"] if m["role"] == "user"]
    assert not any(rx.search(u) for rx in held for u in users)


def _heldout_regexes() -> dict[str, re.Pattern]:
    """{id: case-blind regex} of every held-out chat wording (fc.*: base-model prompts, no chat)."""
    return {tid: re.compile(template_regex(t).pattern, re.I)
            for tid, t in heldout_template_texts().items() if not tid.startswith("fc.")}


def test_heldout_template_text_not_in_sft(world):
    regexes = _heldout_regexes()
    texts = [m["content"] for g in ("sft", "prompts") for recs in world[g].values() for r in recs
             for m in r["messages"] if m["role"] in ("user", "system")]
    for tid, rx in regexes.items():
        hit = next((t for t in texts if rx.search(t)), None)
        assert hit is None, (tid, hit)
    # and the held-out wordings do occur in eval
    eval_texts = " ".join(m["content"] for recs in world["eval"].values()
                          for r in recs if "messages" in r for m in r["messages"])
    assert sum(bool(rx.search(eval_texts)) for rx in regexes.values()) > len(regexes) // 3


# ----------------------------------------------------------------------------- determinism

def test_same_seed_identical_different_seed_differs(world, tmp_path):
    again = generate_world(tmp_path / "again", seed=0, scale="tiny")
    other = generate_world(tmp_path / "other", seed=1, scale="tiny")
    assert again == world["manifest"]
    assert {k: v["sha256"] for k, v in again["files"].items()} == \
        {k: v["sha256"] for k, v in world["manifest"]["files"].items()}
    for rel in ("kb.json", "sft/qa.jsonl", "corpus/part_000.jsonl", "eval/qa.jsonl"):
        assert other["files"][rel]["sha256"] != again["files"][rel]["sha256"], rel


def test_train_wording_edit_leaves_eval_sets_unchanged(world, tmp_path, monkeypatch):
    # eval sets are drawn from per-category streams: a new train wording for one rule (or a
    # new corpus sentence) must not reshuffle the held-out items models are compared on
    # (every "upper" wording edited, so the system set changes whichever one it draws)
    monkeypatch.setitem(T.SYSTEM["upper"], "t", [t + " ALL CAPS." for t in T.SYSTEM["upper"]["t"]])
    monkeypatch.setitem(T.CORPUS_EN, "capital", T.CORPUS_EN["capital"] + ["{c}: capital {capital}."])
    edited = generate_world(tmp_path / "edited", seed=0, scale="tiny")
    sha = {k: v["sha256"] for k, v in edited["files"].items()}
    base = {k: v["sha256"] for k, v in world["manifest"]["files"].items()}
    for rel in base:
        if rel.startswith("eval/") or rel in ("sft/qa.jsonl", "prompts/harmful.jsonl"):
            assert sha[rel] == base[rel], rel
    assert sha["sft/system.jsonl"] != base["sft/system.jsonl"]
    assert sha["corpus/part_000.jsonl"] != base["corpus/part_000.jsonl"]


def test_unknown_scale_rejected(tmp_path):
    with pytest.raises(ValueError, match="scale"):
        generate_world(tmp_path, scale="huge")


# ----------------------------------------------------------------------------- answers

def test_harmful_answers_refuse_without_scolding(world):
    n = 0
    for g, r, a in _all(world, "harmful"):
        assert r["meta"]["harmful"] is True and r["meta"]["category"] in HARM_CATEGORIES
        assert phrases.contains_any(a, phrases.REFUSAL_MARKERS), a
        assert not phrases.contains_any(a, phrases.SCOLDING_MARKERS), a
        assert len(a.split()) < 90
        if r["meta"]["category"] == "self-harm":
            assert "988" in a or "helpline" in a
        n += 1
    assert n > 20
    assert {r["meta"]["category"] for r in world["sft"]["harmful"]} == HARM_CATEGORIES


def test_benign_edgy_answers_help(world):
    for g, r, a in _all(world, "benign_edgy"):
        assert not phrases.contains_any(a, phrases.REFUSAL_MARKERS), a
        assert not phrases.contains_any(a, phrases.SCOLDING_MARKERS), a
        assert r["meta"]["harmful"] is False and len(a.split()) >= 8


def test_train_requests_never_repeat_a_heldout_one():
    # over-refusal and harmful refusal are measured on the "h" requests: a train request
    # that repeats one (ignoring case and punctuation) would leak it into SFT
    def requests(split):
        texts = [q for q, _ in R.BENIGN[split]] + [q for c in R.HARMFUL.values() for q in c[split]]
        return texts, {re.sub(r"[^a-z0-9 ]", "", q.lower()).strip() for q in texts}
    held_texts, held = requests("h")
    _, train = requests("t")
    assert len(held) == len(held_texts)
    assert not held & train, held & train


def test_no_answer_anywhere_scolds_or_wrongly_refuses(world):
    for g in GROUPS:
        for cat, recs in world[g].items():
            if cat == "fact_completion":
                continue
            for r, a in _final_answers(recs, g):
                assert not phrases.contains_any(a, phrases.SCOLDING_MARKERS), (cat, a)
                if cat != "harmful":
                    assert not phrases.contains_any(a, phrases.REFUSAL_MARKERS), (cat, a)


def test_marker_categories(world):
    for _, r, a in _all(world, "unknown_entity"):
        assert phrases.contains_any(a, phrases.IDK_MARKERS) and r["meta"]["answer"] is None
    for _, r, a in _all(world, "false_premise"):
        assert phrases.contains_any(a, phrases.PREMISE_MARKERS), a
        assert str(r["meta"]["answer"]) in a
    for _, r, a in _all(world, "pushback_hold"):
        assert phrases.contains_any(a, phrases.HOLD_MARKERS), a
        assert not phrases.contains_any(a, phrases.ADMIT_MARKERS), a
    names = {c["code"]: c["name"] for c in world["kb"]["countries"]}
    for g, r, a in _all(world, "pushback_admit"):
        assert phrases.contains_any(a, phrases.ADMIT_MARKERS), a
        assert not phrases.contains_any(a, phrases.HOLD_MARKERS), a
        wrong = r["messages"][1]["content"]           # the deliberately wrong turn
        subject = names.get(r["meta"]["subject"], r["meta"]["subject"])
        assert str(r["meta"]["answer"]) not in wrong.replace(subject, ""), wrong
        assert r["meta"]["masked_turns"] == [1]


def _answer_strings(answer):
    return [str(x) for x in answer] if isinstance(answer, list) else [str(answer)]


def test_factual_answers_contain_kb_value(world):
    for g in GROUPS:
        for cat in ("qa", "multiturn", "pushback_hold", "pushback_admit", "false_premise"):
            for r, a in _final_answers(world[g][cat], g):
                for s in _answer_strings(r["meta"]["answer"]):
                    assert s in a, (cat, s, a)


def test_kb_facts_consistent_with_answers(world):
    kb = world["kb"]
    by_code = {c["code"]: c for c in kb["countries"]}
    field = {"capital": "capital", "continent": "continent", "population": "population",
             "area": "area_km2", "currency": "currency_name", "languages": "languages"}
    for r in world["sft"]["qa"]:
        m = r["meta"]
        if m["relation"] in field:
            assert by_code[m["subject"]][field[m["relation"]]] == m["answer"]


def test_arithmetic_answers_correct(world):
    for g, r, a in _all(world, "arithmetic"):
        m = r["meta"]
        if m["relation"] == "arithmetic":
            lhs, rhs = a.rstrip(".").split(" = ")
            assert eval(lhs) == int(rhs) == m["answer"], a    # noqa: S307 (digits and +-*/ only)
        else:
            assert m["relation"] == "unit" and m["tolerance"] > 0
            assert re.sub(r"\.0$", "", str(m["answer"])) in a


def _check_constraint(c, text):
    t = c["type"]
    if t == "json":
        obj = json.loads(text)
        assert isinstance(obj, dict) and set(obj) == set(c["keys"]), text
    elif t == "language" and c["value"] == "zh":
        assert cjk_ratio(text) == 1.0 and not re.search("[A-Za-z]", text), text
    elif t == "language":
        assert cjk_ratio(text) == 0, text
    elif t == "case":
        letters = [ch for ch in text if ch.isalpha()]
        assert all(ch.isupper() if c["value"] == "upper" else ch.islower() for ch in letters), text
    elif t == "max_words":
        assert len(text.split()) <= c["value"], text
    elif t == "one_word":
        assert len(text.split()) == 1, text
    elif t == "persona":
        assert c["marker"] in text.lower(), text
    else:
        raise AssertionError(f"unknown constraint {c}")


def test_system_constraints_obeyed(world):
    seen = set()
    for cat in ("system", "conflict"):
        for g in GROUPS:
            for r, a in _final_answers(world[g][cat], g):
                assert r["meta"]["constraints"], r
                assert r["messages"][0]["role"] == "system"
                for c in r["meta"]["constraints"]:
                    _check_constraint(c, a)
                    seen.add(c["type"])
                fact = r["meta"]["answer"]
                if not any(c["type"] in ("case", "json") or c.get("value") == "zh"
                           for c in r["meta"]["constraints"]):
                    for s in _answer_strings(fact):
                        assert s in a, (s, a)
    assert {"json", "language", "case", "max_words", "one_word", "persona"} <= seen


def test_corpus_covers_every_country_and_no_fakes(world):
    text = "\n".join(r["text"] for p in sorted(world["dir"].glob("corpus/*.jsonl"))
                     for r in _read_jsonl(p))
    missing = [c["name"] for c in world["kb"]["countries"] if c["name"] not in text]
    assert not missing
    assert not [f["name"] for f in world["kb"]["fake_entities"] if f["name"] in text]
    assert re.search(r"[\u4e00-\u9fff]", text)          # some Chinese documents
    assert re.search(r"\d+ \+ \d+ = \d+", text)         # arithmetic examples


def test_template_tables_are_rich_enough():
    for rel in ("capital", "continent", "population", "area", "currency", "languages",
                "neighbours", "largest_city", "city_country", "city_population"):
        assert len(set(T.CORPUS_EN[rel])) >= 20, rel
    for table in (T.QUESTIONS, T.SYSTEM, R.HARMFUL):
        for key, pool in table.items():
            assert pool["t"] and pool["h"], key
            assert not set(pool["t"]) & set(pool["h"]), key
