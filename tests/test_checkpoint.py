"""Checkpoints: HF interop both ways, exact round trip, atomic saves that survive crashes."""

import dataclasses
import json
import os

import pytest
import torch

import gptlab.checkpoint as ckpt_mod
from gptlab.checkpoint import load_checkpoint, load_train_state, save_checkpoint
from gptlab.model import GPT, ModelConfig
from gptlab.tokenizer import train_tokenizer

TEXTS = ["The capital of France is Paris. 法国的首都是巴黎。 12345 😀"] * 20


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(TEXTS, vocab_size=300)


def tiny_model(tok, tied=False, seed=0):
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=tok.vocab_size, hidden_size=64, intermediate_size=128,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=64, tie_word_embeddings=tied)
    return GPT(cfg).eval()


def ids(vocab, seed=1):
    return torch.randint(0, vocab, (2, 12), generator=torch.Generator().manual_seed(seed))


def leftovers(parent):
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


@pytest.mark.parametrize("tied", [False, True])
def test_transformers_loads_checkpoint_unchanged(tok, tmp_path, tied):
    from transformers import AutoModelForCausalLM, GenerationConfig

    model = tiny_model(tok, tied)
    save_checkpoint(tmp_path / "ck", model, tok, meta={"stage": "base"})
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "ck", dtype=torch.float32).eval()
    x = ids(tok.vocab_size)
    with torch.no_grad():
        assert torch.allclose(hf(x).logits, model(x), atol=1e-5, rtol=0)
    assert hf.config.tie_word_embeddings == tied
    gen = GenerationConfig.from_pretrained(tmp_path / "ck")
    assert gen.eos_token_id == [tok.eos_id, tok.im_end_id] and gen.pad_token_id == tok.pad_id


def test_round_trip(tok, tmp_path):
    model = tiny_model(tok, tied=True)
    state = {"step": 7, "rng": torch.get_rng_state(), "loader": {"epoch": 1, "position": 3}}
    out = save_checkpoint(tmp_path / "ck", model, tok, train_state=state,
                          meta={"stage": "sft", "parent": tmp_path / "base", "metrics": {"val_loss": 2.5}})
    ck = load_checkpoint(out)
    # ids the model config left open are filled in from the tokenizer
    assert ck.path == out and ck.model.config == dataclasses.replace(
        model.config, bos_token_id=tok.bos_id, eos_token_id=tok.eos_id, pad_token_id=tok.pad_id)
    sd, sd2 = model.state_dict(), ck.model.state_dict()
    assert sd.keys() == sd2.keys() and all(torch.equal(sd[k], sd2[k]) for k in sd)
    assert ck.model.lm_head.weight.data_ptr() == ck.model.model.embed_tokens.weight.data_ptr()
    assert ck.meta["stage"] == "sft" and ck.meta["parent"] == str(tmp_path / "base")
    assert ck.meta["metrics"] == {"val_loss": 2.5} and "created" in ck.meta and "gptlab_version" in ck.meta
    assert ck.tokenizer.encode(TEXTS[0]) == tok.encode(TEXTS[0]) and ck.tokenizer.eos_id == tok.eos_id
    ts = load_train_state(out)
    assert ts["step"] == 7 and torch.equal(ts["rng"], state["rng"]) and ts["loader"] == state["loader"]
    assert leftovers(tmp_path) == []


def test_load_dtype_and_no_train_state(tok, tmp_path):
    save_checkpoint(tmp_path / "ck", tiny_model(tok), tok)
    assert load_train_state(tmp_path / "ck") is None
    ck = load_checkpoint(tmp_path / "ck", dtype=torch.bfloat16)
    assert next(ck.model.parameters()).dtype == torch.bfloat16


