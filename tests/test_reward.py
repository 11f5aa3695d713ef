"""gptlab.align.reward: the Bradley-Terry loss by hand, a tiny reward model that learns a
synthetic preference, its directory round trip and normalization, best-of-N."""
from __future__ import annotations

import json
import math
import random

import pytest
import torch

from gptlab.align import reward as R


pytestmark = pytest.mark.usefixtures("one_thread")


def _nlsig(x: float) -> float:
    return -math.log(1 / (1 + math.exp(-x)))


def test_ranking_loss_by_hand():
    # K = 3, rewards [2, 1, 0] best first: pairs (0,1), (0,2), (1,2) -> margins 1, 2, 1
    got = R.ranking_loss(torch.tensor([2.0, 1.0, 0.0]))
    assert float(got) == pytest.approx((_nlsig(1) + _nlsig(2) + _nlsig(1)) / 3, rel=1e-6)
    # a wrongly ordered pair costs more than a right one
    assert float(R.ranking_loss(torch.tensor([0.0, 1.0]))) == pytest.approx(_nlsig(-1), rel=1e-6)
    assert R.pair_matrix(4).sum() == math.comb(4, 2)
    # a tie between positions 1 and 2 is no preference: only (0,1) and (0,2) count
    tied = R.ranking_loss(torch.tensor([2.0, 1.0, 0.0]), ties=[(1, 2)])
    assert float(tied) == pytest.approx((_nlsig(1) + _nlsig(2)) / 2, rel=1e-6)


def test_batch_loss_weighs_each_ranking_equally():
    r = torch.tensor([2.0, 1.0, 0.0, 0.5, 3.0])        # a K=3 ranking, then a K=2 one
    got = R.batch_ranking_loss(r, [3, 2])
    k3 = (_nlsig(1) + _nlsig(2) + _nlsig(1)) / 3
    assert float(got) == pytest.approx((k3 + _nlsig(-2.5)) / 2, rel=1e-6)
    # gradient: pushes the better response up and the worse down
    r.requires_grad_(True)
    R.batch_ranking_loss(r, [3, 2]).backward()
    assert r.grad[0] < 0 < r.grad[2] and r.grad[3] < 0 < r.grad[4]


def test_pair_accuracy_counts_ties_half():
    g = R.Group([], {}, ["a", "b", "c"], [[1], [2], [3]])
    assert R.pair_accuracy([g], [[3.0, 2.0, 1.0]]) == 1.0
    assert R.pair_accuracy([g], [[1.0, 2.0, 3.0]]) == 0.0
    assert R.pair_accuracy([g], [[1.0, 1.0, 0.0]]) == pytest.approx((0.5 + 1 + 1) / 3)
    g.ties = ((0, 1),)
    assert g.pairs() == [(0, 2), (1, 2)] and R.pair_accuracy([g], [[1.0, 2.0, 0.0]]) == 1.0


# ----------------------------------------------------------------------------- training

WORD = "cheese"


@pytest.fixture(scope="module")
def init_ckpt(tiny_tokenizer, tmp_path_factory):
    """An untrained 1-layer model with the tiny tokenizer, saved as a chat checkpoint."""
    from gptlab.checkpoint import save_checkpoint
    from gptlab.model import GPT, ModelConfig
    from gptlab.tokenizer import Tokenizer
    tok = Tokenizer.load(tiny_tokenizer)
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=64,
                            num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                            max_position_embeddings=128))
    return save_checkpoint(tmp_path_factory.mktemp("init") / "sft", model, tok, meta={"stage": "sft"})


def _synthetic_store(path, n_prompts: int, seed: int = 0):
    """Rankings where the response with more mentions of WORD is better (2 > 1 > 0)."""
    from conftest import CITIES, FOODS, NAMES

    from gptlab.feedback import FeedbackStore
    store = FeedbackStore(path)
    rng = random.Random(seed)
    words = NAMES + CITIES + [f for f in FOODS if f != WORD]
    for _ in range(n_prompts):
        prompt = [{"role": "user", "content": f"tell me about {rng.choice(NAMES)}"}]
        responses = []
        for count in (2, 1, 0):
            w = [rng.choice(words) for _ in range(rng.randint(3, 7))]
            for _ in range(count):
                w.insert(rng.randint(0, len(w)), WORD)
            responses.append(" ".join(w))
        order = [0, 1, 2]
        rng.shuffle(order)   # stored in a random order, ranked best first
        store.add_ranked(prompt, [responses[i] for i in order],
                         [order.index(0), order.index(1), order.index(2)], source="synthetic")
    return store


@pytest.fixture(scope="module")
def trained(init_ckpt, tmp_path_factory):
    root = tmp_path_factory.mktemp("rm")
    _synthetic_store(root / "fb.db", 120)
    cfg = R.RewardConfig(init=str(init_ckpt), db=str(root / "fb.db"), out=str(root / "rm"),
                         epochs=3, lr=5e-3, batch_size=8, val_frac=0.1, progress=False)
    return R.train_reward(cfg), root


