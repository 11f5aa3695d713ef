"""Partial and LoRA fine-tuning, shared by SFT and DPO.

- :func:`freeze_below`: train only the top blocks (cheaper than LoRA on a CPU);
- :func:`apply_lora`: peft LoRA adapters (Hu et al. 2021, arXiv:2106.09685) on the given
  projections, optionally with trainable rows for the chat's special tokens;
- :func:`lora_state_dict`, :func:`plain_model`: what a checkpoint saves of an adapter model;
- :func:`save_final`: a stage's final directory, merged or base + adapter files.
"""
from __future__ import annotations

import copy
import shutil
from pathlib import Path

from gptlab.chat import stop_token_ids
from gptlab.checkpoint import save_checkpoint
from gptlab.settings import LORA_TARGETS  # noqa: F401  (re-exported: --lora-targets' default)


def freeze_below(model, top: int) -> None:
    """Train only the top `top` blocks and the final norm. Nothing below them needs a
    gradient, so autograd records nothing there and the backward pass is ~top/layers of a
    full one: on SmolLM2-135M (30 blocks) the top 10 make a step ~1.8x cheaper than full
    fine-tuning, cheaper than LoRA (whose backward still crosses every block)."""
    layers = model.model.layers
    if top > len(layers):
        raise ValueError(f"--train-layers {top} > the model's {len(layers)} blocks")
    for p in model.parameters():
        p.requires_grad_(False)
    for module in (*layers[len(layers) - top:], model.model.norm):
        for p in module.parameters():
            p.requires_grad_(True)


def chat_token_ids(tokenizer, vocab_size: int) -> list[int]:
    """The special tokens a chat uses: <|im_start|>, <|im_end|>, eos, end-of-turn."""
    ids = {tokenizer.im_start_id, tokenizer.im_end_id, *stop_token_ids(tokenizer)}
    return sorted(i for i in ids if i is not None and 0 <= i < vocab_size)


def apply_lora(model, cfg, token_ids: list[int] | None = None):
    """Wrap a GPT in a peft LoRA model: base weights frozen, adapters on
    ``cfg.lora_targets``, and (``token_ids``) trainable embedding and output rows for
    those tokens only (peft's trainable tokens; not with tied embeddings, whose merge
    would change the output rows the adapter model leaves alone)."""
    from peft import LoraConfig, get_peft_model  # deferred: peft loads transformers (seconds)

    targets = [t.strip() for t in cfg.lora_targets.split(",") if t.strip()]
    alpha = cfg.lora_alpha if cfg.lora_alpha is not None else 2 * cfg.lora_r
    tokens = None
    if token_ids and not model.config.tie_word_embeddings:
        tokens = {"embed_tokens": list(token_ids), "lm_head": list(token_ids)}
    lcfg = LoraConfig(r=cfg.lora_r, lora_alpha=alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=targets, bias="none", trainable_token_indices=tokens)
    return get_peft_model(model, lcfg)


def lora_state_dict(peft_model) -> dict:
    """The adapter tensors (what LoRA trains), on CPU."""
    from peft import get_peft_model_state_dict
    return {k: v.detach().cpu().clone() for k, v in get_peft_model_state_dict(peft_model).items()}


def plain_model(peft_model, merged: bool):
    """A plain GPT copy holding the base weights, or the base weights with the adapters
    merged in (W + B A alpha / r, trained token rows). The live model is untouched."""
    clone = copy.deepcopy(peft_model)
    return (clone.merge_and_unload() if merged else clone.unload()).eval()


def save_final(path: Path, model, weights, tokenizer, info: dict, *, adapter_only: bool) -> None:
    """A stage's final model: `weights` as a checkpoint, or with ``adapter_only`` (LoRA
    without --merge) the base weights plus peft's adapter files beside them."""
    if adapter_only:
        save_checkpoint(path, plain_model(model, merged=False), tokenizer, meta=info)
        tmp = path.with_name(f".{path.name}.adapter-tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(str(tmp))  # adapter_config.json + adapter_model.safetensors
        for f in tmp.iterdir():
            if f.name != "README.md":  # peft's model card template
                f.replace(path / f.name)
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        save_checkpoint(path, weights, tokenizer, meta=info)
