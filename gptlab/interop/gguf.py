"""GGUF files (llama.cpp's format) to and from gptlab models. Used by gptlab.interop.hf.

Reading (`read_gguf`): tensors are dequantized to float32 with the `gguf` package (F32, F16,
BF16, Q8_0, Q4_0, Q4_1, Q5_0/1, the K-quants Q2_K..Q6_K and whatever else the installed
`gguf.quants.dequantize` supports), renamed from llama.cpp's names (`blk.N.attn_q.weight`) to
Hugging Face's (`model.layers.N.self_attn.q_proj.weight`), and the rows of q/k are put back in
Hugging Face's RoPE order. The hyper-parameters come from the `llama.*` metadata and the
tokenizer from `tokenizer.ggml.*`.

Writing (`write_gguf`): the reverse, with `gguf.GGUFWriter`, in f32, f16 or q8_0.

The q/k permutation. llama.cpp rotates *adjacent* pairs of a head's dimensions (GPT-J style,
as in the original Meta code), while Hugging Face Llama rotates the two *halves* of a head
(`rotate_half`). llama.cpp's converter (`convert_hf_to_gguf.py`, `LlamaModel.permute`)
therefore reorders the output rows of q_proj and k_proj inside every head: row
`half * D/2 + i` moves to `2 * i + half`. `unpermute_qk` undoes exactly that.

Tokenizer pre-splitting. A GGUF names its pre-tokenizer (`tokenizer.ggml.pre`, e.g. `smollm`,
`llama-bpe`, `dbrx`, `gpt-2`) and llama.cpp maps each name to a list of regexes applied in turn
(llama-vocab.cpp). `PRE_TOKENIZERS` holds those regexes for the common names; the rebuilt
Hugging Face tokenizer applies them as a sequence of isolating `Split`s, then the GPT-2 byte map,
so it cuts text exactly where llama.cpp does. On export, the pre-tokenizer name is found by
*behaviour*: the tokenizer's own pre-tokenizer is run on probe strings and compared with each
entry. gptlab's own tokenizer (GPT-4 / cl100k-style split) is exported as `dbrx`, the llama.cpp
name for exactly that split (DBRX uses cl100k) without Llama 3's `ignore_merges`.
"""

from __future__ import annotations

import json
import os
import re
import uuid
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from gptlab.model import ModelConfig
from gptlab.tokenizer import Tokenizer

ARCH = "llama"

# llama.cpp tensor names <-> Hugging Face Llama names.
_GLOBAL = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
_LAYER = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_LAYER_INV = {v: k for k, v in _LAYER.items()}
_GLOBAL_INV = {v: k for k, v in _GLOBAL.items()}

# Token types (gguf.TokenType): llama.cpp's per-token attribute.
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6


def gguf_to_hf_name(name: str) -> str | None:
    """`blk.3.attn_q.weight` -> `model.layers.3.self_attn.q_proj.weight`; None if unknown."""
    base, dot, suffix = name.rpartition(".")
    if not dot or suffix not in ("weight", "bias"):
        return None
    if base in _GLOBAL:
        return f"{_GLOBAL[base]}.{suffix}"
    m = re.fullmatch(r"blk\.(\d+)\.(\w+)", base)
    if m and m.group(2) in _LAYER:
        return f"model.layers.{m.group(1)}.{_LAYER[m.group(2)]}.{suffix}"
    return None


def hf_to_gguf_name(name: str) -> str:
    base, _, suffix = name.rpartition(".")
    if base in _GLOBAL_INV:
        return f"{_GLOBAL_INV[base]}.{suffix}"
    m = re.fullmatch(r"model\.layers\.(\d+)\.(.+)", base)
    if m and m.group(2) in _LAYER_INV:
        return f"blk.{m.group(1)}.{_LAYER_INV[m.group(2)]}.{suffix}"
    raise ValueError(f"no GGUF name for tensor {name!r}")


def permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """Hugging Face row order -> llama.cpp's (as convert_hf_to_gguf.py does)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp row order -> Hugging Face's; the inverse of `permute_qk`."""
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


# ----------------------------------------------------------------------------- pre-tokenizers

_GPT2_RE = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_LLAMA3_RE = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
              r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_RE = _LLAMA3_RE.replace(r"\p{N}{1,3}", r"\p{N}")