def test_reward_model_learns_contains_word(trained):
    out, _ = trained
    info = json.loads((out / R.INFO_FILE).read_text())
    # split by prompt: 16 distinct prompts ("tell me about NAME"), each ranking 3 pairs
    assert info["val_pairs"] + info["train_pairs"] == 360 and info["val_pairs"] >= 30
    assert info["val_accuracy"] >= 0.9
    curve = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert curve[0]["step"] == 0 and curve[-1]["loss"] < curve[1]["loss"]


def test_reward_dir_loads_and_normalizes(trained):
    from gptlab.checkpoint import load_checkpoint
    from gptlab.feedback import FeedbackStore
    out, root = trained
    rm = R.RewardModel.load(out)
    assert load_checkpoint(out).meta["stage"] == "reward"      # the backbone is a checkpoint
    rankings = FeedbackStore(root / "fb.db").rankings()
    prompts = [r["prompt"] for r in rankings for _ in r["responses"]]
    texts = [t for r in rankings for t in r["responses"]]
    scores = torch.tensor(rm.score(prompts, texts))
    # normalized on the stored responses: mean 0, std 1 (the held-out 10% shift it a little)
    assert abs(float(scores.mean())) < 0.2 and 0.8 < float(scores.std()) < 1.2
    p = [{"role": "user", "content": "tell me about alice"}]
    hi, lo = rm.score([p, p], [f"alice {WORD} lima {WORD}", "alice lima rice"])
    assert hi > lo
    with pytest.raises(FileNotFoundError):
        R.RewardModel.load(root)


class LongestWins:
    """A reward that prefers longer answers."""

    def score(self, prompts, responses):
        return [float(len(r)) for r in responses]


def test_best_of_n_returns_the_highest_reward_sample(trained):
    out, _ = trained
    rm = R.RewardModel.load(out)
    prompts = [[{"role": "user", "content": "tell me about bruno"}],
               [{"role": "user", "content": "where does chen live?"}]]
    res = R.best_of_n(rm.backbone, rm.tokenizer, LongestWins(), prompts, 4, max_new_tokens=8,
                      temperature=1.0, seed=1)
    for r in res:
        assert len(r["answers"]) == 4 and r["best"] in r["answers"]
        assert r["reward"] == max(r["rewards"]) == len(r["best"])
    # with the trained RM: the chosen answer's reward is the max of its samples
    res = R.best_of_n(rm.backbone, rm.tokenizer, rm, prompts, 3, max_new_tokens=8, seed=2)
    assert all(r["reward"] == max(r["rewards"]) for r in res)


def test_cli_generate_best_of(trained, init_ckpt, capsys):
    from gptlab.cli import main
    out, _ = trained
    assert main(["generate", "--model", str(init_ckpt), "--best-of", "3", "--reward", str(out),
                 "--prompt", "tell me about dara", "--max-new-tokens", "6", "--seed", "1"]) == 0
    cap = capsys.readouterr()
    samples = [line for line in cap.err.splitlines() if line.startswith("[")]
    rewards = [float(s.split("reward ")[1].split()[0]) for s in samples]
    assert len(samples) == 3
    best = samples[max(range(3), key=lambda i: (rewards[i], -i))]
    assert repr(cap.out.rstrip("\n")) in best
    assert main(["generate", "--model", str(init_ckpt), "--best-of", "2",
                 "--prompt", "hi"]) == 2          # --reward is required with --best-of


def test_judge_agreement_and_ceiling(tmp_path):
    from gptlab.align.common import heldout_records
    from gptlab.judge import Judge
    from gptlab.data.world import generate_world
    generate_world(tmp_path, seed=0, scale="tiny")
    judge = Judge.from_dir(tmp_path)
    rec = heldout_records(tmp_path, 1, categories=["qa"])[0]
    good, bad = rec["reference"], "banana banana"
    # stored labels: one right (good above bad), one flipped, one tie (equal answers)
    groups = [R.Group(rec["messages"], rec["meta"], [good, bad], [[1], [2]]),
              R.Group(rec["messages"], rec["meta"], [bad, good], [[1], [2]]),
              R.Group(rec["messages"], rec["meta"], [bad, bad], [[1], [2]])]
    rewards = [[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]]     # a judge-copying reward model
    a = R.judge_agreement(groups, rewards, judge)
    assert a["strict_pairs"] == 2 and a["judge_tied_pairs"] == 1
    assert a["rm_vs_judge"] == 1.0 and a["labels_vs_judge"] == 0.5 == a["rm_vs_labels"]
    assert sum(n for n, _ in a["by_check"].values()) == 2
