"""gptlab.engine: KV-cache decoding equals naive recomputation, sampling, stops, streaming.

Two stand-ins keep the tests exact and fast: ``ByteTokenizer`` (one token per UTF-8 byte,
so multi-byte characters are always split across tokens) and ``ScriptedModel`` (emits a
fixed token sequence, whatever the prompt, through the same cache API as ``GPT``).
"""

from __future__ import annotations

import pytest
import torch

from gptlab.engine import Engine
from gptlab.model import GPT, ModelConfig


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: one thread is fastest, and immune to stalls when the CPU is shared."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class ByteTokenizer:
    """Tokens 0..255 are bytes; 256 is end-of-text. Decoding replaces broken UTF-8 with U+FFFD."""

    eos_id = 256
    vocab_size = 260

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")


class WordTokenizer:
    """A multi-character vocabulary, to see how stop strings cut inside a token."""

    def __init__(self, words):
        self.words, self.eos_id = list(words), len(words)

    def decode(self, ids) -> str:
        return "".join(self.words[i] for i in ids if i < len(self.words))


class ScriptedModel(GPT):
    """A GPT whose next token is script[k] at generation step k (any prompt, any row)."""

    def __init__(self, script, vocab_size=260):
        super().__init__(ModelConfig(vocab_size=vocab_size, hidden_size=8, intermediate_size=8,
                                     num_hidden_layers=1, num_attention_heads=1,
                                     num_key_value_heads=1))
        self.script, self.calls = list(script), 0

    def forward(self, input_ids, targets=None, *, kv_cache=None, logits_to_keep=0, **kw):
        B, T = input_ids.shape
        logits = torch.zeros(B, T, self.config.vocab_size)
        logits[:, -1, self.script[min(self.calls, len(self.script) - 1)]] = 1.0
        self.calls += 1
        kv_cache.pos += T
        return logits


def tiny_gpt(seed=0, vocab=260, kv_heads=2) -> GPT:
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=vocab, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=kv_heads, max_position_embeddings=64)
    model = GPT(cfg).eval()
    with torch.no_grad():  # sharper, less repetitive distributions than the init
        model.lm_head.weight.mul_(20)
    return model


def naive_greedy(model, prompt, n):
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
    return ids[len(prompt):]


PROMPTS = [[5, 6, 7, 8, 9, 10, 11, 12, 13], [3], [100, 101, 102, 103, 104]]


# ----------------------------------------------------------------------------- greedy and cache


@pytest.mark.parametrize("kv_heads", [4, 2, 1])
def test_cached_greedy_equals_full_recomputation(kv_heads):
    model = tiny_gpt(kv_heads=kv_heads)
    engine = Engine(model, ByteTokenizer())
    out = engine.generate(PROMPTS, max_new_tokens=14, stop_token_ids=[])
    assert out == [naive_greedy(model, p, 14) for p in PROMPTS]
    assert engine.last_finish_reasons == ["length"] * 3
    # a row's completion does not depend on the other rows (padding is invisible)
    assert engine.generate([PROMPTS[1]], max_new_tokens=14, stop_token_ids=[])[0] == out[1]


# ----------------------------------------------------------------------------- sampling


def test_seeded_sampling_is_reproducible():
    engine = Engine(tiny_gpt(), ByteTokenizer())
    kw = dict(max_new_tokens=20, temperature=1.5, stop_token_ids=[])
    a = engine.generate(PROMPTS, seed=1, **kw)
    assert a == engine.generate(PROMPTS, seed=1, **kw)
    assert a != engine.generate(PROMPTS, seed=2, **kw)
    assert a != engine.generate(PROMPTS, **{**kw, "temperature": 0.0})
    top = engine.generate(PROMPTS, seed=1, top_k=5, top_p=0.9, **kw)
    assert top == engine.generate(PROMPTS, seed=1, top_k=5, top_p=0.9, **kw)