# name -> (regexes llama.cpp applies in turn, BPE ignore_merges); from llama-vocab.cpp.
PRE_TOKENIZERS: dict[str, tuple[list[str], bool]] = {
    "gpt-2": ([_GPT2_RE], False),
    "smollm": ([r"\p{N}", _GPT2_RE], False),
    "dbrx": ([_LLAMA3_RE], False),
    "llama-bpe": ([_LLAMA3_RE], True),
    "qwen2": ([_QWEN2_RE], False),
    "default": ([r"[\p{P}\$\+<=>\^~\|]+", _GPT2_RE, r"\p{N}+", r"[0-9][0-9][0-9]"], False),
}
_PRE_ALIASES = {
    "gpt2": "gpt-2", "phi-2": "gpt-2", "mpt": "gpt-2", "olmo": "gpt-2",
    "starcoder": "smollm", "refact": "smollm", "command-r": "smollm", "codeshell": "smollm",
    "exaone": "smollm", "minerva": "smollm",
    "llama3": "llama-bpe", "llama-v3": "llama-bpe",
    "smaug-bpe": "dbrx", "chatglm-bpe": "dbrx",
    "stablelm2": "qwen2",
}
# Strings on which pre-tokenizers that differ at all differ (contractions, digit runs,
# whitespace runs before words and newlines, punctuation, non-Latin scripts).
_PROBES = [
    "Hello world! It's 2024, isn't it? I'VE got 1234567 apples & 89 pears.",
    "  leading spaces\n\n\ttabs\r\n  trailing   \n   x  ",
    "déjà vu, naïve café; 北京是中国的首都。 Привет, мир! 😀👍 …",
    "a+b=c; x^2 <= y|z ~w $5.00 #tag @user foo_bar(baz)[0]{1}",
    "price:12.50USD id=a1b2c3 v2.0.1 x86_64 3.14159",
    "'s 's 'S 'll 'LL 'd 're 've 'm don't WON'T",
]


def _pre_tokenizer(name: str):
    from tokenizers import Regex, pre_tokenizers

    regexes, _ = PRE_TOKENIZERS[name]
    splits = [pre_tokenizers.Split(Regex(r), behavior="isolated", invert=False) for r in regexes]
    return pre_tokenizers.Sequence(
        splits + [pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)])


def _pieces(pre, texts=_PROBES) -> list[list[str]]:
    return [[p for p, _ in pre.pre_tokenize_str(t)] for t in texts]


def detect_pre_tokenizer(hf_tokenizer) -> str | None:
    """The llama.cpp pre-tokenizer name that splits text as `hf_tokenizer` does, or None."""
    if hf_tokenizer.pre_tokenizer is None:
        return None
    ours = _pieces(hf_tokenizer.pre_tokenizer)
    ignore_merges = bool(json.loads(hf_tokenizer.to_str())["model"].get("ignore_merges", False))
    for name, (_, im) in PRE_TOKENIZERS.items():
        if im == ignore_merges and _pieces(_pre_tokenizer(name)) == ours:
            return name
    return None


# ----------------------------------------------------------------------------- reading


@dataclass
class GGUFModel:
    config: ModelConfig
    tensors: dict[str, torch.Tensor]  # Hugging Face names, float32
    tokenizer: Tokenizer | None
    info: dict = field(default_factory=dict)  # name, file type, tensor types, tokenizer notes


def _field(reader, key: str, default=None):
    f = reader.fields.get(key)
    return default if f is None else f.contents()


def _f32(x) -> float:
    """A float32 metadata value as the shortest decimal that rounds to it (1e-05, not
    9.999999747378752e-06), so a value survives export -> import unchanged."""
    return float(np.format_float_positional(np.float32(x), unique=True, trim="-"))


def _scalar(v, key):
    if isinstance(v, (list, tuple)):  # per-layer arrays (some exporters); all equal or unsupported
        if len(set(v)) != 1:
            raise ValueError(f"unsupported GGUF: {key} varies by layer ({sorted(set(v))})")
        v = v[0]
    return v


