"""The feedback store under concurrent writers, `gptlab feedback simulate` (resumable) on a
tiny world, import / export round trips, and the CLI verbs."""
from __future__ import annotations

import itertools
import json
import multiprocessing as mp
import os

import pytest
import torch

from gptlab.cli import main
from gptlab.feedback import FeedbackStore, prompt_key

WRITERS, PER_WRITER = 8, 50


pytestmark = pytest.mark.usefixtures("one_thread")


def _writer(args):
    path, w = args
    store = FeedbackStore(path)
    for i in range(PER_WRITER):
        store.add_ranked([{"role": "user", "content": f"w{w} q{i}"}],
                         [f"w{w} q{i} a", f"w{w} q{i} b", f"w{w} q{i} c"], [2, 0, 1],
                         source=f"writer{w}")
    return w


def test_store_loses_no_row_with_8_writers(tmp_path):
    path = str(tmp_path / "fb.db")
    FeedbackStore(path)   # create the schema once, as a server would at start-up
    with mp.get_context("fork").Pool(WRITERS) as pool:
        assert sorted(pool.map(_writer, [(path, w) for w in range(WRITERS)])) == list(range(WRITERS))
    store = FeedbackStore(path)
    n = WRITERS * PER_WRITER
    assert store.counts() == {"prompts": n, "responses": 3 * n, "rankings": n,
                              "comparisons": 0, "ratings": 0}
    rankings = store.rankings()
    assert {r["prompt"][0]["content"] for r in rankings} == \
        {f"w{w} q{i}" for w in range(WRITERS) for i in range(PER_WRITER)}
    # every ranking points at its own prompt's responses, best first as written
    assert all(r["responses"] == [f"{r['prompt'][0]['content']} {x}" for x in "cab"]
               for r in rankings)


# ----------------------------------------------------------------------------- simulate

@pytest.fixture(scope="module")
def world(tiny_world):
    return tiny_world


@pytest.fixture(scope="module")
def chat_model(tiny_tokenizer, tmp_path_factory):
    from gptlab.checkpoint import save_checkpoint
    from gptlab.model import GPT, ModelConfig
    from gptlab.tokenizer import Tokenizer
    tok = Tokenizer.load(tiny_tokenizer)
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=64,
                            num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                            max_position_embeddings=256))
    return save_checkpoint(tmp_path_factory.mktemp("m") / "sft", model, tok, meta={"stage": "sft"})


def _simulate(chat_model, world, db, n, *extra):
    return main(["feedback", "simulate", "--model", str(chat_model), "--prompts", str(world),
                 "--k", "3", "--n", str(n), "--noise", "0.25", "--db", str(db),
                 "--max-new-tokens", "8", "--no-progress", *extra])


def test_simulate_writes_k_answers_and_a_ranking_and_resumes(chat_model, world, tmp_path, capsys):
    from gptlab.judge import Judge
    db, clean = tmp_path / "fb.db", tmp_path / "clean.db"
    assert _simulate(chat_model, world, db, 4, "--clean-db", str(clean)) == 0
    assert "4 prompts ranked (12 pairs), 0 already" in capsys.readouterr().out
    store = FeedbackStore(db)
    assert store.counts()["prompts"] == 4 and store.counts()["responses"] == 12
    rankings = store.rankings()
    assert len(rankings) == 4 and all(len(r["responses"]) == 3 for r in rankings)
    assert all(r["meta"].get("split") == "train" for r in rankings)   # prompts/*.jsonl records
    # resume: the same 4 prompts are skipped, 2 more are added
    assert _simulate(chat_model, world, db, 6, "--clean-db", str(clean)) == 0
    assert "2 prompts ranked (6 pairs), 4 already" in capsys.readouterr().out
    assert store.counts()["rankings"] == 6
    assert len({prompt_key(r["prompt"]) for r in store.rankings()}) == 6
    # the clean copy has the same answers, ranked by the noiseless judge; equal judge
    # scores are stored as ties and are no preference pair
    judge = Judge.from_dir(world)
    n_ties = 0
    for r in FeedbackStore(clean).rankings():
        scores = [judge.score(r["prompt"], t, r["meta"]).score for t in r["responses"]]
        assert scores == sorted(scores, reverse=True)
        assert r["ties"] == [[i, j] for i in range(3) for j in range(i + 1, 3)
                             if scores[i] == scores[j]]
        n_ties += len(r["ties"])
    assert len(FeedbackStore(clean).pairs()) == 6 * 3 - n_ties == len(store.pairs())
    assert sorted(map(sorted, (r["responses"] for r in FeedbackStore(clean).rankings()))) == \
        sorted(map(sorted, (r["responses"] for r in store.rankings())))


