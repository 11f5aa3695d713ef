"""gptlab data curate on a miniworld corpus with planted duplicates, near-duplicates, junk,
PII and leaked eval items: recall and precision per rule, the clean documents it spares,
its files, and its errors."""
from __future__ import annotations

import hashlib
import json
import random

import pytest

from gptlab.cli import main
from gptlab.data.curate import REASONS, CurateConfig, curate, scrub_pii
from gptlab.data.curate_fixture import (
    PII_SAMPLES, junk_text, near_copy, planted_corpus, score_planted)
from gptlab.data.loaders import DataError, iter_texts
from gptlab.data.world import generate_world


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    root = tmp_path_factory.mktemp("curate")
    generate_world(root / "world", seed=0, scale="tiny")
    counts = planted_corpus(root / "world", root / "fixture.jsonl", seed=0)
    report = curate(CurateConfig(input=str(root / "fixture.jsonl"), out=str(root / "out"),
                                 world=str(root / "world"), workers=2, progress=False))
    return root, counts, report, score_planted(root / "fixture.jsonl", root / "out")


def test_recall_and_precision_per_rule(planted):
    _, counts, _, score = planted
    assert counts["near_dup"] == 100 and counts["contamination"] == 40
    for rule in ("near_dup", "contamination", "exact_dup"):
        assert score[rule]["recall"] >= 0.95, (rule, score[rule])
        assert score[rule]["precision"] >= 0.95, (rule, score[rule])
    for rule in ("too_short", "symbols", "digits", "repetition", "language"):
        assert score[rule]["recall"] >= 0.8, (rule, score[rule])
        assert score[rule]["precision"] >= 0.9, (rule, score[rule])
    assert score["clean_removed"]["fraction"] <= 0.01, score["clean_removed"]
    # PII is replaced, never a reason to drop the document
    assert score["pii"]["kept"] == score["pii"]["planted"] == 30
    assert score["pii"]["values_left_in_kept_text"] == 0


def test_outputs_and_report(planted):
    root, counts, report, _ = planted
    out = root / "out"
    kept = list(iter_texts(out / "corpus"))        # what the tokenizer and pretrain read
    assert len(kept) == report["kept"]["docs"]
    removed = {f.stem: f.read_text().count("\n") for f in (out / "removed").glob("*.jsonl")}
    assert set(removed) <= set(REASONS)
    assert all(removed[r] == report["removed"][r]["docs"] for r in removed)
    assert report["total"]["docs"] == sum(counts.values()) == len(kept) + sum(removed.values())
    # counted over every document: the junk tables of digits hold phone-like runs too
    assert report["pii"]["email"] == report["pii"]["ip"] == 10 <= report["pii"]["phone"]
    assert report["eval_sets"]["items_checked"] > 40
    md = (out / "report.md").read_text()
    assert "| near_dup |" in md and "| **kept** |" in md and "## Examples" in md
    assert json.loads((out / "report.json").read_text())["kept"] == report["kept"]
    assert not [p for p in root.iterdir() if p.name.startswith(".")]   # no temporary dirs left


def test_result_does_not_depend_on_workers(planted, tmp_path):
    root, _, report, _ = planted
    again = curate(CurateConfig(input=str(root / "fixture.jsonl"), out=str(tmp_path / "o"),
                                world=str(root / "world"), workers=0, progress=False))
    assert again["removed"] == report["removed"] and again["kept"] == report["kept"]
    assert list(iter_texts(tmp_path / "o" / "corpus")) == list(iter_texts(root / "out" / "corpus"))


def test_extra_eval_set_and_cli(tmp_path, capsys):
    item = "Which river flows through the old town of Quillbridge before it reaches the northern sea at last?"
    (tmp_path / "heldout.jsonl").write_text(json.dumps({"question": item, "answer": "The Vell"}) + "\n")
    docs = ["Travel notes. " + item + " Everyone knows the answer is the Vell.",
            "The Vell is a short river in a made-up country, loved by anglers and by painters alike."]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    rc = main(["data", "curate", "--input", str(tmp_path / "in.jsonl"), "--out", str(tmp_path / "o"),
               "--eval", str(tmp_path / "heldout.jsonl"), "--workers", "0"])
    assert rc == 0 and "| contamination | 1 |" in capsys.readouterr().out
    assert list(iter_texts(tmp_path / "o" / "corpus")) == docs[1:]


