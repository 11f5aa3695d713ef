"""gptlab data curate on a miniworld corpus with planted duplicates, near-duplicates, junk,
PII and leaked eval items: recall and precision per rule, the clean documents it spares,
its files, and its errors."""
from __future__ import annotations

import json

import pytest

from gptlab.cli import main
from gptlab.data.curate import (REASONS, CurateConfig, curate, planted_corpus, score_planted,
                                scrub_pii)
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