def test_top_k_1_and_tiny_top_p_equal_greedy():
    engine = Engine(tiny_gpt(seed=1), ByteTokenizer())
    greedy = engine.generate(PROMPTS, max_new_tokens=12, stop_token_ids=[])
    for kw in (dict(top_k=1), dict(top_p=1e-6)):
        assert engine.generate(PROMPTS, max_new_tokens=12, temperature=2.0, seed=3,
                               stop_token_ids=[], **kw) == greedy


# ----------------------------------------------------------------------------- stops


def test_stop_tokens_end_each_row_and_are_not_returned():
    model = tiny_gpt(seed=2)
    engine = Engine(model, ByteTokenizer())
    full = engine.generate(PROMPTS, max_new_tokens=12, stop_token_ids=[])
    stop = full[0][5]
    first = full[0].index(stop)
    out = engine.generate(PROMPTS, max_new_tokens=12, stop_token_ids=[stop])
    assert out[0] == full[0][:first]
    for row, ref in zip(out, full):
        assert row == (ref[:ref.index(stop)] if stop in ref else ref)
    assert engine.last_finish_reasons[0] == "stop"


def test_eos_is_the_default_stop_token():
    text = "ok"
    engine = Engine(ScriptedModel([*text.encode(), ByteTokenizer.eos_id, 120, 121]), ByteTokenizer())
    assert engine.generate([[1]], max_new_tokens=10) == [list(b"ok")]
    assert engine.last_finish_reasons == ["stop"]
    engine = Engine(ScriptedModel([*text.encode(), ByteTokenizer.eos_id, 120, 121]), ByteTokenizer())
    assert engine.generate([[1]], max_new_tokens=5, stop_token_ids=[]) == [[111, 107, 256, 120, 121]]


def test_stop_strings_generate_and_stream():
    script = list("Hi <st <stop> after".encode()) + [ByteTokenizer.eos_id]
    tok = ByteTokenizer()
    ids = Engine(ScriptedModel(script), tok).generate([[1]], max_new_tokens=40, stop_strings=["<stop>"])[0]
    assert tok.decode(ids) == "Hi <st "
    engine = Engine(ScriptedModel(script), tok)
    deltas = list(engine.stream([1], max_new_tokens=40, stop_strings=["<stop>", "never"]))
    assert "".join(deltas) == "Hi <st "
    assert engine.last_finish_reasons == ["stop"]
    assert all("<sto" not in d for d in deltas)  # the partial match was held back, not emitted


def test_stop_string_inside_a_multi_character_token():
    tok = WordTokenizer(["Hel", "lo\n\nUs", "er"])
    script = [0, 1, 2, 0]
    ids = Engine(ScriptedModel(script, vocab_size=4), tok).generate([[0]], 10, stop_strings=["\n\n"])
    assert ids == [[0]]  # token granularity: "lo\n\nUs" straddles the stop string, dropped
    text = "".join(Engine(ScriptedModel(script, vocab_size=4), tok).stream([0], 10, stop_strings=["\n\n"]))
    assert text == "Hello"  # text granularity: cut exactly before the stop string


# ----------------------------------------------------------------------------- streaming


def test_stream_deltas_are_whole_characters():
    text = "héllo wörld, 你好 🙂 ok"
    script = list(text.encode("utf-8")) + [ByteTokenizer.eos_id]
    deltas = list(Engine(ScriptedModel(script), ByteTokenizer()).stream([1], max_new_tokens=100))
    assert "".join(deltas) == text
    assert all(d and "\ufffd" not in d for d in deltas)
    for d in deltas:
        assert d.encode("utf-8").decode("utf-8") == d  # valid UTF-8, no lone surrogates
    assert "🙂" in deltas or any("🙂" in d for d in deltas)


