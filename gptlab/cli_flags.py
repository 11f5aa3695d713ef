"""The `gptlab` command's flag machinery: a subcommand parser whose --help ends with an
example, and one `--flag` per field of a stage's config dataclass (its `help` metadata from
`gptlab.settings.cli_field`), read back into the dataclass. Torch-free, so --help is instant.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import typing

EXAMPLES = {
    "data world": "gptlab data world --out runs/demo/world --scale small --seed 0",
    "tokenizer train": "gptlab tokenizer train --input runs/demo/world/corpus --out runs/demo/tokenizer --vocab-size 4096",
    "pretrain": "gptlab pretrain --data runs/demo/world/corpus --tokenizer runs/demo/tokenizer --out runs/demo/pretrain --depth 4 --max-steps 600",
    "generate": 'gptlab generate --model runs/demo/pretrain/final --prompt "The capital of France is" --max-new-tokens 20',
    "speedrun": "gptlab speedrun --out runs/demo",
    "import": "gptlab import smollm2 --out runs/smollm2",
    "export": "gptlab export runs/demo/sft/final --to gguf --dtype q8_0 --out runs/demo/model.gguf",
    "sft": "gptlab sft --init runs/demo/pretrain/final --data runs/demo/world --mix runs/demo/world/corpus:0.2 --out runs/demo/sft",
    "chat": 'gptlab chat --model runs/demo/sft/final --system "Answer in one word."',
    "eval": "gptlab eval --model runs/demo/sft/final --world runs/demo/world --suite world --suite bpb --limit 50",
    "report": "gptlab report runs/demo",
    "scaling sweep": "gptlab scaling sweep --out runs/scaling --workers 2",
    "scaling fit": "gptlab scaling fit --out runs/scaling",
    "scaling predict": "gptlab scaling predict --out runs/scaling --flops 2.5e13",
    "scaling check": "gptlab scaling check --out runs/scaling --flops 2.5e13",
}


def subcommand_parser(sub, name: str, help_text: str, key: str | None = None,
            example: str | list[str] | None = None) -> argparse.ArgumentParser:
    """A (sub)command parser whose --help ends with its example(s): `example`, else
    EXAMPLES[key or name]."""
    examples = [example] if isinstance(example, str) else example or [EXAMPLES[key or name]]
    heading = "example:" if len(examples) == 1 else "examples:"
    return sub.add_parser(
        name, help=help_text, description=help_text,
        epilog=heading + "".join(f"\n  {e}" for e in examples),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


# ---------------------------------------------------------------- dataclass -> flags

def field_type(field: dataclasses.Field, hints: dict) -> type:
    """The scalar type a flag should parse to (Optional[X] -> X)."""
    tp = hints.get(field.name, str)
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if args:
        tp = args[0]
    return tp if tp in (int, float, str, bool) else str


def add_dataclass_args(parser: argparse.ArgumentParser, cls) -> None:
    """One `--flag` per dataclass field, with its type, default and `help` metadata."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.metadata.get("cli") is False:  # a setting the stage does not use (settings.not_used)
            continue
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else None
        if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = f.default_factory()  # type: ignore[misc]
        help_text = f.metadata.get("help", "")
        tp = field_type(f, hints)
        if tp is bool:
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction,
                                default=default, help=help_text)
        else:
            shown = "" if default is None else f" (default: {default})"
            parser.add_argument(flag, dest=f.name, type=tp, default=default,
                                help=help_text + shown)


def dataclass_from_args(cls, args: argparse.Namespace):
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in vars(args).items() if k in names})


def add_config_command(sub, name: str, help_text: str, config_cls, run, *, key: str | None = None,
                       example: str | list[str] | None = None, result: str = "final checkpoint"
                       ) -> argparse.ArgumentParser:
    """A stage's subcommand: one flag per field of `config_cls`, and a handler that runs
    `run(config)` and prints `result: <what it returned>`. Under torchrun only rank 0
    prints; by then the process group is gone, so the rank is read from the environment."""
    p = subcommand_parser(sub, name, help_text, key, example)
    add_dataclass_args(p, config_cls)

    def handler(args: argparse.Namespace) -> None:
        out = run(dataclass_from_args(config_cls, args))
        if os.environ.get("RANK", "0") == "0":
            print(f"{result}: {out}")

    p.set_defaults(func=handler)
    return p
