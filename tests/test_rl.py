"""gptlab.align.rl: GAE by hand, the KL penalty at the reference, the GRPO baseline, the
unfinished-answer penalty, tiny PPO / GRPO runs that raise a toy verifiable reward, resume.

The toy task: a random depth-1 model (the 384-token test tokenizer) answers a few prompts
with at most 6 tokens; the reward is 1 when the answer contains the letter "e". A random
model earns it about half the time, so a few seeded steps at a high learning rate show
whether the policy gradient points the right way.
"""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch

from gptlab.align.rl import (
    RLConfig, gae, group_advantages, kl_k3, ppo_advantages, rollout, run_rl, score_tokens,
)
from gptlab.train.metrics import read_metrics


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class ContainsE:
    """Toy verifiable reward: 1.0 when the answer contains the letter e."""

    def score(self, records, responses):
        return [1.0 if "e" in r else 0.0 for r in responses]


@pytest.fixture(scope="module")
def chat_ckpt(tiny_chat_ckpt):
    return tiny_chat_ckpt


@pytest.fixture(scope="module")
def prompts(tmp_path_factory):
    names = ["alice", "bruno", "chen", "dara", "emil", "fatou", "goran", "hana"]
    path = tmp_path_factory.mktemp("prompts") / "prompts.jsonl"
    path.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"where does {n} live?"}],
                                        "meta": {}}) + "\n" for n in names))
    return path


def _cfg(ckpt, prompts, out, **kw) -> RLConfig:
    d = dict(init=str(ckpt), prompts=str(prompts), out=str(out), steps=8, batch_size=8,
             group_size=4, max_new_tokens=6, lr=1e-2, warmup_steps=0, kl_coef=0.0,
             eval_per_category=0, save_every=0, progress=False, device="cpu", seed=0,
             minibatch_size=16, ppo_epochs=2)
    d.update(kw)
    return RLConfig(**d)


# --------------------------------------------------------------------------- math


def test_gae_matches_hand_computation():
    # one prompt token (not an action), three answer tokens, one padding column
    mask = torch.tensor([[0.0, 1, 1, 1, 0]])
    values = torch.tensor([[9.0, 0.5, 0.6, 0.7, 9.0]])   # off-mask values must not leak in
    rewards = torch.tensor([[5.0, 0.0, 0.0, 1.0, 5.0]]) * mask
    adv, ret = gae(rewards, values * mask, mask, gamma=0.5, lam=0.9)
    # delta_3 = 1 - 0.7 = 0.3                       A_3 = 0.3
    # delta_2 = 0 + 0.5 * 0.7 - 0.6 = -0.25          A_2 = -0.25 + 0.45 * 0.3 = -0.115
    # delta_1 = 0 + 0.5 * 0.6 - 0.5 = -0.2           A_1 = -0.2 + 0.45 * -0.115 = -0.25175
    expected = torch.tensor([[0.0, -0.25175, -0.115, 0.3, 0.0]])
    assert torch.allclose(adv, expected, atol=1e-6)
    assert torch.allclose(ret, (expected + values) * mask, atol=1e-6)


def test_gae_lambda_one_gamma_one_is_reward_to_go_minus_value():
    mask = torch.ones(1, 4)
    rewards = torch.tensor([[0.1, -0.2, 0.0, 1.0]])
    values = torch.tensor([[0.3, 0.1, 0.4, 0.2]])
    adv, _ = gae(rewards, values, mask, gamma=1.0, lam=1.0)
    to_go = rewards.flip(1).cumsum(1).flip(1)
    assert torch.allclose(adv, to_go - values, atol=1e-6)


def test_group_advantages_are_normalized_within_each_group():
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.5, 0.5, 0.5, 0.5, 3.0, 1.0, 2.0, 2.0])
    a = group_advantages(r, 4).view(3, 4)
    assert torch.allclose(a.mean(1), torch.zeros(3), atol=1e-5)
    assert torch.allclose(a[1], torch.zeros(4))                 # equal rewards: no signal
    assert torch.allclose(a[0].std(unbiased=False), torch.tensor(1.0), atol=1e-3)
    assert a[2, 0] > a[2, 2] > a[2, 1]


def test_k3_is_zero_at_the_reference_and_positive_elsewhere():
    lp = torch.tensor([-1.0, -2.0, -0.5])
    assert torch.equal(kl_k3(lp, lp), torch.zeros(3))
    assert (kl_k3(lp, lp + 0.3) > 0).all()


# --------------------------------------------------------------------------- rollouts