def test_stream_cut_mid_character_still_joins_to_the_decoded_completion():
    tok = ByteTokenizer()
    script = list("a🙂".encode("utf-8"))
    deltas = list(Engine(ScriptedModel(script), tok).stream([1], max_new_tokens=3))
    assert deltas[0] == "a" and "".join(deltas) == tok.decode(script[:3])


def test_stream_joins_to_decoded_generate_with_a_real_model():
    model = tiny_gpt(seed=4)
    tok = ByteTokenizer()
    ids = Engine(model, tok).generate([PROMPTS[0]], max_new_tokens=30, temperature=1.0, seed=7,
                                      stop_token_ids=[])[0]
    deltas = list(Engine(model, tok).stream(PROMPTS[0], max_new_tokens=30, temperature=1.0, seed=7,
                                             stop_token_ids=[]))
    assert "".join(deltas) == tok.decode(ids)


def test_engine_with_the_gptlab_tokenizer(tiny_tokenizer):
    from gptlab.tokenizer import Tokenizer

    tok = Tokenizer.load(tiny_tokenizer)
    model = tiny_gpt(seed=5, vocab=tok.vocab_size)
    engine = Engine(model, tok)
    prompt = tok.encode("alice lives in")
    ids = engine.generate([prompt], max_new_tokens=16, stop_token_ids=[])[0]
    assert ids == naive_greedy(model, prompt, 16)
    assert "".join(engine.stream(prompt, max_new_tokens=16, stop_token_ids=[])) == tok.decode(ids)


def test_argument_errors_are_clear():
    engine = Engine(tiny_gpt(), tokenizer=None)
    with pytest.raises(ValueError, match="temperature"):
        engine.generate(PROMPTS, max_new_tokens=2, temperature=-1.0)
    with pytest.raises(ValueError, match="tokenizer"):
        engine.generate(PROMPTS, max_new_tokens=2, stop_strings=["x"])
    with pytest.raises(ValueError, match="at least one token"):
        engine.generate([[1], []], max_new_tokens=2)
    assert engine.generate(PROMPTS, max_new_tokens=0) == [[], [], []]


# ----------------------------------------------------------------------------- weight-only decode paths


