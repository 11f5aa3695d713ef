"""Stage settings as dataclasses: the one place a config field gets its command-line help,
`RunSettings`, what every trainer is run with, `TrainSettings`, what the checkpointed
training stages add to it, and `FinetuneSettings`, what fine-tuning a chat model adds.

Torch-free, so any stage's config (pretrain, SFT, DPO, RL, reward, safety, red team,
scaling) can declare its fields without importing the training loop.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass


def cli_field(default, help: str):
    """A dataclass field with a one-line help text; `gptlab.cli_flags.add_dataclass_args`
    turns each such field of a stage's config into a `--flag`."""
    return dataclasses.field(default=default, metadata={"help": help})


def not_used(default, why: str):
    """Redeclares an inherited setting that a stage does not use: the field keeps its
    default, gets no `--flag` (`add_dataclass_args` skips it), and the config refuses any
    other value (`RunSettings.__post_init__`), so nothing is silently ignored."""
    return dataclasses.field(default=default, metadata={"help": why, "cli": False})


@dataclass
class RunSettings:
    """What every trainer is run with: where it writes, its seed, the learning rate, its
    warmup and weight decay, clipping, how often it evaluates, where it runs, the progress bar.

    A stage config inherits these (`class RewardConfig(RunSettings)`), so every stage reads
    them under the same names and the CLI derives the same `--flags` for each (inherited
    fields come first in --help). A stage redeclares a field only to give it another
    default or a more precise help (its own output directory, how its unset learning rate
    is derived), or with `not_used` when it has no use for it."""

    out: str = cli_field("runs/train", "output directory (checkpoints, final model, metrics)")
    seed: int = cli_field(0, "random seed (init, data order and split, sampling)")
    lr: float | None = cli_field(None, "peak AdamW learning rate; unset: the stage's default")
    warmup_steps: int | None = cli_field(None, "linear warmup steps; unset: the stage's default")
    weight_decay: float = cli_field(0.0, "decoupled AdamW weight decay on matrices")
    grad_clip: float | None = cli_field(1.0, "clip the global gradient norm to this (0 = off)")
    eval_every: int = cli_field(100, "validate every N steps (and at the end; 0 = only at the end)")
    device: str = cli_field("auto", "auto, cpu, cuda, cuda:N or mps")
    progress: bool = cli_field(True, "show a progress bar")

    def __post_init__(self):
        for f in dataclasses.fields(self):
            if f.metadata.get("cli") is False and getattr(self, f.name) != f.default:
                raise ValueError(f"{type(self).__name__} has no use for {f.name} "
                                 f"({f.metadata['help']}); got {getattr(self, f.name)!r}")


@dataclass
class TrainSettings(RunSettings):
    """`RunSettings` plus what a checkpointed, resumable stage is run with: how often it
    saves and how many checkpoints it keeps, resume, precision, torch.compile and the
    optional TensorBoard / W&B logs. Pretrain, SFT, DPO and RL inherit it; the reward model
    (trained in one go, written once at the end) inherits `RunSettings`."""

    save_every: int = cli_field(500, "checkpoint every N steps (and at the end; 0 = only at the end)")
    keep_checkpoints: int = cli_field(2, "how many step checkpoints to keep under out/ckpt (0 = all)")
    dtype: str = cli_field("auto", "auto (bf16 autocast on CUDA, else fp32), bfloat16 or float32")
    compile: bool = cli_field(False, "torch.compile the model")
    resume: bool = cli_field(False, "continue from the newest checkpoint in out/ckpt (fresh start if none)")
    tensorboard: bool = cli_field(False, "also log to TensorBoard in out/tb (if installed)")
    wandb: str | None = cli_field(None, "also log to this Weights & Biases project (if installed)")


# the projections of a Llama block (our module names match Llama's)
LORA_TARGETS = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"


@dataclass
class FinetuneSettings(TrainSettings):
    """`TrainSettings` plus how a chat model is fine-tuned (SFT, DPO): rows per step and the
    longest row, how long (epochs or max_steps), the learning-rate schedule, and which weights
    train (the top `train_layers` blocks, or LoRA adapters; `gptlab.train.lora` reads these)."""

    batch_size: int = cli_field(32, "rows per optimizer step over all processes: conversations (sft) or preference pairs (dpo)")
    device_batch_size: int = cli_field(16, "rows per micro-batch per process (batch_size / (this x processes) = accumulation steps)")
    seq_len: int | None = cli_field(None, "longest row in tokens (a conversation; a prompt + answer in dpo); unset: the model's context, at most 2048 in sft")
    epochs: float = cli_field(2.0, "passes over the training data when max_steps is unset")
    max_steps: int | None = cli_field(None, "optimizer steps; unset: from epochs")
    schedule: str = cli_field("linear", "after warmup: linear | cosine decay, wsd, constant")
    final_lr_frac: float = cli_field(0.0, "floor of the schedule as a fraction of the peak LR")
    train_layers: int | None = cli_field(None, "full fine-tuning of only the top N transformer blocks and the final norm (embeddings, head and lower blocks frozen, so backward stops at block N from the top); unset: every weight")
    lora_r: int = cli_field(0, "LoRA rank; 0 = full fine-tuning")
    lora_alpha: float | None = cli_field(None, "LoRA alpha (the update is scaled by alpha / r); unset: 2 x lora_r")
    lora_dropout: float = cli_field(0.0, "dropout on the LoRA input")
    lora_targets: str = cli_field(LORA_TARGETS, "comma-separated module names that get LoRA adapters")
    merge: bool = cli_field(True, "LoRA: merge the adapter into out/final's weights (--no-merge: base weights + adapter files)")