def _read_config(reader, names: set[str], vocab_rows: int) -> ModelConfig:
    arch = _field(reader, "general.architecture")
    if arch != ARCH:
        raise ValueError(f"unsupported GGUF architecture {arch!r}: gptlab imports plain Llama-family "
                         "models (general.architecture = 'llama'; SmolLM, TinyLlama, Llama 2/3 "
                         "without rope scaling, Mistral 7B v0.1)")

    def get(key, default=None, required=False):
        v = _field(reader, f"{ARCH}.{key}")
        if v is None:
            if required:
                raise ValueError(f"GGUF metadata key {ARCH}.{key} is missing")
            return default
        return _scalar(v, f"{ARCH}.{key}")

    hidden, n_head = int(get("embedding_length", required=True)), int(get("attention.head_count", required=True))
    n_kv = int(get("attention.head_count_kv", n_head))
    head_dim = hidden // n_head

    def bad(what):
        raise ValueError(f"unsupported GGUF: {what} (gptlab.model implements plain Llama)")

    for key in ("rope.dimension_count", "attention.key_length", "attention.value_length"):
        if get(key, head_dim) != head_dim:
            bad(f"{ARCH}.{key} = {get(key)} != embedding_length / head_count = {head_dim}")
    scaling = get("rope.scaling.type")
    if scaling not in (None, "none") and not (scaling == "linear" and get("rope.scaling.factor", 1.0) == 1.0):
        bad(f"rope scaling {scaling!r}")
    if "rope_freqs.weight" in names:
        bad("per-dimension rope frequencies (rope_freqs.weight, Llama 3.1-style rope scaling)")
    if get("expert_count", 0):
        bad(f"mixture of experts ({get('expert_count')} experts)")
    if any(n.endswith(".bias") for n in names):
        bad("bias tensors")
    return ModelConfig(
        vocab_size=int(get("vocab_size", vocab_rows)),
        hidden_size=hidden,
        intermediate_size=int(get("feed_forward_length", required=True)),
        num_hidden_layers=int(get("block_count", required=True)),
        num_attention_heads=n_head,
        num_key_value_heads=n_kv,
        max_position_embeddings=int(get("context_length", 2048)),
        rope_theta=_f32(get("rope.freq_base", 10000.0)),
        rms_norm_eps=_f32(get("attention.layer_norm_rms_epsilon", 1e-5)),
        tie_word_embeddings="output.weight" not in names,
    )


def _dequantize(t) -> np.ndarray:
    """A reader tensor as float32 in numpy (row-major, Hugging Face) shape."""
    import gguf

    shape = tuple(int(d) for d in reversed(t.shape.tolist()))
    qtype = gguf.GGMLQuantizationType(t.tensor_type)
    if qtype in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16,
                 gguf.GGMLQuantizationType.F64):
        arr = np.asarray(t.data).astype(np.float32)  # copies out of the memory map
    else:
        try:
            arr = gguf.quants.dequantize(np.asarray(t.data), qtype)
        except NotImplementedError:
            raise ValueError(f"tensor {t.name}: the installed gguf package cannot dequantize "
                             f"{qtype.name}; requantize the file (e.g. llama-quantize ... Q8_0)") from None
    return arr.reshape(shape)


def _open_reader(path: Path):
    """gguf.GGUFReader, with a damaged or truncated file as one clear line (the reader
    itself fails with IndexError, UnicodeDecodeError, ... deep inside its parser)."""
    import gguf

    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such GGUF file")
    try:
        return gguf.GGUFReader(str(path))
    except Exception as e:  # noqa: BLE001 - any parse failure means the same to the user
        detail = (str(e).strip().splitlines() or [""])[0][:200]
        raise ValueError(f"{path}: not a readable GGUF file: its header or tensor table is "
                         f"damaged or truncated ({type(e).__name__}: {detail})") from None


def read_gguf(path: str | Path) -> GGUFModel:
    """Config, float32 tensors (HF names, HF q/k order) and tokenizer of a Llama GGUF.

    A damaged file is a ValueError naming it: the reader parses lazily, so damaged
    metadata can also surface while the fields are read."""
    path = Path(path)
    reader = _open_reader(path)
    try:
        return _read_model(reader, path)
    except (IndexError, KeyError, TypeError, OverflowError, UnicodeDecodeError) as e:
        detail = (str(e).strip().splitlines() or [""])[0][:200]
        raise ValueError(f"{path}: damaged GGUF metadata ({type(e).__name__}: {detail})") from None


