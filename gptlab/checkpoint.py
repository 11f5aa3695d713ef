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
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import tempfile
import time
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
from safetensors.torch import load_file, save_file

import gptlab
from gptlab.tokenizer import Tokenizer

WEIGHTS_NAME = "model.safetensors"
WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
# Keys some older HF Llama checkpoints carry that are recomputed, never loaded.
_IGNORED_KEY_SUFFIXES = ("rotary_emb.inv_freq",)


@dataclass
class Checkpoint:
    model: Any  # gptlab.model.GPT
    tokenizer: Tokenizer | None
    meta: dict = field(default_factory=dict)
    path: Path | None = None


# ---------------------------------------------------------------------------------------
# atomic directories (also used by gptlab.data.loaders.build_shards)
# ---------------------------------------------------------------------------------------

def _fsync_tree(root: Path) -> None:
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            with open(os.path.join(dirpath, name), "rb") as f:
                os.fsync(f.fileno())
        _fsync_dir(Path(dirpath))


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # some platforms cannot open directories; best effort
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _swap_in(tmp: Path, out: Path) -> None:
    """Rename tmp to out; an existing out is renamed away first and removed afterwards."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{uuid.uuid4().hex[:8]}")
        os.rename(out, old)
    try:
        os.rename(tmp, out)
    except BaseException:
        if old is not None:
            os.rename(old, out)
        raise
    _fsync_dir(out.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_dir(out_dir: str | Path, markers: tuple[str, ...] = ()) -> Iterator[Path]:
    """Yield an empty temporary directory that replaces `out_dir` when the block succeeds.

    If the block raises, the temporary directory is deleted and `out_dir` is untouched.
    An existing non-empty `out_dir` is only replaced when it holds one of `markers`
    (when given), so a wrong path cannot wipe an unrelated directory.
    """
    out = Path(out_dir).absolute()
    if markers and out.is_dir() and any(out.iterdir()) and not any((out / m).exists() for m in markers):
        raise FileExistsError(f"{out} exists and does not look like a gptlab output "
                              f"(none of {', '.join(markers)}); refusing to replace it")
    recover_dir(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it 0700
        yield tmp
        _fsync_tree(tmp)
        _swap_in(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def recover_dir(path: str | Path) -> bool:
    """If `path` is missing but a backup from an interrupted swap exists, restore it."""
    path = Path(path).absolute()
    if path.exists() or not path.parent.is_dir():
        return False
    backups = sorted(path.parent.glob(f".{glob.escape(path.name)}.old-*"), key=lambda p: p.stat().st_mtime)
    if not backups:
        return False
    os.rename(backups[-1], path)
    warnings.warn(f"restored {path} from {backups[-1].name} (an earlier save was interrupted)",
                  stacklevel=2)
    return True


# ---------------------------------------------------------------------------------------
# save
# ---------------------------------------------------------------------------------------

def _weights_for_saving(model) -> dict[str, torch.Tensor]:
    """HF tensor names -> contiguous CPU tensors; a tied lm_head is left out, as HF does
    (safetensors refuses two names for one storage; HF re-ties on load)."""
    sd = model.state_dict()
    if model.config.tie_word_embeddings:
        sd.pop("lm_head.weight", None)
    return {k: v.detach().to("cpu").contiguous() for k, v in sd.items()}


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
                    train_state: dict | None = None, meta: dict | None = None) -> Path:
    """Write a checkpoint directory atomically; returns its path.

    `meta` goes to gptlab.json (keys such as stage, parent, metrics, data hashes);
    `created` and `gptlab_version` are filled in. `train_state` (optimizer, step, RNG,
    loader state, ...) goes to train_state.pt via torch.save.
    """
    out = Path(out_dir)
    with atomic_dir(out, markers=("config.json", "gptlab.json")) as tmp:
        cfg = _config_dict(model, tokenizer)
        _write_json(tmp / "config.json", cfg)
        save_file(_weights_for_saving(model), str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
        _write_json(tmp / "generation_config.json", _generation_config(cfg, tokenizer))
        if tokenizer is not None:
            tokenizer.save(tmp, model_max_length=cfg.get("max_position_embeddings"))
        info = {"stage": None, "parent": None, "metrics": {}, **(meta or {}),
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "gptlab_version": gptlab.__version__}
        _write_json(tmp / "gptlab.json", info)
        if train_state is not None:
            torch.save(train_state, tmp / "train_state.pt")
    return out


# ---------------------------------------------------------------------------------------
# load
# ---------------------------------------------------------------------------------------

def _read_config(path: Path) -> dict:
    p = path / "config.json"
    if not p.is_file():
        raise FileNotFoundError(f"{path} is not a model directory: config.json is missing")
    cfg = json.loads(p.read_text())
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


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu",
                    dtype: torch.dtype = torch.float32) -> Checkpoint:
    """Load a gptlab checkpoint or a plain HF Llama directory into a `GPT` (in eval mode).

    The tokenizer is None when the directory has no tokenizer.json; meta is {} for plain
    HF directories.
    """
    from gptlab.model import GPT, ModelConfig  # deferred: keeps atomic_dir import-light

    path = Path(path)
    recover_dir(path)
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint directory {path} does not exist")
    config = ModelConfig.from_hf_dict(_read_config(path))
    tensors: dict[str, torch.Tensor] = {}
    for f in _weight_files(path):
        tensors.update(load_file(str(f), device="cpu"))
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
    meta_file = path / "gptlab.json"
    meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
    return Checkpoint(model=model, tokenizer=tokenizer, meta=meta, path=path)


def load_train_state(path: str | Path) -> dict | None:
    """The train_state.pt of a checkpoint, or None when there is none.

    It is a pickle (optimizer state, RNG states, ...), so only resume from directories you
    trust -- the same caveat as any torch.save file.
    """
    p = Path(path) / "train_state.pt"
    if not p.is_file():
        return None
    return torch.load(p, map_location="cpu", weights_only=False)
