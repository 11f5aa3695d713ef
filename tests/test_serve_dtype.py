"""The dtype a model is served in: `--dtype auto` on a CPU with native bf16 times both dtypes
once, serves the faster and caches the calibration; without native bf16 it keeps the loaded
dtype; explicit names (long or `gptlab import`'s short ones) are obeyed; a bf16 server answers
through the official client."""

from __future__ import annotations

import json

import openai
import pytest
import torch

from gptlab.model import GPT, preset
from gptlab.serve import dtype_auto
from gptlab.serve import settings as serve_app   # serving_dtype lives there; it reads fast_bf16 (gptlab.train.dist) there
from gptlab.serve.settings import serving_dtype
from serve_fixtures import save_tiny_chat_model, start_server


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return GPT(preset(1, 384, max_seq_len=64))


@pytest.mark.parametrize("name, want", [("float32", torch.float32), ("f32", torch.float32),
                                        ("bfloat16", torch.bfloat16), ("bf16", torch.bfloat16),
                                        ("float16", torch.float16), ("f16", torch.float16)])
def test_explicit_dtypes_are_obeyed(tiny, name, want):
    assert serving_dtype(tiny, name, "cpu") == want


def test_unknown_dtype_is_a_clear_error(tiny):
    with pytest.raises(ValueError, match="dtype must be one of auto, float32"):
        serving_dtype(tiny, "fp8", "cpu")


def test_auto_on_a_bf16_cpu_serves_the_faster_measured_dtype_and_caches_it(tiny, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GPTLAB_HOME", str(tmp_path))
    monkeypatch.setattr(serve_app, "fast_bf16", lambda device: True)  # bf16 is a candidate here
    chosen = serving_dtype(tiny, "auto", "cpu", threads=1)
    cache = json.loads(dtype_auto.cache_path().read_text())
    (key, ms), = cache.items()
    assert dtype_auto.cpu_model() in key and "1 threads" in key
    assert set(ms) == {"float32", "bfloat16"} and all(v > 0 for v in ms.values())
    faster = min(ms, key=lambda d: (ms[d], d != "float32"))
    assert chosen == getattr(torch, faster)
    line = capsys.readouterr().err
    assert f"dtype auto -> {faster} (" in line and "measured at start-up" in line
    # the second start reads the file: rewrite it so that the other dtype wins
    other = "bfloat16" if faster == "float32" else "float32"
    cache[key] = {faster: 2.0, other: 1.0}
    dtype_auto.cache_path().write_text(json.dumps(cache))
    assert serving_dtype(tiny, "auto", "cpu", threads=1) == getattr(torch, other)
    assert "cached calibration" in capsys.readouterr().err


def test_auto_keeps_the_loaded_dtype_without_native_bf16(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("GPTLAB_HOME", str(tmp_path))
    monkeypatch.setattr(serve_app, "fast_bf16", lambda device: False)
    assert serving_dtype(tiny, "auto", "cpu") == torch.float32
    assert not dtype_auto.cache_path().exists()  # nothing to measure


def test_fast_bf16_reads_the_cpu_flags():
    flags = open("/proc/cpuinfo").read().split()
    assert serve_app.fast_bf16("cpu") == ("avx512_bf16" in flags or "amx_bf16" in flags)


def test_a_bf16_server_streams_batched_replies(tmp_path, tiny_tokenizer):
    model_dir = save_tiny_chat_model(tmp_path / "m", tiny_tokenizer, mute_stop_tokens=True)
    url, stop = start_server(tmp_path, models=[str(model_dir)], dtype="bf16", max_batch=4)
    try:
        client = openai.OpenAI(base_url=url + "/v1", api_key="x")
        assert client.models.list().data[0].model_extra["dtype"] == "bfloat16"
        chunks = list(client.chat.completions.create(
            model="default", messages=[{"role": "user", "content": "alice lives in"}], n=2, max_tokens=6,
            temperature=0.9, seed=3, stream=True, stream_options={"include_usage": True}))
        finished = {c.choices[0].index: c.choices[0].finish_reason for c in chunks if c.choices
                    and c.choices[0].finish_reason}
        assert finished == {0: "length", 1: "length"}
        assert chunks[-1].usage.completion_tokens == 12
    finally:
        stop()