def test_simulate_rejects_bad_prompts(chat_model, world, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n{"meta": {}}\n')
    assert main(["feedback", "simulate", "--model", str(chat_model), "--prompts", str(bad),
                 "--world", str(world), "--db", str(tmp_path / "x.db"), "--no-progress"]) == 2
    assert "bad.jsonl:2: " in capsys.readouterr().err   # file:line, as rl says it


# ----------------------------------------------------------------------------- import / export

def _trl_pairs(n: int) -> list[dict]:
    return [{"prompt": [{"role": "user", "content": f"question {i}?"}],
             "chosen": [{"role": "assistant", "content": f"good answer {i}"}],
             "rejected": [{"role": "assistant", "content": f"bad answer {i}"}]} for i in range(n)]


def _as_tuples(records):
    return sorted((json.dumps(r["prompt"]), r["chosen"][0]["content"], r["rejected"][0]["content"])
                  for r in records)


def test_import_export_round_trip_keeps_every_pair(tmp_path, capsys):
    src, db, out = tmp_path / "in.jsonl", tmp_path / "fb.db", tmp_path / "out.jsonl"
    pairs = _trl_pairs(7)
    src.write_text("".join(json.dumps(p) + "\n" for p in pairs))
    assert main(["feedback", "import", str(src), "--db", str(db)]) == 0
    assert "imported 7 pairs" in capsys.readouterr().out
    # a ranking of 3 adds C(3, 2) = 3 pairs, better first
    FeedbackStore(db).add_ranked([{"role": "user", "content": "rank?"}], ["x", "y", "z"], [1, 2, 0])
    assert main(["feedback", "export", "--db", str(db), "--out", str(out)]) == 0
    assert "wrote 10 pairs" in capsys.readouterr().out
    back = [json.loads(line) for line in out.read_text().splitlines()]
    ranked = [b for b in back if b["prompt"][0]["content"] == "rank?"]
    assert [(b["chosen"][0]["content"], b["rejected"][0]["content"]) for b in ranked] == \
        list(itertools.combinations(["y", "z", "x"], 2))
    assert _as_tuples([b for b in back if b not in ranked]) == _as_tuples(pairs)
    # and the exported file imports again into an equal set of pairs
    db2 = tmp_path / "fb2.db"
    assert main(["feedback", "import", str(out), "--db", str(db2)]) == 0
    assert main(["feedback", "stats", "--db", str(db2)]) == 0
    stats = json.loads(capsys.readouterr().out.split("\n", 1)[1])
    assert stats["pairs"] == 10 and stats["pairs_by_kind"] == {"import": 10}


def test_ranking_ties_are_validated(tmp_path):
    store = FeedbackStore(tmp_path / "fb.db")
    with pytest.raises(ValueError):
        store.add_ranked([{"role": "user", "content": "q"}], ["a", "b"], [0, 1], ties=[(0, 2)])
    with pytest.raises(ValueError):
        store.add_ranked([{"role": "user", "content": "q"}], ["a", "b"], [0, 0])
    assert store.counts()["prompts"] == 0   # nothing half-written


def test_import_reports_the_bad_line(tmp_path, capsys):
    src = tmp_path / "bad.jsonl"
    src.write_text(json.dumps(_trl_pairs(1)[0]) + "\n" + '{"prompt": "q", "chosen": 3}\n')
    assert main(["feedback", "import", str(src), "--db", str(tmp_path / "fb.db")]) == 2
    assert "bad.jsonl" in capsys.readouterr().err


def test_import_is_all_or_nothing_and_idempotent(tmp_path, capsys):
    """A bad line 6 leaves the store empty and names the line; the fixed file imports
    fully; importing it again (or a file repeating a pair) adds nothing."""
    db, src = str(tmp_path / "fb.db"), tmp_path / "in.jsonl"
    lines = [json.dumps(p) for p in _trl_pairs(5)]
    src.write_text("\n".join(lines + ['{"prompt": "q", "chosen": 3}']) + "\n")
    assert main(["feedback", "import", str(src), "--db", db]) == 2
    err = capsys.readouterr().err.strip()
    assert "in.jsonl: line 6" in err and len(err.splitlines()) == 1
    assert FeedbackStore(db).counts() == {"prompts": 0, "responses": 0, "rankings": 0,
                                          "comparisons": 0, "ratings": 0}
    src.write_text("\n".join(lines + [json.dumps(_trl_pairs(6)[5]), lines[0]]) + "\n")
    assert main(["feedback", "import", str(src), "--db", db]) == 0
    assert "imported 6 pairs" in capsys.readouterr().out     # the repeated line 7 counted once
    assert main(["feedback", "import", str(src), "--db", db, "--rater", "someone else"]) == 0
    assert "imported 0 pairs" in capsys.readouterr().out and FeedbackStore(db).counts()["comparisons"] == 6


def test_a_store_from_before_content_hashes_still_opens_and_dedupes(tmp_path):
    """An older store (no comparisons.content_hash; a pair imported twice by the old,
    non-idempotent import) gets the column and its hashes on open, keeps its rows, and a
    re-import of the same file adds nothing."""
    import sqlite3

    db, src = tmp_path / "old.db", tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(p) + "\n" for p in _trl_pairs(3)))
    FeedbackStore(db).import_file(src)
    con = sqlite3.connect(db)   # turn it into what the previous version wrote
    con.executescript("DROP INDEX ix_comparisons_content_hash;"
                      "ALTER TABLE comparisons DROP COLUMN content_hash;"
                      "INSERT INTO comparisons (prompt_id, chosen_id, rejected_id, rater, kind, created_at)"
                      " SELECT prompt_id, chosen_id, rejected_id, rater, kind, created_at"
                      " FROM comparisons WHERE id = 1;")
    con.close()
    store = FeedbackStore(db)
    assert store.counts()["comparisons"] == 4 and len(store.pairs()) == 4
    assert store.import_file(src) == 0
    assert store.counts()["comparisons"] == 4
    con = sqlite3.connect(db)
    assert con.execute("SELECT count(content_hash), count(*) FROM comparisons").fetchone() == (3, 4)
    con.close()
    store.add_comparison(1, 1, 2, rater="bob")   # votes carry no hash: the same vote twice is fine
    store.add_comparison(1, 1, 2, rater="bob")


def _db_fds(path: str) -> int:
    """Open file descriptors of this process on the database file (Linux /proc)."""
    real = os.path.realpath(path)
    fds = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            fds += os.readlink(f"/proc/self/fd/{fd}") == real
        except OSError:
            pass
    return fds


def _child_fds(path):
    return _db_fds(path)


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs Linux /proc")
def test_a_forked_child_inherits_no_descriptor_of_the_database(tmp_path):
    """A child that inherits its parent's SQLite descriptor closes it when it frees the
    connection, and with it the POSIX locks of its own connections: writes get lost."""
    path = str(tmp_path / "fb.db")
    store = FeedbackStore(path)
    store.add_ranked([{"role": "user", "content": "q"}], ["a", "b"], [1, 0])  # a pooled connection
    assert _db_fds(path) >= 1
    with mp.get_context("fork").Pool(1) as pool:
        assert pool.apply(_child_fds, (path,)) == 0
    assert store.counts()["rankings"] == 1      # the parent reconnects after the fork
