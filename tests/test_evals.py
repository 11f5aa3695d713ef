"""gptlab.evals: metric math on hand-made inputs, the aggregation code path with stand-in
responders, and a full (tiny, untrained) model run through every suite and the CLI."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from gptlab.fileio import read_jsonl
from gptlab.judge import Verdict
from gptlab.evals import metrics as M
from gptlab.evals import bpb, calibration
from gptlab.evals import runner as R
from gptlab.evals import tasks as T

CHAT_RATES = ["qa_accuracy", "multiturn_accuracy", "system_compliance", "conflict_system_wins",
              "harmful_refusal", "over_refusal", "premise_correction", "pushback_hold",
              "pushback_admit", "idk_rate", "arithmetic_accuracy", "pass_rate"]


# ----------------------------------------------------------------------------- fixtures

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def world(tiny_world):
    return tiny_world


@pytest.fixture(scope="module")
def tokenizer(world):
    from gptlab.data.loaders import iter_texts
    from gptlab.tokenizer import train_tokenizer
    return train_tokenizer(list(iter_texts(world / "corpus")), vocab_size=512, progress=False)


def _tiny_gpt(vocab: int, seed: int = 0):
    from gptlab.model import GPT, ModelConfig
    torch.manual_seed(seed)
    return GPT(ModelConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64,
                           num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                           max_position_embeddings=512))


@pytest.fixture(scope="module")
def models(tmp_path_factory, tokenizer):
    """The same untrained weights saved twice: as a chat (sft) and a base (pretrain) model."""
    from gptlab.checkpoint import save_checkpoint
    root = tmp_path_factory.mktemp("models")
    model = _tiny_gpt(tokenizer.vocab_size)
    chat = save_checkpoint(root / "chat", model, tokenizer, meta={"stage": "sft"})
    base = save_checkpoint(root / "base", model, tokenizer, meta={"stage": "pretrain"})
    return chat, base


def perfect(records, **_):
    return [T.reference(r) for r in records]


def refuse_everything(records, **_):
    return ["Sorry, I can't help with that."] * len(records)


# ----------------------------------------------------------------------------- metric math

def test_ece_known_answer():
    # 10 items at confidence 0.95, all right (gap 0.05); 10 at 0.25, half right (gap 0.25)
    conf = [0.95] * 10 + [0.25] * 10
    correct = [True] * 10 + [True, False] * 5
    assert M.expected_calibration_error(conf, correct) == pytest.approx(0.5 * 0.05 + 0.5 * 0.25)
    # perfectly calibrated bins give 0; a confident wrong model gives its confidence
    assert M.expected_calibration_error([0.5] * 4, [True, False, True, False]) == pytest.approx(0)
    assert M.expected_calibration_error([0.9] * 3, [False] * 3) == pytest.approx(0.9)


def test_reliability_bins_edges():
    bins = M.reliability_bins([0.0, 0.1, 0.1000001, 1.0], [True, False, True, True])
    assert [b.count for b in bins] == [2, 1, 0, 0, 0, 0, 0, 0, 0, 1]
    assert bins[0].accuracy == 0.5 and bins[2].accuracy is None
    with pytest.raises(ValueError):
        M.reliability_bins([1.5], [True])


def test_calibration_metrics_by_hand():
    probs = [[0.7, 0.1, 0.1, 0.1], [0.25, 0.25, 0.4, 0.1]]
    out = M.calibration_metrics(probs, [0, 1])
    assert out["mc_accuracy"] == 0.5
    assert out["mc_confidence"] == pytest.approx(0.55)
    brier = ((0.3 ** 2 + 3 * 0.01) + (0.0625 + 0.5625 + 0.16 + 0.01)) / 2
    assert out["mc_brier"] == pytest.approx(brier)
    # item 1 in bin (0.6, 0.7] right, item 2 in (0.3, 0.4] wrong
    assert out["ece"] == pytest.approx(0.5 * 0.3 + 0.5 * 0.4)


def test_percentile_and_tail_stats():
    xs = [i / 100 for i in range(101)]
    assert M.percentile(xs, 50) == pytest.approx(0.5)
    assert M.percentile(xs, 5) == pytest.approx(0.05)
    rng = np.random.default_rng(0)
    ys = rng.random(37).tolist()
    for q in (0, 5, 50, 95, 100):
        assert M.percentile(ys, q) == pytest.approx(float(np.percentile(ys, q)))
    stats = M.tail_stats([1.0, 1.0, 0.4, 1.0, 0.0, 0.7], per_prompt=[[1.0, 1.0, 0.4], [1.0, 0.0, 0.7]])
    assert stats["tail_median"] == pytest.approx(0.85)
    assert stats["tail_p5"] == pytest.approx(0.1)       # 0 + 0.25 * (0.4 - 0)
    assert stats["tail_worst_of_k"] == pytest.approx(0.2)
    assert stats["tail_mean"] == pytest.approx(4.1 / 6)


def test_bits_per_byte_of_uniform_logits():
    V, seq_len = 300, 64
    model = _tiny_gpt(V)
    with torch.no_grad():
        model.lm_head.weight.zero_()            # logits all zero: the uniform distribution
    stream = np.random.default_rng(0).integers(0, V, 1000)
    nats, n = bpb.stream_nats(model, stream, seq_len, batch_size=4)
    assert n == 999
    assert nats == pytest.approx(999 * math.log(V), rel=1e-5)
    res = bpb.bpb_of_stream(model, stream, n_bytes=1234, seq_len=seq_len, batch_size=3)
    assert res["bpb"] == pytest.approx(math.log2(V) * 999 / 1234, rel=1e-5)
    assert M.bits_per_byte(math.log(2) * 8, 8) == pytest.approx(1.0)


def test_bpb_streams_from_shards_and_text_agree(tmp_path, world, tokenizer):
    from gptlab.data.loaders import build_shards
    shards = tmp_path / "shards"
    build_shards(world / "corpus", tokenizer, shards, val_docs=20, progress=False)
    s1, b1 = bpb.bpb_stream_from_shards(shards, tokenizer, max_tokens=10**9)
    s2, b2 = bpb.bpb_stream_from_text(world / "corpus", tokenizer, 10**9, max_docs=20)
    assert s1.tolist() == s2.tolist() and b1 == b2
    assert b1 == json.loads((shards / "shards.json").read_text())["splits"]["val"]["bytes"]
    # a token cap cuts after a whole document (the stream ends with eos)
    s3, b3 = bpb.bpb_stream_from_shards(shards, tokenizer, max_tokens=len(s1) // 2)
    assert len(s3) <= len(s1) // 2 + 1 and s3[-1] == tokenizer.eos_id and b3 < b1
    # the lineage lookup: via meta.data.shards, through a parent, not with another tokenizer
    parent = tmp_path / "pre"
    parent.mkdir()
    (parent / "gptlab.json").write_text(json.dumps({"stage": "pretrain", "data": {"shards": str(shards)}}))
    assert bpb.find_val_shards(tmp_path / "x" / "y", {"parent": str(parent)}, tokenizer) == shards
    from gptlab.tokenizer import train_tokenizer
    other = train_tokenizer(["something else entirely"] * 50, vocab_size=300, progress=False)
    assert bpb.find_val_shards(tmp_path / "x" / "y", {"parent": str(parent)}, other) is None


def test_letter_probs_from_a_next_token_distribution(tokenizer):
    ids = calibration.letter_token_ids(tokenizer)
    assert len(ids) == 4 and all(ids) and len({i for x in ids for i in x}) == sum(map(len, ids))
    probs = torch.zeros(2, tokenizer.vocab_size)
    probs[0, ids[2][0]] = 0.3                 # C: all the letter mass
    probs[0, 5] = 0.7                         # not a letter
    probs[1, ids[0][0]], probs[1, ids[1][-1]] = 0.1, 0.1
    norm, mass = calibration.letter_probs(probs, ids)
    assert norm[0] == pytest.approx([0, 0, 1, 0]) and mass[0] == pytest.approx(0.3)
    assert norm[1] == pytest.approx([0.5, 0.5, 0, 0]) and mass[1] == pytest.approx(0.2)


def test_mc_items_from_the_kb(world):
    kb = json.loads((world / "kb.json").read_text())
    items = T.mc_items(kb, seed=0)
    held = set(kb["heldout"]["countries"])
    by_code = {c["code"]: c for c in kb["countries"]}
    assert items and all(it["subject"] in held for it in items)
    field = {"capital": "capital", "continent": "continent", "currency": "currency_name"}
    for it in items:
        assert len(set(it["choices"])) == 4
        assert it["choices"][it["answer"]] == by_code[it["subject"]][field[it["relation"]]]
    assert len({it["answer"] for it in items}) == 4        # the right letter moves around
    assert T.mc_items(kb, seed=0) == items                   # seeded
    shots = T.mc_items(kb, heldout=False)[:2]
    assert all(s["subject"] not in held for s in shots)
    assert T.mc_base_prompt(items[0], shots).endswith("Answer:")


# ----------------------------------------------------------------------------- aggregation

def V(score=1.0, **checks):
    return Verdict(score, dict(checks))


def rec(kind, **meta):
    return {"messages": [{"role": "user", "content": "q"}], "meta": {"kind": kind, **meta}}


def test_aggregate_rates_from_given_verdicts():
    ok = dict(nonempty=True, fact=True)
    records, verdicts = [], []

    def add(kind, verdict, **meta):
        records.append(rec(kind, **meta))
        verdicts.append(verdict)

    for fact in (True, True, False, True):
        add("qa", V(1.0 if fact else 0.3, nonempty=True, fact=fact, no_refusal=True))
    add("harmful", V(refuses=True), harmful=True, category="fraud")
    add("harmful", V(0.3, refuses=False), harmful=True, category="self-harm")
    for refused in (False, False, False, True):
        add("benign_edgy", V(no_refusal=not refused))
    add("system", V(0.8, json=True, case=False, **ok))
    add("system", V(1.0, json=True, case=True, **ok))
    add("system", V(1.0, **ok))                      # no constraint: not counted for compliance
    add("conflict", V(0.5, **{"max_words": True, "max_words#2": False}, **ok))
    add("false_premise", V(0.3, corrects_premise=True, nonempty=True, fact=False))
    add("false_premise", V(1.0, corrects_premise=True, **ok))
    add("pushback_admit", V(0.7, admits_mistake=False, **ok))
    add("unknown_entity", V(admits_unknown=True, no_invention=True))
    agg = T.aggregate(records, verdicts)
    m, n = agg["metrics"], agg["counts"]
    assert m["qa_accuracy"] == 0.75 and n["qa_accuracy"] == 4
    assert m["harmful_refusal"] == 0.5
    assert m["over_refusal"] == 0.25
    assert m["system_compliance"] == 0.5 and n["system_compliance"] == 2
    assert m["system_compliance/json"] == 1.0 and m["system_compliance/case"] == 0.5
    assert m["conflict_system_wins"] == 0.0 and m["conflict_system_wins/max_words"] == 0.0
    assert m["premise_correction"] == 0.5
    assert m["pushback_admit"] == 0.0
    assert m["idk_rate"] == 1.0
    assert m["score/qa"] == pytest.approx((1 + 1 + 0.3 + 1) / 4)
    assert agg["harmful_by_category"] == {"fraud": 1.0, "self-harm": 0.0}
    assert m["pass_rate"] == pytest.approx(rate_of_passes(verdicts))
    with pytest.raises(ValueError):
        T.aggregate(records, verdicts[:-1])


def rate_of_passes(verdicts):
    return sum(not v.hard_failed for v in verdicts) / len(verdicts)


def test_perfect_responder_scores_full_marks(world):
    res = R.evaluate(None, world, ["chat", "tail"], responder=perfect, tail_k=2,
                     tail_prompts=2, progress=False)
    m = res["metrics"]
    for name in CHAT_RATES:
        assert m[name] == (0.0 if name == "over_refusal" else 1.0), name
    assert m["judge_score"] > 0.99 and m["tail_median"] == 1.0 and m["tail_p5"] > 0.99
    assert set(res["skipped"]) == set() and res["model_kind"] == "chat"
    base = R.evaluate(None, world, ["world", "calibration"], kind="base", responder=perfect,
                      progress=False)
    assert base["metrics"]["fact_accuracy"] == 1.0
    assert "calibration" in base["skipped"]            # needs logits, a responder has none


def test_refusing_responder_refuses_all_and_over_refuses_all(world, tmp_path):
    m = R.evaluate(None, world, ["chat"], responder=refuse_everything, progress=False,
                   samples=tmp_path)["metrics"]
    assert m["harmful_refusal"] == 1.0 and m["over_refusal"] == 1.0
    assert m["qa_accuracy"] == 0.0 and m["idk_rate"] == 0.0
    rows = read_jsonl(tmp_path / "chat.jsonl")        # --samples: the reply and verdict of each item
    assert {r["meta"]["kind"] for r in rows} >= {"harmful", "qa"}
    assert all(r["response"] == refuse_everything([r])[0] for r in rows)
    assert all(not r["outcome"]["hard_failed"] for r in rows if r["meta"]["kind"] == "harmful")
    assert all(r["outcome"]["hard_failed"] for r in rows if r["meta"]["kind"] == "qa")


# ----------------------------------------------------------------------------- a real model

def test_tiny_model_every_suite(models, world):
    chat, _ = models
    res = R.evaluate(chat, world, ["all"], limit=2, tail_k=2, tail_prompts=1,
                     max_new_tokens=12, progress=False)
    m = res["metrics"]
    assert res["model_kind"] == "chat" and res["skipped"] == {}
    for name in CHAT_RATES + ["ece", "mc_accuracy", "mc_confidence", "mc_letter_mass"]:
        assert 0.0 <= m[name] <= 1.0, name
    for name in ["judge_score", "tail_median", "tail_p5", "tail_mean", "tail_worst_of_k"]:
        assert 0.0 <= m[name] <= 1.0, name
    assert m["tail_p5"] <= m["tail_median"]
    assert 0 < m["bpb"] < 20 and 0 <= m["mc_brier"] <= 2
    assert res["counts"]["tail_median"] == 2 * len(T.CHAT_KINDS)
    assert all(res["suites"][s]["max_new_tokens"][k] <= 12
               for s in ("chat",) for k in res["suites"][s]["max_new_tokens"])
    saved = json.loads((chat / "eval.json").read_text())
    assert saved["metrics"] == pytest.approx(m)
    assert (chat / "eval.md").read_text().startswith("### eval:")
    assert (chat / R.RELIABILITY_PNG).read_bytes()[:4] == b"\x89PNG"
    assert "gptlab eval --model" in saved["command"]


def test_tail_is_seeded(models, world):
    chat, _ = models
    kw = dict(limit=1, tail_k=3, tail_prompts=1, max_new_tokens=6, progress=False, write=False)
    a = R.evaluate(chat, world, ["tail"], **kw)["metrics"]
    b = R.evaluate(chat, world, ["tail"], **kw)["metrics"]
    assert a == b


def test_base_model_through_the_cli_and_merge(models, world, tmp_path, capsys):
    from gptlab.cli import main
    _, base = models
    out = tmp_path / "base_eval.json"
    argv = ["eval", "--model", str(base), "--world", str(world), "--limit", "3",
            "--max-new-tokens", "8", "--no-progress", "--out", str(out)]
    assert main(argv + ["--suite", "world", "--suite", "bpb"]) == 0
    assert "fact_accuracy" in capsys.readouterr().out
    assert main(argv + ["--suite", "calibration"]) == 0      # merged into the same file
    res = json.loads(out.read_text())
    assert res["model_kind"] == "base"
    assert {"fact_accuracy", "bpb", "ece", "score/fact_completion"} <= set(res["metrics"])
    assert 0 <= res["metrics"]["fact_accuracy"] <= 1
    assert len(res["commands"]) == 2 and "--suite calibration" in res["command"]
    # --kind overrides the detection
    res2 = R.evaluate(base, world, ["world"], limit=1, kind="chat", max_new_tokens=4,
                      progress=False, write=False)
    assert res2["model_kind"] == "chat" and "qa_accuracy" in res2["metrics"]


def test_compare_prints_both_columns_and_the_difference(tmp_path, capsys):
    from gptlab.cli import main
    a = {"model": "a", "metrics": {"qa_accuracy": 0.5, "bpb": 1.2, "over_refusal": 0.1}}
    b = {"model": "b", "metrics": {"qa_accuracy": 0.625, "bpb": 1.1, "over_refusal": 0.2,
                                   "ece": 0.05}}
    for name, d in (("A", a), ("B", b)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "eval.json").write_text(json.dumps(d))
    assert main(["eval", "--compare", str(tmp_path / "A"), str(tmp_path / "B")]) == 0
    text = capsys.readouterr().out
    header = text.splitlines()[0]
    assert "A" in header and "B" in header and "difference" in header
    row = next(line for line in text.splitlines() if line.startswith("| qa_accuracy"))
    assert "50.0%" in row and "62.5%" in row and "+12.5 pp +" in row
    assert "-0.1000 +" in next(line for line in text.splitlines() if line.startswith("| bpb"))
    assert "+10.0 pp -" in next(line for line in text.splitlines() if line.startswith("| over_refusal"))
    assert "| ece (lower is better) | - | 5.0% | - |" in text


def test_suites_and_kind_detection():
    assert R.resolve_suites(None, "base") == ["bpb", "fact", "calibration"]
    assert R.resolve_suites(["world"], "chat") == ["chat"]
    assert R.resolve_suites(["bpb", "world", "bpb"], "base") == ["bpb", "fact"]
    assert R.resolve_suites(["all"], "chat") == ["bpb", "chat", "tail", "calibration"]
    with pytest.raises(ValueError):
        R.resolve_suites(["nope"], "chat")

    class Tok:
        config = {"chat_template": "{{ x }}"}
    assert R.detect_kind({"stage": "pretrain"}, Tok()) == "base"
    assert R.detect_kind({"stage": "sft"}, None) == "chat"
    assert R.detect_kind({}, Tok()) == "chat"
    Tok.config = {}
    assert R.detect_kind({}, Tok()) == "base"
