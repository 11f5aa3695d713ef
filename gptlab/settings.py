"""Stage settings as dataclasses: the one place a config field gets its command-line help.

Torch-free, so any stage's config (pretrain, SFT, DPO, RL, reward, safety, red team,
scaling) can declare its fields without importing the training loop.
"""
from __future__ import annotations

import dataclasses


def cli_field(default, help: str):
    """A dataclass field with a one-line help text; `gptlab.cli.add_dataclass_args` turns each
    such field of a stage's config into a `--flag`."""
    return dataclasses.field(default=default, metadata={"help": help})
