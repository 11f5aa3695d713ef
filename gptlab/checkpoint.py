"""Checkpoint directories: save and load, atomically, in Hugging Face's layout.

A checkpoint is an HF model directory -- `config.json` (LlamaForCausalLM fields),
`model.safetensors` (HF tensor names), `generation_config.json`, `tokenizer.json`,
`tokenizer_config.json` -- plus gptlab's `gptlab.json` (stage, parent, metrics, ...) and,
for resuming, `train_state.pt`. So `transformers.AutoModelForCausalLM.from_pretrained(dir)`
loads a gptlab checkpoint unchanged, and `load_checkpoint` loads a plain HF Llama
directory (single-file or sharded safetensors) unchanged.

Saving is atomic: everything is written and fsynced in a hidden temporary sibling
directory, which is then renamed into place (an existing checkpoint is first renamed
away and deleted only once the new one is in place). A crash at any point leaves either
the old checkpoint or the new one, never a half-written directory; `load_checkpoint`
even restores the old one if the crash fell between the two renames.

Integrity: gptlab.json lists the sha256 of every other file of the directory (`files`),
and loading checks them, so a file damaged on disk (overwritten bytes, a truncated copy)
is a one-line `CheckpointError` naming it rather than a model that silently computes NaN.
Weights with NaN or inf are never written (`NonFiniteError`). Directories without the
list (plain HF ones, older gptlab ones) are loaded as before; a file that cannot be parsed
is still a one-line error naming it.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

import gptlab
from gptlab.fileio import atomic_dir, recover_dir  # noqa: F401  (atomic_dir: re-exported for callers)
from gptlab.model import GPT, ModelConfig
from gptlab.tokenizer import Tokenizer

WEIGHTS_NAME = "model.safetensors"
WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
META_NAME = "gptlab.json"
TRAIN_STATE_NAME = "train_state.pt"
# Keys some older HF Llama checkpoints carry that are recomputed, never loaded.
_IGNORED_KEY_SUFFIXES = ("rotary_emb.inv_freq",)


class CheckpointError(ValueError):
    """A damaged or unreadable checkpoint file; the message (one line) names the file."""


class NonFiniteError(ValueError):
    """NaN or inf in a loss or in weights: training stops rather than save them."""


@dataclass
class Checkpoint:
    model: Any  # gptlab.model.GPT
    tokenizer: Tokenizer | None
    meta: dict = field(default_factory=dict)
    path: Path | None = None


# ---------------------------------------------------------------------------------------
# save
# ---------------------------------------------------------------------------------------

def _weights_for_saving(model, state: dict | None = None) -> dict[str, torch.Tensor]:
    """HF tensor names -> contiguous CPU tensors; a tied lm_head is left out, as HF does
    (safetensors refuses two names for one storage; HF re-ties on load)."""
    sd = dict(model.state_dict() if state is None else state)
    if model.config.tie_word_embeddings:
        sd.pop("lm_head.weight", None)
    return {k: v.detach().to("cpu").contiguous() for k, v in sd.items()}


def non_finite_tensors(tensors: dict[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors that hold a NaN or an inf."""
    return [k for k, v in tensors.items()
            if v.is_floating_point() and not bool(torch.isfinite(v).all())]


def _refuse_non_finite(tensors: dict[str, torch.Tensor], where: Path) -> None:
    bad = non_finite_tensors(tensors)
    if bad:
        raise NonFiniteError(f"refusing to save {where}: NaN or inf in {len(bad)} weight "
                             f"tensor(s) ({', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''})")


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _file_hashes(root: Path) -> dict[str, str]:
    """sha256 of every file under root but gptlab.json itself, by relative path."""
    return {p.relative_to(root).as_posix(): file_sha256(p) for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != META_NAME}


def _config_dict(model, tokenizer: Tokenizer | None) -> dict:
    cfg = model.config.to_hf_dict()
    if tokenizer is not None:  # fill ids the model config left open
        for key, value in (("bos_token_id", tokenizer.bos_id), ("eos_token_id", tokenizer.eos_id),
                           ("pad_token_id", tokenizer.pad_id)):
            if cfg.get(key) is None:
                cfg[key] = value
    # The dtype the tensors are actually stored in (e.g. bfloat16 after a bf16 run).
    stored = str(next(model.parameters()).dtype).removeprefix("torch.")
    cfg["torch_dtype"] = stored
    if "dtype" in cfg:
        cfg["dtype"] = stored
    return cfg