def _read_model(reader, path: Path) -> GGUFModel:
    import gguf

    by_name = {t.name: t for t in reader.tensors}
    if "token_embd.weight" not in by_name:
        raise ValueError(f"{path}: no token_embd.weight tensor; not a Llama GGUF")
    vocab_rows = int(by_name["token_embd.weight"].shape[-1])
    config = _read_config(reader, set(by_name), vocab_rows)
    tensors, unknown = {}, []
    for name, t in by_name.items():
        hf = gguf_to_hf_name(name)
        if hf is None:
            unknown.append(name)
            continue
        w = _dequantize(t)
        if hf.endswith("q_proj.weight"):
            w = unpermute_qk(w, config.num_attention_heads)
        elif hf.endswith("k_proj.weight"):
            w = unpermute_qk(w, config.num_key_value_heads)
        tensors[hf] = torch.from_numpy(np.ascontiguousarray(w, dtype=np.float32))
    if unknown:
        raise ValueError(f"{path}: tensors gptlab does not know how to load: {unknown[:5]}"
                         f"{' ...' if len(unknown) > 5 else ''}")
    tokenizer, tok_info = _read_tokenizer(reader, path, config)
    info = {
        "name": _field(reader, "general.name"),
        "file_type": _field(reader, "general.file_type"),
        "tensor_types": dict(Counter(gguf.GGMLQuantizationType(t.tensor_type).name for t in reader.tensors)),
        **tok_info,
    }
    return GGUFModel(config, tensors, tokenizer, info)


# ----------------------------------------------------------------------------- tokenizer in


def _read_tokenizer(reader, path: Path, config: ModelConfig) -> tuple[Tokenizer | None, dict]:
    kind = _field(reader, "tokenizer.ggml.model")
    if kind is None:
        warnings.warn(f"{path}: no tokenizer in the GGUF metadata; the checkpoint gets none", stacklevel=3)
        return None, {"tokenizer": None}
    tokens = _field(reader, "tokenizer.ggml.tokens")
    if kind == "gpt2":
        pre = _field(reader, "tokenizer.ggml.pre") or "default"
        name = _PRE_ALIASES.get(pre, pre)
        info = {"tokenizer": "gpt2", "pre_tokenizer": pre}
        if name not in PRE_TOKENIZERS:
            warnings.warn(f"{path}: unknown tokenizer.ggml.pre {pre!r}; splitting text like GPT-2 "
                          "(token ids may differ from llama.cpp's on some text)", stacklevel=3)
            name, info["pre_tokenizer_used"] = "gpt-2", "gpt-2"
        types = _field(reader, "tokenizer.ggml.token_type") or [NORMAL] * len(tokens)
        hf = byte_level_bpe(tokens, _field(reader, "tokenizer.ggml.merges") or [], types, name)
    else:  # sentencepiece ("llama") and others: transformers' own GGUF tokenizer conversion
        hf = _transformers_tokenizer(path, kind)
        info = {"tokenizer": kind, "converted_by": "transformers"}

    def tok(key):
        i = _field(reader, f"tokenizer.ggml.{key}")
        return tokens[int(i)] if i is not None and 0 <= int(i) < len(tokens) else None

    cfg = {"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False,
           "model_max_length": config.max_position_embeddings}
    for key, gkey in (("bos_token", "bos_token_id"), ("eos_token", "eos_token_id"),
                      ("unk_token", "unknown_token_id"), ("pad_token", "padding_token_id")):
        if (t := tok(gkey)) is not None:
            cfg[key] = t
    add_bos = _field(reader, "tokenizer.ggml.add_bos_token")
    cfg["add_bos_token"] = bool(add_bos) if add_bos is not None else kind == "llama"
    cfg["add_eos_token"] = bool(_field(reader, "tokenizer.ggml.add_eos_token") or False)
    template = _field(reader, "tokenizer.chat_template")
    if template:
        cfg["chat_template"] = template
    _set_post_processor(hf, cfg)
    return Tokenizer(hf, cfg), info


def byte_level_bpe(tokens: list[str], merges: list[str], types: list[int], pre: str):
    """A Hugging Face byte-level BPE `tokenizers.Tokenizer` from llama.cpp's vocabulary arrays.

    Ids are the token's index. CONTROL tokens become special added tokens and USER_DEFINED
    ones plain added tokens (matched whole in text, as llama.cpp does)."""
    from tokenizers import AddedToken, Tokenizer as HFTokenizer, decoders, models

    vocab: dict[str, int] = {}
    for i, t in enumerate(tokens):
        vocab.setdefault(t, i)
    if len(vocab) != len(tokens):
        warnings.warn(f"{len(tokens) - len(vocab)} duplicate token strings in the GGUF vocabulary; "
                      "the first id of each is used", stacklevel=3)
    pairs = []
    for m in merges:
        parts = m.split(" ")
        if len(parts) != 2:
            raise ValueError(f"malformed merge {m!r} in tokenizer.ggml.merges")
        pairs.append((parts[0], parts[1]))
    _, ignore_merges = PRE_TOKENIZERS[pre]
    hf = HFTokenizer(models.BPE(vocab=vocab, merges=pairs, ignore_merges=ignore_merges,
                                fuse_unk=False, byte_fallback=False))
    hf.pre_tokenizer = _pre_tokenizer(pre)
    hf.decoder = decoders.ByteLevel()
    special = [AddedToken(tokens[i], special=True, normalized=False)
               for i, ty in enumerate(types) if ty == CONTROL and vocab.get(tokens[i]) == i]
    user = [AddedToken(tokens[i], special=False, normalized=False)
            for i, ty in enumerate(types) if ty == USER_DEFINED and vocab.get(tokens[i]) == i]
    if special:
        hf.add_special_tokens(special)
    if user:
        hf.add_tokens(user)
    if hf.get_vocab_size(with_added_tokens=True) != len(vocab):
        raise RuntimeError("rebuilding the GGUF tokenizer changed the vocabulary size")
    return hf


