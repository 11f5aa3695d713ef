"""Stage settings as dataclasses: the one place a config field gets its command-line help,
and `TrainSettings`, the settings every training stage shares.

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


@dataclass
class TrainSettings:
    """What every training stage is run with: where it writes, its seed, the learning-rate
    warmup, clipping, how often it evaluates and saves, and where and how it runs.

    A stage config inherits these (`class SFTConfig(TrainSettings)`), so every stage reads
    them under the same names and the CLI derives the same `--flags` for each (inherited
    fields come first in --help). A stage redeclares a field only to give it another
    default or a more precise help (its own output directory, how its unset learning rate
    is derived). PretrainConfig and SFTConfig inherit it; DPO, RL and the reward model do
    not yet."""

    out: str = cli_field("runs/train", "output directory (checkpoints, final model, metrics)")
    seed: int = cli_field(0, "random seed (init, data order and split, sampling)")
    lr: float | None = cli_field(None, "peak AdamW learning rate; unset: the stage's default")
    warmup_steps: int | None = cli_field(None, "linear warmup steps; unset: the stage's default")
    grad_clip: float | None = cli_field(1.0, "clip the global gradient norm to this (0 = off)")
    eval_every: int = cli_field(100, "validate every N steps (and at the end; 0 = only at the end)")
    save_every: int = cli_field(500, "checkpoint every N steps (and at the end; 0 = only at the end)")
    keep_checkpoints: int = cli_field(2, "how many step checkpoints to keep under out/ckpt (0 = all)")
    device: str = cli_field("auto", "auto, cpu, cuda, cuda:N or mps")
    dtype: str = cli_field("auto", "auto (bf16 autocast on CUDA, else fp32), bfloat16 or float32")
    compile: bool = cli_field(False, "torch.compile the model")
    resume: bool = cli_field(False, "continue from the newest checkpoint in out/ckpt (fresh start if none)")
    tensorboard: bool = cli_field(False, "also log to TensorBoard in out/tb (if installed)")
    wandb: str | None = cli_field(None, "also log to this Weights & Biases project (if installed)")
    progress: bool = cli_field(True, "show a progress bar")
