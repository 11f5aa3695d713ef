"""The `gptlab` command: one verb per stage, each a thin wrapper over one module's entry
function. Modules are imported inside the handlers so that `gptlab --help` stays instant.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import typing
from pathlib import Path

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


def _parser(sub, name: str, help_text: str, key: str | None = None) -> argparse.ArgumentParser:
    key = key or name
    return sub.add_parser(
        name, help=help_text, description=help_text,
        epilog=f"example:\n  {EXAMPLES[key]}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


# ---------------------------------------------------------------- dataclass -> flags

def _field_type(field: dataclasses.Field, hints: dict) -> type:
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
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else None
        if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = f.default_factory()  # type: ignore[misc]
        help_text = f.metadata.get("help", "")
        tp = _field_type(f, hints)
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


# ---------------------------------------------------------------- handlers

def cmd_data_world(args) -> None:
    from gptlab.data.world import generate_world
    manifest = generate_world(args.out, seed=args.seed, scale=args.scale)
    print(f"wrote miniworld ({args.scale}, seed {args.seed}) to {args.out}")
    for group, counts in sorted(manifest.get("counts", {}).items()):
        print(f"  {group:<8} " + ", ".join(f"{k} {n}" for k, n in sorted(counts.items())))


def cmd_tokenizer_train(args) -> None:
    from gptlab.tokenizer import train_tokenizer_from_source
    tok = train_tokenizer_from_source(args.input, args.out, vocab_size=args.vocab_size,
                                      max_chars=args.max_chars)
    print(f"trained a {tok.vocab_size}-token BPE on {args.input} -> {args.out}")


def cmd_pretrain(args) -> None:
    from gptlab.train.pretrain import PretrainConfig, pretrain
    from gptlab.train.loop import print0
    final = pretrain(dataclass_from_args(PretrainConfig, args))
    print0(f"final checkpoint: {final}")


def cmd_generate(args) -> None:
    from gptlab.checkpoint import load_checkpoint
    from gptlab.engine import Engine
    ckpt = load_checkpoint(args.model)
    engine = Engine(ckpt.model, ckpt.tokenizer)
    ids = ckpt.tokenizer.encode(args.prompt)
    opts = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                top_k=args.top_k, top_p=args.top_p, seed=args.seed,
                stop_strings=args.stop or None)
    for _ in range(args.num_samples):
        sys.stdout.write(args.prompt)
        for delta in engine.stream(ids, **opts):
            sys.stdout.write(delta)
            sys.stdout.flush()
        sys.stdout.write("\n")
        if opts["seed"] is not None:
            opts["seed"] += 1


def _add_interop(sub) -> None:
    p = _parser(sub, "import", "import an HF Llama-family dir, a hub id, a .gguf file, or smollm2")
    p.add_argument("src", help="HF directory, org/name hub id, file.gguf, or the alias smollm2")
    p.add_argument("--out", required=True, help="checkpoint directory to write")
    p.add_argument("--dtype", default="f32", choices=["f32", "f16", "bf16"],
                   help="weight dtype of the checkpoint (default: f32)")
    p.set_defaults(func=cmd_import)
    p = _parser(sub, "export", "export a checkpoint to a clean HF directory or a GGUF file")
    p.add_argument("model", help="checkpoint directory")
    p.add_argument("--to", required=True, choices=["hf", "gguf"], help="target format")
    p.add_argument("--dtype", default="f32", choices=["f32", "f16", "bf16", "q8_0"],
                   help="hf: f32|f16|bf16; gguf: f32|f16|q8_0 (default: f32)")
    p.add_argument("--out", required=True, help="output directory (hf) or .gguf file / directory")
    p.set_defaults(func=cmd_export)


def cmd_import(args) -> None:
    from gptlab.interop import import_model
    print(f"imported {args.src} -> {import_model(args.src, args.out, dtype=args.dtype)}")


def cmd_export(args) -> None:
    from gptlab.interop import export_model
    out = export_model(args.model, args.out, to=args.to, dtype=args.dtype)
    print(f"exported {args.model} -> {out}")


def _resolve_model_alias(args) -> None:
    """`--model smollm2` (or another alias) means the imported checkpoint, made on first use."""
    model = getattr(args, "model", None)
    if isinstance(model, str) and not Path(model).exists():
        from gptlab.interop import ALIASES, ensure_model
        if model in ALIASES:
            args.model = str(ensure_model(model))


def cmd_speedrun(args) -> None:
    from gptlab.speedrun import speedrun
    speedrun(out=Path(args.out), preset=args.preset, scale=args.scale,
             nproc_per_node=args.nproc_per_node)


def _add_sft(sub) -> None:
    p = _parser(sub, "sft", "supervised fine-tuning on chat data (full or LoRA; torchrun for "
                "several processes) -> OUT/final", "sft")
    from gptlab.train.sft import SFTConfig
    add_dataclass_args(p, SFTConfig)
    p.set_defaults(func=cmd_sft)


def cmd_sft(args) -> None:
    import os
    from gptlab.train.sft import SFTConfig, sft
    final = sft(dataclass_from_args(SFTConfig, args))
    if os.environ.get("RANK", "0") == "0":  # the process group is gone by now
        print(f"final checkpoint: {final}")


def _add_chat(sub) -> None:
    p = _parser(sub, "chat", "chat with a model in the terminal (streaming; /help lists the "
                "commands)", "chat")
    p.add_argument("--model", required=True, help="checkpoint directory (gptlab, HF Llama, or with a LoRA adapter)")
    p.add_argument("--system", default=None, help="system message")
    p.add_argument("--temperature", type=float, default=0.7, help="0 = greedy (default: 0.7)")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling (default: 0.95)")
    p.add_argument("--max-new-tokens", type=int, default=256, help="longest reply (default: 256)")
    p.add_argument("--seed", type=int, default=None, help="seed sampling for repeatable replies")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.set_defaults(func=cmd_chat)


def cmd_chat(args) -> None:
    from gptlab.chat_cli import run_chat
    run_chat(args.model, system=args.system, temperature=args.temperature, top_k=args.top_k,
             top_p=args.top_p, max_new_tokens=args.max_new_tokens, seed=args.seed,
             device=args.device)


def _add_eval(sub) -> None:
    p = _parser(sub, "eval", "evaluate a checkpoint on miniworld's held-out sets (gold judge) "
                "-> CKPT/eval.json; or --compare two evals", "eval")
    p.add_argument("--model", help="checkpoint directory (gptlab or HF Llama)")
    p.add_argument("--world", help="miniworld directory (kb.json, eval/*.jsonl)")
    p.add_argument("--suite", action="append",
                   help="bpb, fact, chat, tail, calibration; world (= fact for base models, chat "
                        "for chat models) or all; repeatable (default: by model kind)")
    p.add_argument("--limit", type=int, default=None, help="at most N items per task")
    p.add_argument("--out", default=None, help="write the JSON here instead of MODEL/eval.json")
    p.add_argument("--kind", choices=["auto", "base", "chat"], default="auto",
                   help="override the base / chat detection (default: auto)")
    p.add_argument("--batch-size", type=int, default=32, help="prompts per generation batch")
    p.add_argument("--tail-k", type=int, default=8, help="samples per prompt for the tail (default: 8)")
    p.add_argument("--tail-prompts", type=int, default=4,
                   help="prompts per category for the tail (default: 4)")
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help="cap on generated tokens per reply (default: sized per task)")
    p.add_argument("--bpb-text", default=None, help="held-out text for bpb (default: the run's val shards)")
    p.add_argument("--mc-shots", type=int, default=3,
                   help="solved examples before each calibration question (default: 3)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    p.add_argument("--compare", nargs=2, metavar=("A", "B"),
                   help="print two eval.json files (or checkpoint dirs) side by side")
    p.set_defaults(func=cmd_eval)


def cmd_eval(args) -> None:
    from gptlab.evals import compare, evaluate, format_table
    if args.compare:
        print(compare(*args.compare))
        return
    if not args.model or not args.world:
        raise ValueError("gptlab eval needs --model and --world (or --compare A B)")
    result = evaluate(args.model, args.world, args.suite, args.limit, kind=args.kind,
                      out=args.out, batch_size=args.batch_size, tail_k=args.tail_k,
                      tail_prompts=args.tail_prompts, max_new_tokens=args.max_new_tokens,
                      bpb_text=args.bpb_text, mc_shots=args.mc_shots, seed=args.seed,
                      device=args.device, progress=args.progress)
    print(format_table(result))
    print(f"\nwrote {args.out or Path(args.model) / 'eval.json'}")


def _add_report(sub) -> None:
    p = _parser(sub, "report", "write RUN_DIR/REPORT.md: stage metrics, loss curves, eval tables, "
                "plots, commands", "report")
    p.add_argument("run_dir", help="run directory (e.g. runs/demo)")
    p.add_argument("--out", default=None, help="write the report here instead of RUN_DIR/REPORT.md")
    p.set_defaults(func=cmd_report)


def cmd_report(args) -> None:
    from gptlab.report import report
    print(f"wrote {report(args.run_dir, out=args.out)}")


def _add_scaling(sub) -> None:
    sc = sub.add_parser("scaling", help="predict a big run's loss and capability from small runs")
    sc_sub = sc.add_subparsers(dest="scaling_command", required=True, metavar="SUBCOMMAND")
    from gptlab.scaling import SweepConfig
    p = _parser(sc_sub, "sweep", "train a grid of small runs (compute budgets x model sizes) -> "
                "OUT/sweep.csv; finished runs are skipped", "scaling sweep")
    add_dataclass_args(p, SweepConfig)
    p.set_defaults(func=cmd_scaling_sweep)
    for name, help_text in (
            ("fit", "fit L(C), L(N, D) (Huber, bootstrap) and the capability law -> OUT/fit.json"),
            ("predict", "predict loss, compute-optimal size and capability for --flops -> "
                        "OUT/predict.json, OUT/scaling.png"),
            ("check", "train the predicted configuration for --flops; actual beside predicted -> "
                      "OUT/check.json")):
        p = _parser(sc_sub, name, help_text, f"scaling {name}")
        p.add_argument("--out", default="runs/scaling", help="the sweep's directory (default: runs/scaling)")
        p.add_argument("--bootstrap", type=int, default=200, help="bootstrap resamples (default: 200)")
        if name == "fit":
            p.add_argument("--max-flops", type=float, default=None, help="fit only runs of at most this compute")
        else:
            p.add_argument("--flops", type=float, default=None,
                           help="target compute in FLOPs (default: 10x the largest sweep run)")
            p.add_argument("--max-fit-frac", type=float, default=0.1,
                           help="fit only runs of at most this fraction of --flops (default: 0.1)")
        if name == "check":
            p.add_argument("--device", default=None, help="device of the check run (default: the sweep's)")
            p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: the sweep's)")
        p.set_defaults(func=cmd_scaling)


def cmd_scaling_sweep(args) -> None:
    from gptlab.scaling import SweepConfig, sweep
    path = sweep(dataclass_from_args(SweepConfig, args))
    if not args.worker:
        print(f"wrote {path}")


def cmd_scaling(args) -> None:
    from gptlab import scaling
    out = Path(args.out)
    if args.scaling_command == "fit":
        r = scaling.run_fit(out, max_flops=args.max_flops, n_boot=args.bootstrap)
        print(scaling.format_fit(r))
        print(f"wrote {out / 'fit.json'}")
    elif args.scaling_command == "predict":
        pred = scaling.run_predict(out, args.flops, args.max_fit_frac, n_boot=args.bootstrap)
        print(scaling.format_prediction(pred))
        print(f"wrote {out / 'predict.json'} and {out / 'scaling.png'}")
    else:
        scaling.check(out, args.flops, args.max_fit_frac, n_boot=args.bootstrap,
                      device=args.device, threads=args.threads)
        print(f"wrote {out / 'check.json'} and {out / 'scaling.png'}")


# ---------------------------------------------------------------- parser

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gptlab",
        description="Build your own ChatGPT end to end: data, tokenizer, pretraining, "
                    "generation (more stages to come).",
        epilog="examples:\n" + "\n".join(f"  {v}" for v in EXAMPLES.values()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    data = sub.add_parser("data", help="generate or prepare data sets")
    data_sub = data.add_subparsers(dest="data_command", required=True, metavar="SUBCOMMAND")
    p = _parser(data_sub, "world", "write the miniworld data sets (corpus, SFT, prompts, evals, kb.json)",
                "data world")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--scale", choices=["tiny", "small", "full"], default="small",
                   help="size of the data (default: small)")
    p.set_defaults(func=cmd_data_world)

    tok = sub.add_parser("tokenizer", help="train a byte-level BPE tokenizer")
    tok_sub = tok.add_subparsers(dest="tokenizer_command", required=True, metavar="SUBCOMMAND")
    p = _parser(tok_sub, "train", "train a byte-level BPE on text files, a directory or hf:dataset",
                "tokenizer train")
    p.add_argument("--input", required=True, help=".txt/.jsonl/.parquet file, directory, or hf:org/name")
    p.add_argument("--out", required=True, help="output directory (tokenizer.json + tokenizer_config.json)")
    p.add_argument("--vocab-size", type=int, default=4096, help="vocabulary size (default: 4096)")
    p.add_argument("--max-chars", type=int, default=50_000_000,
                   help="train on at most this many characters (default: 5e7)")
    p.set_defaults(func=cmd_tokenizer_train)

    p = _parser(sub, "pretrain", "pretrain a GPT from scratch (torchrun for several processes)")
    from gptlab.train.pretrain import PretrainConfig
    add_dataclass_args(p, PretrainConfig)
    p.set_defaults(func=cmd_pretrain)

    p = _parser(sub, "generate", "sample a continuation from a checkpoint (streams to stdout)")
    p.add_argument("--model", required=True, help="checkpoint directory (gptlab or HF Llama)")
    p.add_argument("--prompt", required=True, help="prompt text")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--stop", action="append", help="stop string (repeatable)")
    p.add_argument("--num-samples", type=int, default=1)
    p.set_defaults(func=cmd_generate)

    p = _parser(sub, "speedrun", "the whole pipeline on miniworld, each stage skipped when done")
    p.add_argument("--out", default="runs/demo", help="run directory (default: runs/demo)")
    p.add_argument("--preset", default="cpu-tiny",
                   choices=["cpu-tiny", "gpu-small", "gpu-d20", "test"],
                   help="size preset: cpu-tiny (2 cores, ~30 min), gpu-small (one GPU, minutes), "
                        "gpu-d20 (0.5 B params, a GPU node), test (seconds, for the test suite)")
    p.add_argument("--scale", default=None, choices=["tiny", "small", "full"],
                   help="miniworld scale (default: the preset's; tiny is for tests)")
    p.add_argument("--nproc-per-node", type=int, default=1,
                   help="run the training stages under torchrun on this many local GPUs/processes")
    p.set_defaults(func=cmd_speedrun)
    _add_sft(sub)
    _add_chat(sub)
    _add_eval(sub)
    _add_report(sub)
    _add_scaling(sub)
    _add_interop(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        _resolve_model_alias(args)
        args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (FileNotFoundError, ValueError) as exc:  # user errors: one clear line, no traceback
        print(f"gptlab: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
