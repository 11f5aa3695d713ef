"""The dtype a model is served in: `--dtype auto` keeps small models in float32 and moves big
ones to bfloat16 only where the hardware multiplies bf16 natively; explicit names (long or
`gptlab import`'s short ones) are obeyed; a bf16 server answers through the official client."""

from __future__ import annotations

import openai
import pytest
import torch

from gptlab.model import GPT, preset
from gptlab.serve import app as serve_app
from gptlab.serve.app import serving_dtype
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


def test_auto_moves_only_big_models_on_bf16_hardware(tiny, monkeypatch):
    monkeypatch.setattr(serve_app, "fast_bf16", lambda device: True)
    assert serving_dtype(tiny, "auto", "cpu") == torch.float32  # small: per-op bound, stays float32
    size = 4 * sum(p.numel() for p in tiny.parameters())
    monkeypatch.setattr(serve_app, "BF16_AUTO_MIN_BYTES", size - 1)  # now it counts as big
    assert serving_dtype(tiny, "auto", "cpu") == torch.bfloat16
    monkeypatch.setattr(serve_app, "fast_bf16", lambda device: False)
    assert serving_dtype(tiny, "auto", "cpu") == torch.float32  # no native bf16: keep float32


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