def _set_post_processor(hf, cfg: dict) -> None:
    """BOS/EOS added on `encode(add_special_tokens=True)` as the GGUF says (llama.cpp's
    add_bos_token), so transformers' AutoTokenizer on the checkpoint behaves like llama.cpp.
    gptlab's own Tokenizer.encode never adds them."""
    from tokenizers import processors

    ids = {k: hf.token_to_id(cfg[k]) for k in ("bos_token", "eos_token") if cfg.get(k)}
    pre = ["bos_token"] if cfg.get("add_bos_token") and "bos_token" in ids else []
    post = ["eos_token"] if cfg.get("add_eos_token") and "eos_token" in ids else []
    if not pre and not post:
        hf.post_processor = None
        return
    names = [cfg[k] for k in pre], [cfg[k] for k in post]
    single = " ".join(names[0] + ["$A"] + names[1])
    pair = " ".join(names[0] + ["$A"] + names[1] + names[0] + ["$B:1"] + names[1])
    hf.post_processor = processors.TemplateProcessing(
        single=single, pair=pair, special_tokens=[(cfg[k], ids[k]) for k in pre + post])


def _transformers_tokenizer(path: Path, kind: str):
    try:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    except Exception as e:  # noqa: BLE001 - re-raised with the context a user needs
        raise ValueError(f"{path}: cannot rebuild its {kind!r} tokenizer (transformers: {e})") from e
    return tok.backend_tokenizer


# ----------------------------------------------------------------------------- writing

DTYPES = ("f32", "f16", "q8_0")


def _tokenizer_arrays(tok: Tokenizer, n_vocab: int) -> dict:
    """tokens, token types and merges for tokenizer.ggml.*, padded to the model's vocab."""
    data = json.loads(tok.to_json())
    model = data["model"]
    if model.get("type") != "BPE" or model.get("byte_fallback") or not _is_byte_level(data):
        raise NotImplementedError(
            "GGUF export supports byte-level BPE tokenizers (gptlab's own, SmolLM2, Llama 3, "
            "GPT-2 style); this one is not. Export to Hugging Face format (--to hf) and convert "
            "it with llama.cpp's convert_hf_to_gguf.py instead")
    if tok.vocab_size > n_vocab:
        raise ValueError(f"the tokenizer has {tok.vocab_size} tokens but the model only {n_vocab} embeddings")
    added = {a["id"]: a for a in data.get("added_tokens", [])}
    tokens, types = [], []
    for i in range(n_vocab):
        t = tok.id_to_token(i)
        if t is None:  # embedding rows beyond the tokenizer (vocab padded for speed)
            tokens.append(f"[PAD{i}]")
            types.append(UNUSED)
        else:
            tokens.append(t)
            types.append(NORMAL if i not in added else CONTROL if added[i].get("special") else USER_DEFINED)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    return {"tokens": tokens, "types": types, "merges": merges, "json": data}


def _is_byte_level(data: dict) -> bool:
    dec = data.get("decoder") or {}
    kinds = [dec.get("type")] + [d.get("type") for d in dec.get("decoders", [])]
    return "ByteLevel" in kinds