def test_kl_penalty_is_zero_when_policy_equals_reference(chat_ckpt, prompts, tmp_path):
    from gptlab.align.common import load_prompt_records
    from gptlab.chat import load_chat_model

    ck = load_chat_model(chat_ckpt)
    policy, ref = ck.model, copy.deepcopy(ck.model)
    head = torch.nn.Linear(policy.config.hidden_size, 1)
    cfg = _cfg(chat_ckpt, prompts, tmp_path, kl_coef=0.5, unfinished_penalty=0.25)
    recs = load_prompt_records(prompts)
    ro = rollout(policy, ck.tokenizer, recs, ContainsE(), cfg, seed=1, device="cpu")
    score_tokens(policy, ref, head, ro)
    assert torch.equal(ro.logp, ro.ref_logp)
    assert (ro.logp[ro.mask > 0] < 0).all()                      # real log-probs on the answers
    # the penalty only hits answers that did not end by themselves
    assert torch.allclose(ro.reward, ro.score - 0.25 * (1 - ro.finished))
    # with pi == ref the per-token rewards are the score at the last answer token only
    kl = (ro.logp - ro.ref_logp) * ro.mask
    assert kl.abs().sum() == 0
    adv, ret = ppo_advantages(ro, cfg)
    assert adv.shape == ro.ids.shape and (adv[ro.mask == 0] == 0).all()
    # a changed policy does pay a penalty
    with torch.no_grad():
        policy.lm_head.weight.mul_(1.5)
    score_tokens(policy, ref, head, ro)
    assert ((ro.logp - ro.ref_logp) * ro.mask).abs().sum() > 0


# --------------------------------------------------------------------------- training


def _reward_curve(out) -> list[float]:
    return [r["reward"] for r in read_metrics(out / "metrics.jsonl") if "reward" in r]


@pytest.mark.parametrize("algo", ["ppo", "grpo"])
def test_tiny_run_raises_a_verifiable_reward(algo, chat_ckpt, prompts, tmp_path):
    out = tmp_path / algo
    # 32 answers per step either way: 32 prompts (PPO) or 8 prompts x 4 (GRPO)
    final = run_rl(_cfg(chat_ckpt, prompts, out, algo=algo, steps=10, batch_size=32),
                   reward=ContainsE())
    rewards = _reward_curve(out)
    assert len(rewards) == 10
    first, last = sum(rewards[:3]) / 3, sum(rewards[-3:]) / 3
    assert last > first + 0.2, rewards
    assert (final / "config.json").is_file()
    assert (final / "value_head.pt").is_file() == (algo == "ppo")
    rec = read_metrics(out / "metrics.jsonl")[-1]
    for key in ("reward", "kl", "entropy", "length", "unfinished"):
        assert math.isfinite(rec[key])


def test_resume_reproduces_an_uninterrupted_run(chat_ckpt, prompts, tmp_path):
    from gptlab.checkpoint import load_checkpoint

    full = run_rl(_cfg(chat_ckpt, prompts, tmp_path / "full", steps=4), reward=ContainsE())
    part = _cfg(chat_ckpt, prompts, tmp_path / "part", steps=4, save_every=2)
    # stop after 2 steps: run the same config with steps=2 keeps its checkpoint
    run_rl(dataclass_replace(part, steps=2), reward=ContainsE())
    resumed = run_rl(dataclass_replace(part, resume=True), reward=ContainsE())
    a, b = load_checkpoint(full).model.state_dict(), load_checkpoint(resumed).model.state_dict()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k
    ra, rb = _reward_curve(tmp_path / "full"), _reward_curve(tmp_path / "part")
    assert ra == rb


def test_train_layers_updates_only_the_top_blocks(chat_ckpt, prompts, tmp_path):
    from gptlab.checkpoint import load_checkpoint

    final = run_rl(_cfg(chat_ckpt, prompts, tmp_path, algo="grpo", steps=3, batch_size=16,
                        train_layers=0), reward=ContainsE())
    before, after = load_checkpoint(chat_ckpt).model.state_dict(), load_checkpoint(final).model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("model.norm.") for k in changed)   # no block, no embedding


def dataclass_replace(cfg, **kw):
    import dataclasses
    return dataclasses.replace(cfg, **kw)


def test_bad_config_is_a_clear_error(chat_ckpt, prompts, tmp_path):
    with pytest.raises(ValueError, match="--algo"):
        run_rl(_cfg(chat_ckpt, prompts, tmp_path, algo="dqn"), reward=ContainsE())
    with pytest.raises(ValueError, match="group-size"):
        run_rl(_cfg(chat_ckpt, prompts, tmp_path, algo="grpo", group_size=1), reward=ContainsE())
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n{"meta": {}}\n')
    with pytest.raises(ValueError, match="bad.jsonl:2"):
        run_rl(_cfg(chat_ckpt, bad, tmp_path), reward=ContainsE())


def test_config_keeps_out_the_training_settings_rl_does_not_use():
    import argparse

    from gptlab.cli_flags import add_dataclass_args
    from gptlab.settings import TrainSettings

    assert issubclass(RLConfig, TrainSettings)
    parser = argparse.ArgumentParser()
    add_dataclass_args(parser, RLConfig)
    args = parser.parse_args([])
    assert (args.lr, args.warmup_steps, args.keep_checkpoints, args.tensorboard) == (1e-4, 3, 1, False)
    assert parser.parse_args(["--weight-decay", "0.01"]).weight_decay == 0.01   # from RunSettings; rl passes it to AdamW
    assert not hasattr(args, "dtype") and not hasattr(args, "compile")
    with pytest.raises(ValueError, match="dtype"):
        RLConfig(dtype="bfloat16")