def test_malformed_input_is_one_clear_error(tmp_path, capsys):
    (tmp_path / "bad.jsonl").write_text('{"text": "fine text here, five words"}\n{"text": 5}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: field 'text' must be a string"):
        curate(CurateConfig(input=str(tmp_path / "bad.jsonl"), out=str(tmp_path / "o"), progress=False))
    assert not (tmp_path / "o").exists()
    rc = main(["data", "curate", "--input", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "o")])
    assert rc == 2 and "does not exist" in capsys.readouterr().err


def test_pii_patterns():
    text, counts = scrub_pii("Mail ann@example.com or call (555) 123-4567; host 10.0.0.7.")
    assert text == "Mail [EMAIL] or call [PHONE]; host [IP]." and counts == {"email": 1, "phone": 1, "ip": 1}
    plain = "In 2019-2020 about 29495962 people lived there; at 10:30 the ratio was 3.5 (v1.2.3)."
    assert scrub_pii(plain) == (plain, {})


# ---------------------------------------------------------------------------- output is frozen

_SUBJECTS = ["The river", "Our town council", "The old mill", "A small museum", "The northern railway",
             "Every market stall", "The harbour", "The city library", "A local farmer", "The mountain pass"]
_VERBS = ["opened", "closed", "was rebuilt", "welcomed visitors", "changed its name", "grew quickly",
          "flooded", "was painted", "sold its land", "hosted a festival"]
_TAILS = ["in the spring of {y}.", "after the long winter of {y}.", "when the new bridge opened in {y}.",
          "because the harvest failed in {y}.", "with help from neighbours in {y}.", "before {y}, people say."]
_PLACES = ["Kuala Lumpur", "Ouagadougou", "Reykjavik", "Asuncion", "Tegucigalpa", "Antananarivo", "Ulaanbaatar"]
_ZH = ["河流穿过城市，夏天有很多游客。", "图书馆每天早上八点开门。", "这个小镇以手工艺品闻名。", "火车站在市中心附近。"]
_ODD = ["", "   ", "short", "tab\tand\x0bvertical\x0cfeed control \x01\x02 chars here ok",
        "emoji 🙂🙂 and accents: café naïve résumé über straße, five words at least",
        "ＦＵＬＬＷＩＤＴＨ ｔｅｘｔ ｈｅｒｅ ａｎｄ ｍｏｒｅ ｗｏｒｄｓ",
        "IPv6 loopback ::1 and fe80::1ff:fe23:4567:890a and 2001:db8::ff00:42:8329 in one line of text"]


def _sentence(rng) -> str:
    return f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_TAILS).format(y=rng.randint(1800, 2020))}"