def _add_tokenizer(w, tok: Tokenizer, n_vocab: int) -> dict:
    from tokenizers import Tokenizer as HFTokenizer

    arr = _tokenizer_arrays(tok, n_vocab)
    hf = HFTokenizer.from_str(tok.to_json())
    pre = detect_pre_tokenizer(hf)
    if pre is None:
        warnings.warn("the tokenizer's pre-tokenizer matches none llama.cpp knows; writing "
                      "tokenizer.ggml.pre = 'default' (llama.cpp may split text differently)", stacklevel=3)
        pre = "default"
    if arr["json"].get("normalizer"):
        warnings.warn("the tokenizer has a normalizer, which GGUF cannot express; llama.cpp skips it",
                      stacklevel=3)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(arr["tokens"])
    w.add_token_types(arr["types"])
    w.add_token_merges(arr["merges"])
    if tok.bos_id is not None:
        w.add_bos_token_id(tok.bos_id)
    w.add_eos_token_id(tok.eos_id)
    unk = tok.config.get("unk_token")
    unk_id = tok.token_to_id(unk if isinstance(unk, str) else unk.get("content")) if unk else None
    if unk_id is not None:
        w.add_unk_token_id(unk_id)
    w.add_pad_token_id(tok.pad_id)
    if tok.im_end_id is not None and tok.im_end_id != tok.eos_id:
        w.add_eot_token_id(tok.im_end_id)  # llama.cpp ends a chat turn here
    w.add_add_bos_token(bool(tok.config.get("add_bos_token", False)))
    w.add_add_eos_token(bool(tok.config.get("add_eos_token", False)))
    w.add_chat_template(tok.chat_template)
    return {"pre_tokenizer": pre, "tokens": len(arr["tokens"])}


def _tensor_payload(name: str, w: np.ndarray, dtype: str):
    """(array to write, raw ggml type or None) for one tensor; 1-D tensors stay F32."""
    import gguf

    if w.ndim == 1 or dtype == "f32":
        return w.astype(np.float32), None
    if dtype == "q8_0":
        block = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q8_0][0]
        if w.shape[-1] % block == 0:
            q = gguf.quants.quantize(w.astype(np.float32), gguf.GGMLQuantizationType.Q8_0)
            return q, gguf.GGMLQuantizationType.Q8_0
        warnings.warn(f"{name}: rows of {w.shape[-1]} are not a multiple of {block}; stored as F16",
                      stacklevel=3)
    return w.astype(np.float16), None


def write_gguf(out: str | Path, model, tokenizer: Tokenizer | None, *, dtype: str = "f16",
               name: str | None = None) -> dict:
    """Write `model` (a gptlab GPT) and its tokenizer as a llama.cpp GGUF, atomically.

    Returns a summary (path, file type, tensor count, tokenizer pre-tokenizer)."""
    import gguf

    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    cfg: ModelConfig = model.config
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{uuid.uuid4().hex[:8]}")
    ftype = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
             "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[dtype]
    w = gguf.GGUFWriter(str(tmp), ARCH)
    try:
        w.add_type("model")
        w.add_name(name or "gptlab model")
        w.add_file_type(int(ftype))
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
        w.add_vocab_size(cfg.vocab_size)
        w.add_context_length(cfg.max_position_embeddings)
        w.add_embedding_length(cfg.hidden_size)
        w.add_block_count(cfg.num_hidden_layers)
        w.add_feed_forward_length(cfg.intermediate_size)
        w.add_head_count(cfg.num_attention_heads)
        w.add_head_count_kv(cfg.num_key_value_heads)
        w.add_key_length(cfg.head_dim)
        w.add_value_length(cfg.head_dim)
        w.add_rope_dimension_count(cfg.head_dim)
        w.add_rope_freq_base(float(cfg.rope_theta))
        w.add_layer_norm_rms_eps(float(cfg.rms_norm_eps))
        tok_info = _add_tokenizer(w, tokenizer, cfg.vocab_size) if tokenizer is not None else {}
        if tokenizer is None:
            warnings.warn("no tokenizer: the GGUF will not load in llama.cpp without one", stacklevel=2)
        n = 0
        for hf_name, t in model.state_dict().items():
            if hf_name == "lm_head.weight" and cfg.tie_word_embeddings:
                continue  # llama.cpp reuses token_embd when output.weight is absent
            arr = t.detach().to("cpu", torch.float32).numpy()
            if hf_name.endswith("q_proj.weight"):
                arr = permute_qk(arr, cfg.num_attention_heads)
            elif hf_name.endswith("k_proj.weight"):
                arr = permute_qk(arr, cfg.num_key_value_heads)
            data, raw = _tensor_payload(hf_name, arr, dtype)
            w.add_tensor(hf_to_gguf_name(hf_name), data, raw_dtype=raw)
            n += 1
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, out)
    except BaseException:
        w.close()
        tmp.unlink(missing_ok=True)
        raise
    return {"path": str(out), "dtype": dtype, "file_type": int(ftype), "tensors": n, **tok_info}