def test_replace_existing_checkpoint(tok, tmp_path):
    out = tmp_path / "ck"
    save_checkpoint(out, tiny_model(tok, seed=0), tok, meta={"stage": "v1"})
    new = tiny_model(tok, seed=1)
    save_checkpoint(out, new, tok, meta={"stage": "v2"})
    ck = load_checkpoint(out)
    assert ck.meta["stage"] == "v2"
    assert torch.equal(ck.model.lm_head.weight, new.lm_head.weight)
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("target", ["save_file", "torch_save", "swap_rename"])
def test_crash_mid_save_keeps_previous(tok, tmp_path, monkeypatch, target):
    out = tmp_path / "ck"
    old = tiny_model(tok, seed=0)
    save_checkpoint(out, old, tok, meta={"stage": "v1"}, train_state={"step": 1})

    def boom(*a, **k):
        raise OSError("disk full (simulated)")

    if target == "save_file":
        monkeypatch.setattr(ckpt_mod, "save_file", boom)
    elif target == "torch_save":
        monkeypatch.setattr(ckpt_mod.torch, "save", boom)
    else:  # the second rename (new dir into place) fails after the old one was moved away
        real_rename, calls = os.rename, []

        def flaky(src, dst):
            calls.append(src)
            if len(calls) == 2:
                raise OSError("rename failed (simulated)")
            return real_rename(src, dst)
        monkeypatch.setattr(os, "rename", flaky)   # the swap lives in gptlab.fileio
    with pytest.raises(OSError, match="simulated"):
        save_checkpoint(out, tiny_model(tok, seed=1), tok, meta={"stage": "v2"}, train_state={"step": 2})
    monkeypatch.undo()
    ck = load_checkpoint(out)
    assert ck.meta["stage"] == "v1" and load_train_state(out)["step"] == 1
    assert torch.equal(ck.model.lm_head.weight, old.lm_head.weight)
    assert leftovers(tmp_path) == []


def test_killed_between_renames_is_recovered(tok, tmp_path):
    """A process killed after moving the old checkpoint away but before moving the new
    one in leaves only the backup; loading restores it."""
    out = tmp_path / "ck"
    save_checkpoint(out, tiny_model(tok), tok, meta={"stage": "v1"})
    os.rename(out, tmp_path / ".ck.old-deadbeef")
    with pytest.warns(UserWarning, match="restored"):
        ck = load_checkpoint(out)
    assert ck.meta["stage"] == "v1" and out.is_dir()


def test_refuses_to_replace_unrelated_dir(tok, tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "precious.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="refusing"):
        save_checkpoint(tmp_path / "data", tiny_model(tok), tok)
    assert (tmp_path / "data" / "precious.txt").read_text() == "keep me"


def hf_llama(tied, vocab=300):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      tie_word_embeddings=tied, rope_theta=10000.0)
    return LlamaForCausalLM(cfg).eval()


@pytest.mark.parametrize("tied, shard", [(False, None), (True, None), (False, "60KB"), (True, "60KB")])
def test_load_hf_llama_dir(tmp_path, tied, shard):
    hf = hf_llama(tied)
    kwargs = {"max_shard_size": shard} if shard else {}
    hf.save_pretrained(tmp_path / "hf", **kwargs)
    assert (tmp_path / "hf" / "model.safetensors.index.json").is_file() == bool(shard)
    ck = load_checkpoint(tmp_path / "hf")
    assert ck.meta == {} and ck.tokenizer is None and ck.model.config.tie_word_embeddings == tied
    x = ids(300)
    with torch.no_grad():
        assert torch.allclose(ck.model(x), hf(x).logits, atol=1e-5, rtol=0)


