"""gptlab.model: Hugging Face Llama parity, config round trip, KV cache, custom autograd,
presets and FLOPs. All configs are tiny and seeded; fp32 throughout."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from gptlab.model import GPT, KVCache, ModelConfig, linear_cross_entropy, preset, training_defaults

transformers = pytest.importorskip("transformers")
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

TOL = 1e-5


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: one thread is fastest, and immune to stalls when the CPU is shared."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny_config(kv_heads=2, tied=False, **kw) -> ModelConfig:
    base = dict(vocab_size=300, hidden_size=64, intermediate_size=176, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=kv_heads, tie_word_embeddings=tied,
                max_position_embeddings=64, rope_theta=500.0, rms_norm_eps=1e-5)
    base.update(kw)
    return ModelConfig(**base)


def hf_model(cfg: ModelConfig) -> LlamaForCausalLM:
    return LlamaForCausalLM(LlamaConfig(**cfg.to_hf_dict())).eval()


def randomize_norms(model: torch.nn.Module) -> None:
    """Norm weights start at 1; perturb them so a mixed-up norm would show."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.add_(0.1 * torch.randn_like(p))


CONFIGS = [
    pytest.param(dict(kv_heads=4, tied=False), id="mha-untied"),
    pytest.param(dict(kv_heads=2, tied=False), id="gqa-untied"),
    pytest.param(dict(kv_heads=1, tied=True), id="mqa-tied"),
    pytest.param(dict(kv_heads=2, tied=True), id="gqa-tied"),
]


# ----------------------------------------------------------------------------- HF parity


@pytest.mark.parametrize("kw", CONFIGS)
def test_state_dict_keys_and_shapes_match_hf(kw):
    cfg = tiny_config(**kw)
    ours = GPT(cfg).state_dict()
    theirs = hf_model(cfg).state_dict()
    assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(v.shape) for k, v in theirs.items()}


@pytest.mark.parametrize("kw", CONFIGS)
def test_logits_match_hf_both_directions(kw):
    torch.manual_seed(0)
    cfg = tiny_config(**kw)
    x = torch.randint(0, cfg.vocab_size, (3, 21))

    ours = GPT(cfg).eval()
    randomize_norms(ours)
    hf = hf_model(cfg)
    hf.load_state_dict(ours.state_dict())  # ours -> HF
    with torch.no_grad():
        a, b = ours(x), hf(x).logits
    assert a.dtype == torch.float32 and a.shape == (3, 21, cfg.vocab_size)
    assert (a - b).abs().max().item() <= TOL

    hf2 = hf_model(cfg)
    randomize_norms(hf2)
    ours2 = GPT(cfg).eval()
    ours2.load_state_dict(hf2.state_dict())  # HF -> ours
    with torch.no_grad():
        assert (ours2(x) - hf2(x).logits).abs().max().item() <= TOL


@pytest.mark.parametrize("kw", CONFIGS[1:3])
def test_left_padded_batch_matches_hf(kw):
    """attention_mask + position_ids (the engine's left padding) agree with HF on real tokens."""
    torch.manual_seed(1)
    cfg = tiny_config(**kw)
    ours = GPT(cfg).eval()
    hf = hf_model(cfg)
    hf.load_state_dict(ours.state_dict())
    x = torch.randint(0, cfg.vocab_size, (3, 12))
    mask = torch.ones(3, 12, dtype=torch.long)
    mask[1, :4] = 0
    mask[2, :11] = 0
    pos = (mask.cumsum(1) - 1).clamp(min=0)
    with torch.no_grad():
        a = ours(x, attention_mask=mask, position_ids=pos)
        b = hf(x, attention_mask=mask, position_ids=pos).logits
    assert torch.isfinite(a).all()
    real = mask.bool()
    assert (a[real] - b[real]).abs().max().item() <= TOL
    # and each padded row equals the same prompt run alone, unpadded
    with torch.no_grad():
        alone = ours(x[1:2, 4:])
    assert (a[1, 4:] - alone[0]).abs().max().item() <= TOL


