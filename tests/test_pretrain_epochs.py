"""--max-epochs caps pretraining at a number of passes over the corpus, and the GPU presets
use it when the hub is unreachable (issue 15: a d12 trained 2000 x 262k tokens on
miniworld full's ~3.4 M tokens saw it ~150 times and overfit)."""
from __future__ import annotations

import json

import pytest

from gptlab.speedrun import GPU_PRESETS, HUB_DATA, offline_settings
from gptlab.train.metrics import read_metrics
from gptlab.train.pretrain import PretrainConfig, cap_epochs, pretrain, train_tokens, validate_config


def test_cap_epochs_limits_the_steps_and_rederives_warmup():
    cfg = PretrainConfig(depth=12, seq_len=1024, device_batch_size=32, total_batch_tokens=65536,
                         max_steps=2000, max_epochs=4.0)
    capped = cap_epochs(cfg, 1, 110_000_000, 3_400_000)
    assert capped.max_steps == int(4 * 3_400_000 // 65536) == 207
    assert capped.warmup_steps == round(0.02 * 207)  # from the capped count, not 2000's
    uncapped = cap_epochs(PretrainConfig(**{**cfg.__dict__, "max_epochs": None}), 1, 110_000_000,
                          3_400_000)
    assert uncapped.max_steps == 2000
    roomy = cap_epochs(cfg, 1, 110_000_000, 10**9)  # a big corpus: the cap does not bite
    assert roomy.max_steps == 2000
    with pytest.raises(ValueError, match="--max-epochs must be > 0"):
        validate_config(PretrainConfig(max_epochs=0))


@pytest.mark.parametrize("name", sorted(GPU_PRESETS))
def test_gpu_presets_offline_train_at_most_four_epochs(name):
    p = GPU_PRESETS[name]
    online = offline_settings(p, dict(HUB_DATA))
    assert online is p  # hub data: the preset as it is
    offline = offline_settings(p, {"pretrain": "run/curated/corpus", "sft": "run/world", "prefs": None})
    assert offline["max_epochs"] <= 4
    corpus = 3_400_000  # miniworld full with an 8k-32k BPE (issue 15)
    cfg = PretrainConfig(depth=p["depth"], seq_len=p["seq_len"], device_batch_size=p["device_batch_size"],
                         total_batch_tokens=offline["total_batch_tokens"],
                         max_steps=offline["pretrain_steps"], max_epochs=offline["max_epochs"])
    capped = cap_epochs(cfg, 1, 100_000_000, corpus)
    assert capped.max_steps * capped.total_batch_tokens <= 4 * corpus
    assert capped.max_steps >= 100  # still enough optimizer steps to learn something
    assert capped.total_batch_tokens % (p["device_batch_size"] * p["seq_len"]) == 0


def test_pretrain_stops_after_max_epochs(tiny_shards, tiny_tokenizer, tmp_path):
    out = tmp_path / "run"
    tokens = train_tokens(tiny_shards)
    cfg = PretrainConfig(data=str(tiny_shards), tokenizer=str(tiny_tokenizer), out=str(out), depth=1,
                         seq_len=32, device_batch_size=8, total_batch_tokens=2048, max_steps=1000,
                         max_epochs=0.05, eval_every=0, eval_batches=1, save_every=0,
                         progress=False)
    pretrain(cfg)
    steps = [r["step"] for r in read_metrics(out / "metrics.jsonl") if "loss" in r]
    assert steps[-1] == int(0.05 * tokens // 2048) < 1000
    meta = json.loads((out / "final" / "gptlab.json").read_text())
    assert meta["step"] == steps[-1]