def test_clear_errors(tok, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_checkpoint(tmp_path / "empty")
    out = save_checkpoint(tmp_path / "ck", tiny_model(tok), tok)
    cfg = json.loads((out / "config.json").read_text())
    (out / "gptlab.json").unlink()  # no recorded hashes: the structural checks below speak

    (out / "config.json").write_text(json.dumps({**cfg, "model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}))
    with pytest.raises(ValueError, match="unsupported architecture.*gpt2"):
        load_checkpoint(out)
    (out / "config.json").write_text(json.dumps({**cfg, "intermediate_size": 100}))
    with pytest.raises(ValueError, match="shape mismatch.*mlp"):
        load_checkpoint(out)
    (out / "config.json").write_text(json.dumps({**cfg, "num_hidden_layers": 3}))
    with pytest.raises(ValueError, match="missing tensors.*layers.2"):
        load_checkpoint(out)
    (out / "config.json").write_text(json.dumps(cfg))
    (out / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        load_checkpoint(out)


# --------------------------------------------------------------------------- integrity


def _overwrite(path, offset: int, n: int = 4096, seed: int = 0) -> None:
    """n random bytes written over `path` at `offset` (the issue's "4 KB overwritten")."""
    data = bytearray(path.read_bytes())
    data[offset:offset + n] = torch.randint(0, 256, (n,), generator=torch.Generator().manual_seed(seed),
                                            dtype=torch.uint8).numpy().tobytes()
    path.write_bytes(bytes(data))


def test_every_file_hashed_and_checked_on_load(tok, tmp_path):
    out = save_checkpoint(tmp_path / "ck", tiny_model(tok), tok, train_state={"step": 1})
    files = json.loads((out / "gptlab.json").read_text())["files"]
    assert sorted(files) == sorted(p.name for p in out.iterdir() if p.name != "gptlab.json")
    assert files["model.safetensors"] == ckpt_mod.file_sha256(out / "model.safetensors")
    # 4 KB overwritten inside the weights (past the header): parses fine, sha256 catches it
    weights = out / "model.safetensors"
    _overwrite(weights, weights.stat().st_size // 2)
    with pytest.raises(ckpt_mod.CheckpointError, match=r"model\.safetensors: sha256 differs"):
        load_checkpoint(out)
    assert load_train_state(out) == {"step": 1}  # only its own hash is checked
    (out / "train_state.pt").write_bytes(b"x")
    with pytest.raises(ckpt_mod.CheckpointError, match=r"train_state\.pt: sha256 differs"):
        load_train_state(out)


@pytest.mark.parametrize("name", ["model.safetensors", "train_state.pt"])
def test_truncated_file_is_one_line_error_naming_it(tok, tmp_path, name):
    """Without recorded hashes (an older checkpoint) a truncated file still gives one line
    that names it, not a traceback from deep inside safetensors / torch."""
    out = save_checkpoint(tmp_path / "ck", tiny_model(tok), tok, train_state={"step": 1, "x": torch.ones(999)})
    (out / "gptlab.json").unlink()
    f = out / name
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(ckpt_mod.CheckpointError) as e:
        load_checkpoint(out) if name == "model.safetensors" else load_train_state(out)
    assert str(f) in str(e.value) and "truncated or damaged" in str(e.value)
    assert "\n" not in str(e.value)


def test_non_finite_weights_are_never_saved_nor_resumed(tok, tmp_path):
    model = tiny_model(tok)
    with torch.no_grad():
        model.model.layers[1].mlp.up_proj.weight[3, 5] = float("nan")
    with pytest.raises(ckpt_mod.NonFiniteError, match="up_proj"):
        save_checkpoint(tmp_path / "bad", model, tok)
    assert not (tmp_path / "bad").exists()
    # a NaN file from elsewhere (no hashes to catch it) fails verification before any use
    from safetensors.torch import save_file
    good = save_checkpoint(tmp_path / "ck", tiny_model(tok), tok, train_state={"step": 1})
    (good / "gptlab.json").unlink()
    w = ckpt_mod.load_file(str(good / "model.safetensors"))
    w["model.norm.weight"][0] = float("inf")
    save_file(w, str(good / "model.safetensors"))
    with pytest.raises(ckpt_mod.NonFiniteError, match="model.norm.weight"):
        ckpt_mod.verify_checkpoint(good)


def test_damaged_metadata_is_one_line_error(tok, tmp_path):
    out = save_checkpoint(tmp_path / "ck", tiny_model(tok), tok)
    (out / "gptlab.json").write_text('{"stage": "sf')
    with pytest.raises(ckpt_mod.CheckpointError, match=r"gptlab\.json: damaged"):
        load_checkpoint(out)