def q4_1_representable(model, group=32):
    """Round every block weight to llama.cpp's Q4_1 grid (what a Q4_1 GGUF import gives)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2 and "layers" in name:
                w = p.view(p.shape[0], -1, group)
                lo, scale = w.amin(-1, keepdim=True), (w.amax(-1, keepdim=True) - w.amin(-1, keepdim=True)) / 15
                p.copy_((torch.round((w - lo) / scale) * scale + lo).view_as(p))
    return model


def test_int4_linear_is_exact_on_q4_1_weights_up_to_bf16():
    from gptlab.engine import Int4Linear

    torch.manual_seed(0)
    lin = torch.nn.Linear(96, 64, bias=False)
    q4_1_representable(torch.nn.ModuleDict({"layers": lin}))
    x = torch.randn(3, 5, 96)
    y = Int4Linear(lin.weight)(x)
    assert y.shape == (3, 5, 64) and y.dtype == torch.float32
    ref = torch.nn.functional.linear(x, lin.weight)
    assert (y - ref).abs().max() <= 2e-2 * ref.abs().max()  # bf16 activations and scales only


@pytest.mark.parametrize("weights", ["int4", "int4+int8", "int8", "bf16"])
def test_quantized_decode_is_close_and_leaves_the_model_alone(weights):
    model = q4_1_representable(tiny_gpt(seed=2))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    engine = Engine(model, ByteTokenizer(), weights=weights)
    assert engine.model is not model
    assert engine.model.model.embed_tokens.weight is model.model.embed_tokens.weight  # shared, not copied
    head = type(engine.model.lm_head).__name__
    assert head == {"int4": "Linear", "int4+int8": "Int8Linear", "int8": "Int8Linear", "bf16": "BF16Linear"}[weights]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    ids = torch.tensor([PROMPTS[0] * 3])
    with torch.inference_mode():
        ref, got = model(ids), engine.model(ids)
    assert got.dtype == torch.float32
    assert (got - ref).abs().max() <= 0.05 * ref.abs().max()
    assert (got.argmax(-1) == ref.argmax(-1)).float().mean() >= 0.9
    out = engine.generate(PROMPTS, max_new_tokens=6, stop_token_ids=[])  # padded batch, cache path
    assert [len(o) for o in out] == [6, 6, 6]
    assert engine.last_prefill_s > 0 and engine.last_decode_s > 0


def test_weight_mode_errors():
    with pytest.raises(ValueError, match="weights must be one of"):
        Engine(tiny_gpt(), weights="int3")


# ----------------------------------------------------------------------------- fused decode step


def test_fused_decode_matches_the_model_and_follows_weight_updates():
    model = tiny_gpt(seed=6)
    fused, plain = Engine(model, ByteTokenizer()), Engine(model, ByteTokenizer(), fuse=False)
    assert fused.fused is not None and plain.fused is None
    kw = dict(max_new_tokens=10, stop_token_ids=[])
    assert fused.generate(PROMPTS, **kw) == plain.generate(PROMPTS, **kw)
    # an optimizer-style in-place update (and a replaced tensor) must reach the fused copy
    with torch.no_grad():
        model.model.layers[0].self_attn.q_proj.weight.mul_(-3.0)
        model.model.layers[1].post_attention_layernorm.weight.add_(0.5)
    model.model.layers[1].mlp.up_proj.weight = torch.nn.Parameter(torch.randn(160, 64) * 0.3)
    out = fused.generate(PROMPTS, **kw)
    assert out == plain.generate(PROMPTS, **kw)
    assert out == [naive_greedy(model, p, 10) for p in PROMPTS]
    with pytest.raises(ValueError, match="fuse=True"):
        Engine(model, weights="bf16", fuse=True)


def test_a_bfloat16_model_decodes_fused_as_closely_as_its_plain_forward():
    """The server fuses bf16 models (scripted, batch-flat step): the fused step's logits must
    be as near the float32 model's as the bf16 model's own forward is."""
    import copy

    from gptlab.engine import FusedDecoder
    from gptlab.model import KVCache

    ref = tiny_gpt(seed=8)
    model = copy.deepcopy(ref).to(torch.bfloat16)
    assert Engine(model, ByteTokenizer()).fused is not None
    ids = torch.tensor([[5, 6, 7, 8, 9, 10, 11, 12, 13, 40, 41, 42]] * 2)
    steps = 6
    with torch.no_grad():
        want = ref(ids)[:, -steps:]
        plain = model(ids)[:, -steps:].float()
        fused = FusedDecoder(model)
        assert fused.refresh()
        cache = KVCache(model.config, 2, ids.shape[1], device="cpu", dtype=torch.bfloat16)
        model(ids[:, :-steps], kv_cache=cache)
        state = fused.start(cache)
        got = torch.stack([fused.step(state, ids[:, t], cache, None) for t in
                           range(ids.shape[1] - steps, ids.shape[1])], 1).float()
    assert got.dtype == torch.float32 and torch.isfinite(got).all()
    plain_err, fused_err = (plain - want).abs().mean(), (got - want).abs().mean()
    assert fused_err <= 1.5 * plain_err + 1e-3, (fused_err, plain_err)
    assert (got.argmax(-1) == want.argmax(-1)).float().mean() >= 0.9
    # a model mixing dtypes is not fused
    model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.float())
    assert not FusedDecoder.supports(model)


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-4), (torch.bfloat16, 0.1)])
def test_the_fused_prompt_pass_equals_the_model_from_scratch_and_from_a_cached_prefix(dtype, tol):
    """The server's one-request prompt pass (scripted, causal over one cache row): the last
    token's logits and every key/value written must be the model's."""
    from gptlab.engine import FusedDecoder
    from gptlab.model import KVCache

    model = tiny_gpt(seed=9).to(dtype)
    fused = FusedDecoder(model)
    assert fused.refresh()
    ids = torch.tensor([5, 6, 7, 8, 9, 10, 11, 12, 13, 40, 41, 42, 43])
    with torch.no_grad():
        want_cache = KVCache(model.config, 1, 20, dtype=dtype)
        want = model(ids[None], kv_cache=want_cache)[0, -1].float()
        for cached in (0, 5):   # from scratch, and after a prefix the model wrote
            cache = KVCache(model.config, 1, 20, dtype=dtype)
            if cached:
                model(ids[None, :cached], kv_cache=cache)
            got = fused.prefill(cache, ids[cached:])[0].float()
            assert cache.pos == len(ids)
            torch.testing.assert_close(got, want, atol=tol, rtol=0)
            torch.testing.assert_close(cache.k[..., :len(ids), :].float(), want_cache.k[..., :len(ids), :].float(),
                                       atol=tol, rtol=0)
            torch.testing.assert_close(cache.v[..., :len(ids), :].float(), want_cache.v[..., :len(ids), :].float(),
                                       atol=tol, rtol=0)
    with pytest.raises(ValueError, match="one-row"):
        fused.prefill(KVCache(model.config, 2, 20, dtype=dtype), ids)


def test_fused_decode_steps_aside_for_wrapped_projections():
    class Scaled(torch.nn.Module):  # stands in for an adapter wrapper around a projection
        def __init__(self, lin):
            super().__init__()
            self.lin, self.extra = lin, torch.nn.Parameter(torch.tensor(2.0))

        @property
        def weight(self):
            return self.lin.weight

        def forward(self, x):
            return self.lin(x) * self.extra

    model = tiny_gpt(seed=7)
    engine = Engine(model, ByteTokenizer())
    engine.generate(PROMPTS, max_new_tokens=3, stop_token_ids=[])
    attn = model.model.layers[0].self_attn
    attn.v_proj = Scaled(attn.v_proj)
    assert engine.generate(PROMPTS, max_new_tokens=10, stop_token_ids=[]) == \
        [naive_greedy(model, p, 10) for p in PROMPTS]
    assert Engine(model, ByteTokenizer()).fused is None


def test_the_fused_blocks_run_scripted_and_equal_the_python_function():
    """The step's blocks run as TorchScript (no GIL between ops, docs/PERFORMANCE.md); the
    fallback, the same function from Python, must give the same numbers."""
    from gptlab.engine import _blocks, _blocks_fn

    scripted = _blocks_fn()
    assert isinstance(scripted, torch.jit.ScriptFunction), "TorchScript failed: the Python fallback runs"
    torch.manual_seed(0)
    B, H, Kv, hd, I, D, layers, T, pos = 3, 4, 2, 8, 24, 32, 2, 10, 6
    w = [[torch.randn(a, b) * 0.1 for _ in range(layers)]
         for a, b in ((D, (H + 2 * Kv) * hd), (H * hd, D), (D, 2 * I), (I, D))]
    caches = [[torch.randn(B, Kv, T, hd) for _ in range(layers)] for _ in range(2)]
    rot3, eps, x = torch.randn(B, hd, hd), torch.full((1, 1), 1e-5), torch.randn(B, D)
    masked = torch.zeros(B, 1, 1, pos + 1, dtype=torch.bool)
    masked[0, ..., :2] = True   # a left-padded row
    copies = [[[t.clone() for t in c] for c in caches] for _ in range(2)]
    out = [f(x, *w, *cc, rot3, masked, eps, pos, H, Kv, hd, I) for f, cc in zip((scripted, _blocks), copies)]
    torch.testing.assert_close(out[0], out[1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(copies[0][0][1][:, :, pos], copies[1][0][1][:, :, pos])  # the keys written
