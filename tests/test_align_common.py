"""gptlab.align.common: held-out sampling, win rate, rewards by name, token helpers."""
from __future__ import annotations

import collections

import pytest
import torch

from gptlab.align import common as C
from gptlab.align.reward import load_reward


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def world(tiny_world):
    return tiny_world


@pytest.fixture(scope="module")
def judge(world):
    from gptlab.judge import Judge
    return Judge.from_dir(world)


@pytest.fixture(scope="module")
def tok(tiny_tokenizer):
    from gptlab.tokenizer import Tokenizer
    return Tokenizer.load(tiny_tokenizer)


@pytest.fixture(scope="module")
def model(tok):
    from gptlab.model import GPT, ModelConfig
    torch.manual_seed(0)
    return GPT(ModelConfig(vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=64,
                           num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                           max_position_embeddings=512)).eval()


def test_heldout_records_balanced_and_seeded(world):
    recs = C.heldout_records(world, n_per_category=3, seed=1)
    by_cat = collections.Counter(r["meta"]["kind"] for r in recs)
    assert set(by_cat) <= set(C.chat_categories()) and len(by_cat) >= 8
    assert all(n == 3 for n in by_cat.values()) or min(by_cat.values()) <= 3
    assert all(r.get("messages") for r in recs)
    assert recs == C.heldout_records(world, n_per_category=3, seed=1)
    assert recs != C.heldout_records(world, n_per_category=3, seed=2)
    only = C.heldout_records(world, n_per_category=2, categories=["qa"])
    assert len(only) == 2 and {r["meta"]["kind"] for r in only} == {"qa"}
    with pytest.raises(FileNotFoundError):
        C.heldout_records(world, categories=["no_such_category"])


def test_win_rate_counts_ties_as_half(world, judge):
    recs = C.heldout_records(world, n_per_category=2, categories=["qa", "harmful"])
    good = [r["reference"] for r in recs]
    bad = ["banana banana banana banana"] * len(recs)
    r = C.win_rate(good, bad, recs, judge)
    assert r["n"] == len(recs) and r["wins"] + r["ties"] + r["losses"] == r["n"]
    assert r["wins"] == r["n"] and r["win_rate"] == 1.0 and r["mean_policy"] > r["mean_ref"]
    flipped = C.win_rate(bad, good, recs, judge)
    assert flipped["win_rate"] == 0.0 and flipped["losses"] == r["n"]
    same = C.win_rate(good, good, recs, judge)
    assert same["ties"] == same["n"] and same["win_rate"] == 0.5
    assert same["win_rate_no_ties"] is None and r["win_rate_no_ties"] == 1.0
    mixed = C.win_rate(good[:2] + bad[2:], good, recs, judge)   # 2 ties, the rest lost
    assert mixed["win_rate"] == pytest.approx(1.0 / len(recs))
    assert mixed["win_rate_no_ties"] == 0.0
    with pytest.raises(ValueError):
        C.win_rate(good[:-1], bad, recs, judge)


def test_load_reward_judge_and_verifiable(world):
    recs = C.heldout_records(world, n_per_category=2, categories=["qa"])
    good, bad = recs[0]["reference"], "banana banana banana banana"
    judge_r = load_reward("judge", world)
    ver = load_reward("verifiable", world)
    assert ver.score(recs[:1] * 2, [good, bad]) == [1.0, 0.0]
    s = judge_r.score(recs[:1] * 2, [good, bad])
    assert 0.0 <= s[1] < 0.4 <= s[0] <= 1.0   # a hard failure scores below 0.4
    # a bare message list works too (the judge infers the meta)
    assert len(judge_r.score([recs[0]["messages"]], [good])) == 1
    with pytest.raises(ValueError):
        load_reward("judge")


def test_render_response_masks_the_reply_only(tok):
    messages = [{"role": "user", "content": "where does alice live?"},
                {"role": "assistant", "content": "in lima."},
                {"role": "user", "content": "and bruno?"}]
    ids, mask = C.render_response(tok, messages, "bruno lives in oslo.")
    masked = [i for i, m in zip(ids, mask) if m]
    assert tok.decode(masked) == "bruno lives in oslo.<|im_end|>"
    assert ids[-1] == tok.im_end_id
    short_ids, short_mask = C.render_response(tok, messages, "bruno lives in oslo.", max_len=12)
    assert short_ids == ids[-12:] and short_mask == mask[-12:]


@torch.no_grad()
def _naive_logprob(model, row, mask_row):
    logits = model(torch.tensor([row]))[0].log_softmax(-1)
    return sum(float(logits[t - 1, row[t]]) for t in range(1, len(row)) if mask_row[t])