def test_tied_checkpoint_without_lm_head_loads_both_ways():
    """HF save_pretrained drops lm_head.weight when tied; both models accept that."""
    torch.manual_seed(2)
    cfg = tiny_config(tied=True)
    ours = GPT(cfg)
    sd = {k: v for k, v in ours.state_dict().items() if k != "lm_head.weight"}
    other = GPT(cfg)
    other.load_state_dict(sd)
    assert other.lm_head.weight is other.model.embed_tokens.weight
    assert torch.equal(other.lm_head.weight, ours.model.embed_tokens.weight)
    hf = hf_model(cfg)
    hf.load_state_dict(ours.state_dict())  # with the (shared) lm_head key
    assert torch.equal(hf.lm_head.weight, ours.model.embed_tokens.weight)


def test_loss_and_gradients_match_hf():
    """Fused linear cross-entropy and the RoPE autograd function give HF's gradients."""
    torch.manual_seed(3)
    cfg = tiny_config(kv_heads=2)
    ours = GPT(cfg)
    randomize_norms(ours)
    hf = LlamaForCausalLM(LlamaConfig(**cfg.to_hf_dict()))
    hf.load_state_dict(ours.state_dict())
    x = torch.randint(0, cfg.vocab_size, (2, 16))
    y = torch.randint(0, cfg.vocab_size, (2, 16))
    y[0, :5] = -100
    loss = ours(x, y)
    ref = F.cross_entropy(hf(x).logits.flatten(0, 1), y.flatten(), ignore_index=-100)
    assert abs(loss.item() - ref.item()) <= TOL
    loss.backward()
    ref.backward()
    theirs = dict(hf.named_parameters())
    for name, p in ours.named_parameters():
        g, h = p.grad, theirs[name].grad
        assert (g - h).abs().max().item() <= 1e-5 * max(1.0, h.abs().max().item()), name


def test_linear_cross_entropy_matches_reference_in_float64():
    torch.manual_seed(4)
    h = torch.randn(37, 8, dtype=torch.float64, requires_grad=True)
    w = torch.randn(11, 8, dtype=torch.float64, requires_grad=True)
    t = torch.randint(0, 11, (37,))
    t[::5] = -1
    ref = F.cross_entropy(h @ w.t(), t, ignore_index=-1)
    gh, gw = torch.autograd.grad(3 * ref, (h, w))
    ours = linear_cross_entropy(h, w, t, ignore_index=-1, chunk=6)  # several uneven chunks
    gh2, gw2 = torch.autograd.grad(3 * ours, (h, w))
    assert abs(ours.item() - ref.item()) < 1e-6
    assert torch.allclose(gh, gh2, atol=1e-12) and torch.allclose(gw, gw2.double(), atol=1e-6)
    with torch.no_grad():  # evaluation: no gradient buffers needed
        assert abs(linear_cross_entropy(h, w, t, ignore_index=-1).item() - ref.item()) < 1e-6


def test_rope_autograd_gradcheck():
    from gptlab.model import _Rope, rope_tables

    cos, sin = rope_tables(8, 100.0, 5)
    c, s = cos[:, None, :4].double(), sin[:, None, :4].double()
    x = torch.randn(2, 5, 3, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: _Rope.apply(t, c, s), (x,))


# ----------------------------------------------------------------------------- config


def test_config_round_trip_through_llama_config():
    cfg = tiny_config(kv_heads=1, tied=True, bos_token_id=1, eos_token_id=2, pad_token_id=3)
    d = cfg.to_hf_dict()
    json.dumps(d)  # config.json material
    assert d["architectures"] == ["LlamaForCausalLM"] and d["model_type"] == "llama"
    hf_cfg = LlamaConfig(**d)
    for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                "num_attention_heads", "num_key_value_heads", "max_position_embeddings",
                "rms_norm_eps", "tie_word_embeddings", "bos_token_id", "eos_token_id", "pad_token_id"):
        assert getattr(hf_cfg, key) == getattr(cfg, key), key
    assert hf_cfg.head_dim == cfg.head_dim
    assert ModelConfig.from_hf_dict(hf_cfg.to_dict()) == cfg
    assert ModelConfig.from_hf_dict(d) == cfg