def _generation_config(cfg: dict, tokenizer: Tokenizer | None) -> dict:
    """eos_token_id lists <|im_end|> too, so HF generate stops at the end of a chat turn."""
    if tokenizer is None:
        return {"bos_token_id": cfg.get("bos_token_id"), "eos_token_id": cfg.get("eos_token_id"),
                "pad_token_id": cfg.get("pad_token_id"), "_from_model_config": False}
    eos = [tokenizer.eos_id]
    if tokenizer.im_end_id is not None and tokenizer.im_end_id != tokenizer.eos_id:
        eos.append(tokenizer.im_end_id)
    return {"bos_token_id": tokenizer.bos_id, "eos_token_id": eos if len(eos) > 1 else eos[0],
            "pad_token_id": tokenizer.pad_id, "_from_model_config": False}


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")


def save_checkpoint(out_dir: str | Path, model, tokenizer: Tokenizer | None, *,
                    train_state: dict | None = None, meta: dict | None = None,
                    weights: dict[str, torch.Tensor] | None = None) -> Path:
    """Write a checkpoint directory atomically; returns its path.

    `meta` goes to gptlab.json (keys such as stage, parent, metrics, data hashes);
    `created` and `gptlab_version` are filled in. `train_state` (optimizer, step, RNG,
    loader state, ...) goes to train_state.pt via torch.save. gptlab.json also gets
    `files`: the sha256 of every other file, checked by `load_checkpoint`. Weights with
    NaN or inf raise `NonFiniteError` and nothing is written. `weights`: the model's full
    state dict when the caller has it already (gathered from FSDP shards); else read here.
    """
    out = Path(out_dir)
    weights = _weights_for_saving(model, weights)
    _refuse_non_finite(weights, out)
    with atomic_dir(out, markers=("config.json", META_NAME)) as tmp:
        cfg = _config_dict(model, tokenizer)
        _write_json(tmp / "config.json", cfg)
        save_file(weights, str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
        _write_json(tmp / "generation_config.json", _generation_config(cfg, tokenizer))
        if tokenizer is not None:
            tokenizer.save(tmp, model_max_length=cfg.get("max_position_embeddings"))
        if train_state is not None:
            torch.save(train_state, tmp / TRAIN_STATE_NAME)
        info = {"stage": None, "parent": None, "metrics": {}, **(meta or {}),
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "gptlab_version": gptlab.__version__, "files": _file_hashes(tmp)}
        _write_json(tmp / META_NAME, info)
    return out


# ---------------------------------------------------------------------------------------
# load
# ---------------------------------------------------------------------------------------

def _read_config(path: Path) -> dict:
    p = path / "config.json"
    if not p.is_file():
        raise FileNotFoundError(f"{path} is not a model directory: config.json is missing")
    try:
        cfg = json.loads(p.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{p}: damaged ({_first_line(e)})") from None
    model_type, archs = cfg.get("model_type"), cfg.get("architectures") or []
    if model_type != "llama" or any(a != "LlamaForCausalLM" for a in archs):
        raise ValueError(f"{path}: unsupported architecture (model_type={model_type!r}, "
                         f"architectures={archs}); gptlab loads Llama-family LlamaForCausalLM models")
    return cfg


def _weight_files(path: Path) -> list[Path]:
    if (path / WEIGHTS_NAME).is_file():
        return [path / WEIGHTS_NAME]
    index = path / WEIGHTS_INDEX_NAME
    if index.is_file():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        missing = [n for n in names if not (path / n).is_file()]
        if missing:
            raise FileNotFoundError(f"{path}: shard(s) listed in {WEIGHTS_INDEX_NAME} are missing: {missing}")
        return [path / n for n in names]
    hint = " (found pytorch_model.bin: convert it to safetensors first)" if any(path.glob("pytorch_model*.bin")) else ""
    raise FileNotFoundError(f"{path}: no {WEIGHTS_NAME} or {WEIGHTS_INDEX_NAME}{hint}")


def _check_keys(model, tensors: dict[str, torch.Tensor], path: Path) -> None:
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    optional = {"lm_head.weight"} if model.config.tie_word_embeddings else set()
    missing = sorted(set(expected) - set(tensors) - optional)
    unexpected = sorted(k for k in set(tensors) - set(expected) if not k.endswith(_IGNORED_KEY_SUFFIXES))
    mismatched = [f"{k}: file {tuple(tensors[k].shape)} vs model {expected[k]}"
                  for k in sorted(set(tensors) & set(expected)) if tuple(tensors[k].shape) != expected[k]]
    problems = []
    if missing:
        problems.append(f"missing tensors {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    if unexpected:
        problems.append(f"unexpected tensors {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
    if mismatched:
        problems.append(f"shape mismatches (does config.json match the weights?) {mismatched[:5]}")
    if problems:
        raise ValueError(f"{path}: weights do not fit the model: " + "; ".join(problems))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def read_meta(path: str | Path) -> dict:
    """gptlab.json of a checkpoint ({} when there is none); CheckpointError when unreadable."""
    f = Path(path) / META_NAME
    if not f.is_file():
        return {}
    try:
        meta = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{f}: damaged ({_first_line(e)})") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{f}: damaged (not a JSON object)")
    return meta


def verify_files(path: str | Path, names: list[str] | None = None, meta: dict | None = None) -> None:
    """Check the sha256 that gptlab.json records for `names` (default: every listed file).

    Raises CheckpointError naming the first file that is missing or differs. Directories
    that record no hashes (plain HF, older gptlab) pass.
    """
    path = Path(path)
    files = (read_meta(path) if meta is None else meta).get("files") or {}
    for name in (sorted(files) if names is None else [n for n in names if n in files]):
        f = path / name
        if not f.is_file():
            raise CheckpointError(f"{f}: missing (listed in {META_NAME})")
        if file_sha256(f) != files[name]:
            raise CheckpointError(f"{f}: sha256 differs from the one recorded in {META_NAME} "
                                  f"(damaged, or changed after saving)")


def _read_weights(f: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(f), device="cpu")
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error type
        raise CheckpointError(f"{f}: unreadable safetensors file, truncated or damaged "
                              f"({_first_line(e)})") from None


def verify_checkpoint(path: str | Path, *, train_state: bool = True) -> None:
    """Everything a resume needs, checked before anything is loaded into a model:
    recorded hashes, weights that parse and are finite, and (when `train_state`) a
    train_state.pt that loads. Raises CheckpointError / NonFiniteError naming the file."""
    path = Path(path)
    meta = read_meta(path)
    verify_files(path, meta=meta)
    _read_config(path)
    for f in _weight_files(path):
        bad = non_finite_tensors(_read_weights(f))
        if bad:
            raise NonFiniteError(f"{f}: NaN or inf in {len(bad)} tensor(s) ({', '.join(bad[:3])})")
    if train_state and load_train_state(path, verify=False) is None:
        raise CheckpointError(f"{path / TRAIN_STATE_NAME}: missing (needed to resume)")


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu",
                    dtype: torch.dtype = torch.float32) -> Checkpoint:
    """Load a gptlab checkpoint or a plain HF Llama directory into a `GPT` (in eval mode).

    The tokenizer is None when the directory has no tokenizer.json; meta is {} for plain
    HF directories. The sha256 recorded in gptlab.json are checked first (CheckpointError
    naming a damaged file).
    """
    path = Path(path)
    recover_dir(path)
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint directory {path} does not exist")
    meta = read_meta(path)
    verify_files(path, meta=meta)
    config = ModelConfig.from_hf_dict(_read_config(path))
    tensors: dict[str, torch.Tensor] = {}
    for f in _weight_files(path):
        tensors.update(_read_weights(f))
    model = GPT(config).to(dtype=dtype)
    own_keys = set(model.state_dict())
    if config.tie_word_embeddings and "lm_head.weight" not in own_keys:
        tensors.pop("lm_head.weight", None)  # some HF dirs store the tied copy too
    _check_keys(model, tensors, path)
    for k in [k for k in tensors if k.endswith(_IGNORED_KEY_SUFFIXES)]:
        del tensors[k]
    model.load_state_dict(tensors, strict=False)  # strictness checked above (tied lm_head)
    model.to(device).eval()
    tokenizer = Tokenizer.load(path) if (path / "tokenizer.json").is_file() else None
    return Checkpoint(model=model, tokenizer=tokenizer, meta=meta, path=path)


def load_train_state(path: str | Path, *, verify: bool = True) -> dict | None:
    """The train_state.pt of a checkpoint, or None when there is none.

    Its recorded sha256 is checked first (unless `verify` is False); a file that does not
    load is a CheckpointError naming it. It is a pickle (optimizer state, RNG states, ...),
    so only resume from directories you trust -- the same caveat as any torch.save file.
    """
    p = Path(path) / TRAIN_STATE_NAME
    if not p.is_file():
        return None
    if verify:
        verify_files(path, [TRAIN_STATE_NAME])
    try:
        return torch.load(p, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - zip, pickle and EOF errors all mean "damaged"
        raise CheckpointError(f"{p}: unreadable, truncated or damaged ({_first_line(e)})") from None