def test_sequence_logprobs_matches_naive_and_ignores_padding(model):
    rows = [[5, 9, 11, 40, 7], [3, 8, 2], [10, 20, 30, 40, 50, 60, 70]]
    masks = [[0, 0, 1, 1, 1], [0, 1, 1], [0, 0, 0, 1, 0, 1, 1]]
    ids, mask = C.pad_batch(rows, pad_id=0, masks=masks)
    assert ids.shape == (3, 7) and mask[1].tolist() == [0, 1, 1, 0, 0, 0, 0]
    with torch.no_grad():
        got = C.sequence_logprobs(model, ids, mask)
    want = [_naive_logprob(model, r, m) for r, m in zip(rows, masks)]
    assert got.tolist() == pytest.approx(want, abs=1e-4)
    out = C.sequence_logprobs(model, ids, mask).sum()
    out.backward()   # differentiable (used as a loss by DPO / PPO)
    assert model.lm_head.weight.grad is not None
    model.zero_grad(set_to_none=True)
    with pytest.raises(ValueError):
        C.pad_batch([[1, 2]], 0, masks=[[1]])


def test_generate_answers_batched_equals_one_by_one(world, model, tok):
    recs = C.heldout_records(world, n_per_category=1, categories=["qa", "system", "multiturn"])
    batched = C.generate_answers(model, tok, recs, max_new_tokens=6, batch_size=3)
    single = [C.generate_answers(model, tok, [r], max_new_tokens=6, batch_size=1)[0] for r in recs]
    assert batched == single and len(batched) == len(recs)
    a = C.generate_answers(model, tok, recs, max_new_tokens=6, temperature=1.0, seed=3)
    b = C.generate_answers(model, tok, recs, max_new_tokens=6, temperature=1.0, seed=3)
    assert a == b


def test_win_rate_tiebroken_decides_only_greedy_ties(world, judge, model, tok):
    from types import SimpleNamespace
    from gptlab.model import GPT
    recs = C.heldout_records(world, n_per_category=2, categories=["qa", "system", "benign_edgy"])
    ref = SimpleNamespace(model=model, tokenizer=tok)
    same = C.win_rate_tiebroken(ref, ref, recs, judge, samples=2, max_new_tokens=6)
    # one model against itself: same greedy answers, same seeded samples -> nothing decided
    assert same["ties"] == same["n"] == len(recs) and same["tiebreak"]["greedy_ties_decided"] == 0
    torch.manual_seed(1)
    other = SimpleNamespace(model=GPT(model.config).eval(), tokenizer=tok)
    r = C.win_rate_tiebroken(other, ref, recs, judge, samples=3, max_new_tokens=6)
    g = r["greedy"]
    assert r["wins"] + r["ties"] + r["losses"] == r["n"] == g["n"]
    # sampling only ever turns greedy ties into decisions: greedy wins and losses stay
    assert r["wins"] >= g["wins"] and r["losses"] >= g["losses"] and r["ties"] <= g["ties"]
    assert r["tiebreak"]["greedy_ties_decided"] == g["ties"] - r["ties"]
    assert r["win_rate"] == pytest.approx((r["wins"] + 0.5 * r["ties"]) / r["n"])


def test_merge_tiebreak_turns_ties_into_decisions_by_sign():
    greedy = {"wins": 3, "ties": 4, "losses": 1, "n": 8}
    r = C.merge_tiebreak(greedy, [0.5, -0.2, 0.0, 1e-12], samples=2, temperature=0.8)
    assert (r["wins"], r["ties"], r["losses"]) == (4, 2, 2)
    assert r["win_rate"] == pytest.approx(5 / 8) and r["win_rate_no_ties"] == pytest.approx(4 / 6)
    assert r["tiebreak"]["greedy_ties_decided"] == 2 and r["greedy"] is greedy
    with pytest.raises(ValueError, match="one score difference per greedy tie"):
        C.merge_tiebreak(greedy, [0.1], samples=2, temperature=0.8)


def test_load_prompt_records_cuts_references_keeps_train_and_names_bad_lines(tmp_path):
    import json

    world = tmp_path / "world"
    (world / "prompts").mkdir(parents=True)
    user = lambda text: {"role": "user", "content": text}  # noqa: E731
    rows = [{"messages": [user("a")], "meta": {"split": "train"}},
            {"messages": [user("b"), {"role": "assistant", "content": "ref"}], "meta": {"split": "eval"}},
            {"messages": [user("c")]}]
    (world / "prompts" / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    recs = C.load_prompt_records(world)
    assert [r["messages"] for r in recs] == [[user("a")], [user("b")], [user("c")]]
    assert recs[2]["meta"] == {}
    assert [r["messages"][0]["content"] for r in C.load_prompt_records(world, train_only=True)] == ["a", "c"]
    assert len(C.load_prompt_records(world / "prompts")) == 3          # a plain dir of jsonl files
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(rows[0]) + "\n" + json.dumps({"messages": [{"role": "system", "content": "s"}]}) + "\n")
    with pytest.raises(ValueError, match="bad.jsonl:2: the prompt must end with a user message"):
        C.load_prompt_records(bad)
    bad.write_text('{"meta": {}}\n')
    with pytest.raises(ValueError, match="bad.jsonl:1: .*non-empty 'messages'"):
        C.load_prompt_records(bad)
    with pytest.raises(FileNotFoundError, match="no such file"):
        C.load_prompt_records(tmp_path / "missing")