def test_from_hf_dict_ignores_unknown_and_rejects_unsupported():
    d = tiny_config().to_hf_dict()
    d["some_future_key"] = 123
    assert ModelConfig.from_hf_dict(d) == tiny_config()
    legacy = {k: v for k, v in d.items() if k not in ("rope_parameters", "num_key_value_heads")}
    assert ModelConfig.from_hf_dict(legacy).num_key_value_heads == 4  # MHA default
    for bad in ({"rope_scaling": {"rope_type": "linear", "factor": 2.0}},
                {"rope_parameters": {"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0}},
                {"attention_bias": True}, {"mlp_bias": True}, {"hidden_act": "gelu"},
                {"model_type": "qwen2"}, {"head_dim": 32}):
        with pytest.raises(ValueError, match="unsupported"):
            ModelConfig.from_hf_dict({**d, **bad})


# ----------------------------------------------------------------------------- KV cache


def test_kv_cache_chunked_forward_equals_full_forward():
    torch.manual_seed(5)
    cfg = tiny_config(kv_heads=2)
    model = GPT(cfg).eval()
    x = torch.randint(0, cfg.vocab_size, (2, 13))
    cache = KVCache(cfg, batch_size=2, max_len=16)
    with torch.no_grad():
        full = model(x)
        parts = [model(x[:, a:b], kv_cache=cache) for a, b in ((0, 6), (6, 7), (7, 12), (12, 13))]
    assert cache.pos == 13
    assert (torch.cat(parts, dim=1) - full).abs().max().item() <= TOL
    with pytest.raises(ValueError, match="full"):
        model(x[:, :4], kv_cache=cache)


# ----------------------------------------------------------------------------- presets, FLOPs


def test_preset_sizes():
    def count(depth, vocab):
        with torch.device("meta"):
            return GPT(preset(depth, vocab)).num_params()

    for depth in (2, 3, 4):
        assert 1.0e6 <= count(depth, 4096) <= 5.1e6, depth
    assert 0.40e9 <= count(20, 32768) <= 0.60e9
    assert 0.40e9 <= count(20, 65536) <= 0.60e9
    for depth in (1, 2, 5, 7, 9, 12, 20, 26):
        cfg = preset(depth, 1000)
        assert cfg.hidden_size == 64 * depth and cfg.num_hidden_layers == depth
        assert cfg.head_dim in (32, 64) and cfg.num_key_value_heads <= cfg.num_attention_heads


def test_training_defaults_scale_with_depth():
    d4, d12, d20 = (training_defaults(d) for d in (4, 12, 20))
    assert d4["batch_tokens"] < d12["batch_tokens"] <= d20["batch_tokens"] == 524288
    assert d4["lr"] > d12["lr"] > d20["lr"] and abs(d12["lr"] - 6e-4) < 1e-12


def test_flops_per_token_matches_counted_matmul_flops():
    """6N + 12*L*H*hd*T equals the matmul FLOPs torch counts for forward + backward
    (math SDPA so that attention is counted), up to the norm weights."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(6)
    cfg = tiny_config(kv_heads=2)
    model = GPT(cfg)
    B, T = 2, 32
    x = torch.randint(0, cfg.vocab_size, (B, T))
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(x).sum().backward()
    counted = counter.get_total_flops() / (B * T)
    expected = model.flops_per_token(T)
    assert abs(counted - expected) / expected < 0.01
    n = model.num_params(non_embedding=True)
    assert expected == 6 * n + 12 * cfg.num_hidden_layers * cfg.hidden_size * T
    assert model.num_params() - n == cfg.vocab_size * cfg.hidden_size


def test_fused_loss_under_bf16_autocast_matches_plain_cross_entropy():
    torch.manual_seed(7)
    cfg = tiny_config()
    model = GPT(cfg)
    x, y = (torch.randint(0, cfg.vocab_size, (2, 16)) for _ in range(2))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fused = model(x, y)
        plain = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
    assert fused.dtype == torch.float32
    assert abs(fused.item() - plain.item()) < 1e-2
    g_fused = torch.autograd.grad(fused, model.lm_head.weight)[0]
    g_plain = torch.autograd.grad(plain, model.lm_head.weight)[0]
    assert g_fused.dtype == torch.float32
    assert (g_fused - g_plain).abs().max() <= 0.02 * g_plain.abs().max()
