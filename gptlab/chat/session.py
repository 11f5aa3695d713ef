"""A chat session's helpers: fitting a conversation's history into the context, and
loading a chat model (a LoRA adapter merged in)."""
from __future__ import annotations

from pathlib import Path

import torch

from gptlab.chat.render import render_prompt
from gptlab.checkpoint import load_checkpoint


# --------------------------------------------------------------------------- chat sessions


def fit_history(tokenizer, messages: list[dict], budget: int) -> tuple[list[dict], int]:
    """Drop the oldest turns (never a leading system message) until the generation prompt
    has at most ``budget`` tokens. Whole exchanges go: the kept history always starts with
    a user message. Returns (messages, number of messages dropped); the newest user
    message is never dropped, so the prompt can still be over budget."""
    head = messages[:1] if messages and messages[0]["role"] == "system" else []
    rest = list(messages[len(head):])
    dropped = 0
    while len(render_prompt(tokenizer, head + rest)) > budget and len(rest) > 1:
        rest.pop(0)
        dropped += 1
        while len(rest) > 1 and rest[0]["role"] != "user":
            rest.pop(0)
            dropped += 1
    return head + rest, dropped


def load_chat_model(path: str | Path, device: str | torch.device = "cpu",
                    dtype: torch.dtype = torch.float32):
    """``load_checkpoint``, plus a LoRA adapter merged in when the directory has one
    (``adapter_config.json``, written by ``gptlab sft --lora-r N --no-merge``)."""
    ckpt = load_checkpoint(path, device=device, dtype=dtype)
    if (Path(path) / "adapter_config.json").is_file():
        from peft import PeftModel
        ckpt.model = PeftModel.from_pretrained(ckpt.model, str(path)).merge_and_unload().eval()
    return ckpt