def golden_corpus(inp, evals, seed: int = 0) -> None:
    """A fixed input that reaches every rule and path of curate, built without miniworld (so
    a change of the world generator does not move it): clean prose, CJK, place-name lists
    (CLD2's territory), planted exact/near duplicates, junk of each kind, PII of each kind,
    odd characters, a long document, and eval items, some leaked."""
    rng = random.Random(seed)
    clean = [" ".join(_sentence(rng) for _ in range(rng.randint(2, 14))) for _ in range(500)]
    clean += ["".join(rng.sample(_ZH, 3)) + " " + _sentence(rng) for _ in range(20)]
    clean += [", ".join(rng.sample(_PLACES, 5)) + "." for _ in range(10)]
    clean += ["\n".join(_sentence(rng) for _ in range(300))]                    # ~15 KB
    items = [" ".join(_sentence(rng) for _ in range(3)) for _ in range(30)]      # eval items
    items += ["Where is the mill?", "图书馆每天早上八点开门吗？请回答这个问题并说明理由，谢谢你的帮助。" * 2]
    docs = list(clean)
    docs += [t if rng.random() < 0.5 else "  " + t.upper() + " " for t in rng.sample(clean, 30)]
    docs += [near_copy(rng, t) for t in rng.sample(clean[:500], 60)]
    for kind in ("symbols", "digits", "repetition", "too_short", "language"):
        docs += [junk_text(rng, kind) for _ in range(8)]
    for i in range(24):
        _, template, values = PII_SAMPLES[i % 3]
        docs.append(rng.choice(clean[:500]) + " " + template.format(values[(i // 3) % len(values)]))
    docs += [rng.choice(clean[:500]) + "\n\n" + item for item in rng.sample(items, 15)]
    docs += _ODD
    rng.shuffle(docs)
    inp.write_text("".join(json.dumps({"text": t, "id": i}, ensure_ascii=False) + "\n" for i, t in enumerate(docs)),
                   encoding="utf-8")
    evals.write_text("".join(json.dumps({"question": q, "meta": {"n": i}}, ensure_ascii=False) + "\n"
                             for i, q in enumerate(items)), encoding="utf-8")


def _digests(out) -> dict:
    """sha256 of every output file but the report, and the report's counts."""
    files = {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()[:16]
             for p in sorted(out.rglob("*.jsonl"))}
    rep = json.loads((out / "report.json").read_text(encoding="utf-8"))
    counts = {k: rep[k] for k in ("total", "kept", "pii")}
    counts["removed"] = {r: [s["docs"], s["bytes"]] for r, s in rep["removed"].items()}
    counts["eval"] = {k: v for k, v in rep["eval_sets"].items() if k != "paths"}
    return {"files": files, "counts": counts}


# written by the code before the speed-ups of issue 20 (tests/test_curate.py: golden_corpus);
# any change to what curate keeps, removes, scrubs or reports shows up here
GOLDEN = {
    "files": {"corpus/part_000.jsonl": "2f52b5b6ef3d9579", "removed/contamination.jsonl": "c2ebd70544dff879",
              "removed/digits.jsonl": "f0102884af4acd89", "removed/exact_dup.jsonl": "930988fa8579474a",
              "removed/language.jsonl": "c53df344d8d841df", "removed/near_dup.jsonl": "ab9f540097058941",
              "removed/repetition.jsonl": "335790b4cf7fbad5", "removed/symbols.jsonl": "59306f509facd5ce",
              "removed/too_short.jsonl": "9a3be39f74ea3341"},
    "counts": {"total": {"docs": 706, "bytes": 338765}, "kept": {"docs": 525, "bytes": 240629},
               "pii": {"docs": 27, "email": 8, "phone": 11, "ip": 10},
               "removed": {"exact_dup": [30, 12660], "too_short": [10, 153], "symbols": [8, 2329],
                           "digits": [8, 3043], "repetition": [9, 23151], "language": [15, 1972],
                           "contamination": [15, 10281], "near_dup": [86, 44336]},
               "eval": {"files": 1, "items_checked": 31, "items_too_short": 1, "ngrams": 591, "ngram": 13,
                        "min_eval_words": 13}},
}


@pytest.mark.parametrize("workers", [0, 2])
def test_output_is_byte_identical_to_the_golden(tmp_path, workers):
    (tmp_path / "heldout").mkdir()       # removal details name the eval file by its folder
    golden_corpus(tmp_path / "in.jsonl", tmp_path / "heldout" / "ev.jsonl")
    curate(CurateConfig(input=str(tmp_path / "in.jsonl"), out=str(tmp_path / "out"),
                        evals=(str(tmp_path / "heldout"),), workers=workers, batch_docs=64, progress=False))
    got = _digests(tmp_path / "out")
    assert got["counts"] == GOLDEN["counts"]
    assert got["files"] == GOLDEN["files"]


# ---------------------------------------------------------------------------- fast paths are exact

def test_digit_leads_cover_every_unicode_digit():
    """pii_candidates reads a digit's first UTF-8 byte from _DIGIT_LEADS; `\\d` matches these."""
    import re
    import sys
    from gptlab.data.curate import _DIGIT_LEADS
    digit = re.compile(r"\d")
    leads = {chr(c).encode("utf-8")[0] for c in range(128, sys.maxunicode + 1)
             if not 0xD800 <= c < 0xE000 and digit.match(chr(c))}
    assert leads <= set(_DIGIT_LEADS)


def test_pii_candidates_never_miss_what_scrub_pii_finds():
    from gptlab.data.curate import pii_candidates
    rng = random.Random(1)
    pieces = list("0123456789") * 3 + list(" .-()+:") * 3 + list("ab@fE") + \
        ["٣", "３", "७", "𝟙", "é", "中", "\n", "١٢٣", "::", "a@b.cc"]
    docs = ["".join(rng.choice(pieces) for _ in range(rng.randint(0, 40))) for _ in range(20000)]
    docs += [template.format(v) for _, template, values in PII_SAMPLES for v in values]
    maybe, phone = pii_candidates([d.encode("utf-8") for d in docs])
    assert 0 < maybe.sum() < len(docs)
    for d, m, p in zip(docs, maybe, phone):
        assert (scrub_pii(d, p) if m else (d, {})) == scrub_pii(d), d


def test_word_shares_count_as_split_does():
    from gptlab.data.curate import _EN_WORDS
    from gptlab.data.curate_hash import Batch
    rng = random.Random(0)
    vocab = ["the", "of", "a", "中", "there", "which", "x", "1", "the中", "中the", "of.", " "]
    docs = [" ".join(rng.choice(vocab) for _ in range(rng.randint(0, 400))) for _ in range(500)]
    docs += ["".join(rng.choice(vocab) for _ in range(rng.randint(0, 400))) for _ in range(200)]
    docs += ["x" * k + " the there" for k in range(985, 1003)] + ["", " ", "the", "中the", "the中"]
    b = Batch(docs)
    hits, words = b.word_shares(_EN_WORDS, 1000)
    for i in range(len(docs)):
        split = b.norm(i)[:1000].split()
        assert (hits[i], words[i]) == (sum(w in _EN_WORDS for w in split), len(split)), docs[i]


def test_orjson_lines_match_json_dumps():
    import orjson
    text = "".join(map(chr, range(0, 0xD800))) + "\U0001F642 \u2028 \"q\" \\"
    assert b'{"text": ' + orjson.dumps(text) + b'}\n' == \
        (json.dumps({"text": text}, ensure_ascii=False) + "\n").encode("utf-8")


def test_leaked_quiz_pages_are_removed_and_the_rest_is_the_clean_corpus(tiny_world, tmp_path):
    """bench/contamination.py's leak: every held-out QA item on quiz pages of 5, twice, after
    the corpus. Decontamination removes every page and leaves the clean curation's corpus
    byte for byte; without it (no eval sets) every page is kept, since the copies are not
    duplicates of each other."""
    import runpy
    from pathlib import Path
    bench = runpy.run_path(str(Path(__file__).resolve().parents[1] / "bench" / "contamination.py"))
    leaked, pages = bench["leaked_corpus"](tiny_world, tmp_path, copies=2, per_page=5)
    runs = {"clean": (tiny_world / "corpus", tiny_world), "curated": (leaked, tiny_world), "leaked": (leaked, None)}
    reports = {name: curate(CurateConfig(input=str(src), out=str(tmp_path / name), world=str(w) if w else None,
                                         workers=0, progress=False)) for name, (src, w) in runs.items()}
    removed = {name: r["removed"]["contamination"]["docs"] for name, r in reports.items()}
    assert pages > 0 and removed["curated"] == removed["clean"] + pages and removed["leaked"] == 0
    assert reports["leaked"]["kept"]["docs"] == reports["clean"]["kept"]["docs"] + pages + removed["clean"]
    assert bench["corpus_sha"](tmp_path / "curated" / "corpus") == bench["corpus_sha"](tmp_path / "clean" / "corpus")
