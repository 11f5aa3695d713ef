"""`gptlab` verbs of the feedback loop and safety: feedback (simulate / import / export /
stats), reward, dpo, rl, moderate and redteam. Each imports its stage inside the handler, so
that `gptlab --help` does not load torch.
"""
from __future__ import annotations

import sys
from pathlib import Path

from gptlab.cli_flags import (
    add_config_command, add_dataclass_args, dataclass_from_args, subcommand_parser)


def add_feedback(sub) -> None:
    """`gptlab feedback simulate | import | export | stats` (gptlab/align/simulate.py)."""
    fb = sub.add_parser("feedback", help="the feedback store: simulate (judge-ranked samples), "
                        "import, export, stats")
    fb_sub = fb.add_subparsers(dest="feedback_command", required=True, metavar="SUBCOMMAND")

    def parser(name, help_text, example):
        return subcommand_parser(fb_sub, name, help_text, example=example)

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


def add_reward(sub) -> None:
    """`gptlab reward`: train a reward model on the feedback store (gptlab/align/reward.py)."""
    from gptlab.align.reward import RewardConfig, train_reward
    add_config_command(sub, "reward", "train a reward model (checkpoint + scalar head, Bradley-"
                       "Terry over each ranking's pairs) on a feedback store -> OUT", RewardConfig,
                       train_reward, result="reward model", example="gptlab reward --init "
                       "runs/base/sft --db runs/rm/feedback.db --out runs/rm/rm")


def add_dpo(sub) -> None:
    """`gptlab dpo`: Direct Preference Optimization on preference pairs (gptlab/align/dpo.py)."""
    from gptlab.align.dpo import DPOConfig, run_dpo
    add_config_command(sub, "dpo", "align a chat model on preference pairs with DPO (reference "
                       "log-probs cached; full or LoRA) -> OUT/final", DPOConfig, run_dpo,
                       example="gptlab dpo --init runs/base/sft --db runs/rm/feedback.db "
                       "--max-pairs 1000 --out runs/align/dpo")


def add_rl(sub) -> None:
    """`gptlab rl --algo ppo|grpo`: RL against a reward (gptlab/align/rl.py)."""
    from gptlab.align.rl import RLConfig, run_rl
    add_config_command(sub, "rl", "improve a chat model by RL against a reward model, the judge "
                       "or a verifiable reward: PPO (value head, GAE) or GRPO (group baseline), KL "
                       "to the init -> OUT/final", RLConfig, run_rl, example="gptlab rl --algo ppo "
                       "--init runs/base/sft --reward runs/rm/rm --prompts runs/base/world "
                       "--out runs/align/ppo")


def add_moderate(sub) -> None:
    """`gptlab moderate train ...` trains a moderator; `gptlab moderate TEXT|--file F --model DIR`
    classifies (gptlab/safety/)."""
    from gptlab.safety import ModeratorConfig
    help_text = ("moderation: `moderate train` trains the classifier (-> OUT); `moderate TEXT` or "
                 "`--file F` classifies with --model DIR")
    p = subcommand_parser(sub, "moderate", help_text, example=[
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


def add_redteam(sub) -> None:
    """`gptlab redteam`: jailbreak attacks + benign contrasts, judged (gptlab/safety/redteam.py)."""
    from gptlab.safety.redteam import RedteamConfig
    help_text = ("red team a chat model (local, or a live server over the API): attack success "
                 "rate per attack type and over-refusal on benign look-alikes -> OUT/redteam.md")
    p = subcommand_parser(sub, "redteam", help_text, example="gptlab redteam --model runs/base/sft "
                "--world runs/base/world --guard runs/moderator --out runs/redteam")
    add_dataclass_args(p, RedteamConfig)

    def run(args) -> None:
        from gptlab.safety.redteam import format_report, run_redteam
        result = run_redteam(dataclass_from_args(RedteamConfig, args))
        print(format_report(result).split("## ASR by category")[0].rstrip())
        print(f"wrote {Path(args.out) / 'redteam.json'} and {Path(args.out) / 'redteam.md'}")

    p.set_defaults(func=run)
