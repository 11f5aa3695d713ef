"""`evaluate(model_dir, world_dir, suites)`: run the eval suites, write eval.json.

Suites (docs/EVALS.md has every definition):

  bpb          bits per byte on held-out text (the pretraining run's val shards when the
               checkpoint's lineage has them, else --bpb-text, else the world corpus' first
               1000 documents, which is pretrain's default val split)
  fact         base models: greedy continuation of eval/fact_completion.jsonl, judged
  chat         chat models: every eval/<category>.jsonl, greedy, judged
  tail         K samples per prompt at temperature 1 (seeded): median and 5th-percentile
               judge score
  calibration  ECE of four-choice letter probabilities on kb questions, reliability PNG
  tools        held-out questions with lookup + calculator, real tools run in a loop
               (gptlab/evals/tools_eval.py); only when asked for, never by default
  code         held-out programming tasks, the replies' code run against hidden tests in
               the sandbox: pass@1 greedy, pass@k sampled (gptlab/evals/code_eval.py); only
               when asked for

Aliases: `world` = fact for base models, chat for chat models; `all` = every suite that
applies. Without --suite: base -> bpb, fact, calibration; chat -> bpb, chat, tail,
calibration. A model is "chat" when its gptlab.json stage is anything but pretrain, or,
without a stage (a plain HF directory), when its tokenizer_config carries a chat template.

Generation goes through `gptlab.engine.Engine` in batches (prompts sorted by length),
greedy unless sampling the tail, stopping at <|im_end|> / eos. Any callable
`responder(records, *, max_new_tokens, temperature, seed) -> list[str]` can stand in for
the model (tests use a "perfect" one that returns the references); suites that need
logits (bpb, calibration) are then skipped.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import torch

import gptlab
from gptlab.chat import record_prompt, stop_token_ids
from gptlab.engine import Engine
from gptlab.evals import metrics as M
from gptlab.evals import tasks as T
from gptlab.evals.bpb import suite_bpb
from gptlab.evals.calibration import suite_calibration
from gptlab.evals.table import EVAL_FILE, format_table
from gptlab.evals.tools_eval import ModelToolGenerator
from gptlab.fileio import atomic_write_text, write_jsonl
from gptlab.judge import Judge
from gptlab.train.dist import resolve_device

TOOL_CALL_MODES = ("grammar", "free")   # evaluate(tool_calls=): see its docstring
SUITES = ("bpb", "fact", "chat", "tail", "calibration", "tools", "chat_tools", "code")
DEFAULT_SUITES = {"base": ["bpb", "fact", "calibration"],
                  "chat": ["bpb", "chat", "tail", "calibration"]}
RELIABILITY_PNG = "eval_reliability.png"
SCHEMA_VERSION = 1

Responder = Callable[..., list[str]]


# ----------------------------------------------------------------------------- suites

def resolve_suites(suites: list[str] | None, kind: str) -> list[str]:
    """Expand aliases (world, all) and defaults; keep SUITES order, no duplicates."""
    if not suites:
        return list(DEFAULT_SUITES[kind])
    out: set[str] = set()
    for s in suites:
        if s == "world":
            out.add("fact" if kind == "base" else "chat")
        elif s == "all":
            out.update(DEFAULT_SUITES[kind] + ["tail"])
        elif s in SUITES:
            out.add(s)
        else:
            raise ValueError(f"unknown suite {s!r}; choose from {', '.join(SUITES + ('world', 'all'))}")
    return [s for s in SUITES if s in out]


def detect_kind(meta: dict | None, tokenizer) -> str:
    """'base' or 'chat': the gptlab.json stage decides; without one, a chat template does."""
    stage = (meta or {}).get("stage")
    if stage:
        return "base" if stage in ("pretrain", "base") else "chat"
    cfg = getattr(tokenizer, "config", None) or {}
    return "chat" if cfg.get("chat_template") else "base"


# ----------------------------------------------------------------------------- the model as a responder

class ModelResponder:
    """Batched generation with the Engine: chat records are rendered with the chat
    template (+ generation prompt), base-model records ({"prompt"}) are continued as text
    after a BOS token and stop at a newline."""

    def __init__(self, model, tokenizer, batch_size: int = 32, progress: bool = True):
        self.model, self.tokenizer = model, tokenizer
        self.engine = Engine(model, tokenizer)
        self.batch_size, self.progress = batch_size, progress
        self.stops = stop_token_ids(tokenizer)
        self.max_len = int(model.config.max_position_embeddings)

    def prompt_ids(self, record: dict) -> list[int]:
        return record_prompt(self.tokenizer, record)

    def __call__(self, records: list[dict], *, max_new_tokens: int, temperature: float = 0.0,
                 seed: int | None = None, desc: str = "generate") -> list[str]:
        from tqdm.auto import tqdm

        keep = max(1, self.max_len - max_new_tokens)
        ids = [self.prompt_ids(r)[-keep:] for r in records]
        text_mode = [r.get("messages") is None for r in records]
        order = sorted(range(len(records)), key=lambda i: (text_mode[i], len(ids[i])))
        out: list[str] = [""] * len(records)
        with tqdm(total=len(records), desc=desc, disable=not self.progress, leave=False,
                  dynamic_ncols=True) as bar:
            for b in range(0, len(order), self.batch_size):
                chunk = order[b:b + self.batch_size]
                # a batch never mixes chat and text records: they stop differently
                groups = [[i for i in chunk if text_mode[i]], [i for i in chunk if not text_mode[i]]]
                for group in filter(None, groups):
                    gens = self.engine.generate(
                        [ids[i] for i in group], max_new_tokens=max_new_tokens,
                        temperature=temperature, seed=None if seed is None else seed + b,
                        stop_token_ids=self.stops,
                        stop_strings=["\n"] if text_mode[group[0]] else None)
                    for i, g in zip(group, gens):
                        out[i] = self.tokenizer.decode(g, skip_special_tokens=True)
                bar.update(len(chunk))
        return out


# ----------------------------------------------------------------------------- judged suites

def run_judged(records: list[dict], responder: Responder, judge, *, max_new_tokens: dict,
               desc: str = "", temperature: float = 0.0, seed: int | None = None,
               postprocess: Callable[[str], str] | None = None) -> tuple[list[str], list]:
    """Responses and verdicts for records, one responder call per category."""
    by_cat: dict[str, list[int]] = {}
    for i, r in enumerate(records):
        by_cat.setdefault(r["meta"]["kind"], []).append(i)
    responses: list[str] = [""] * len(records)
    for c, (cat, idx) in enumerate(by_cat.items()):
        kw = {"desc": f"{desc}{cat}"} if isinstance(responder, ModelResponder) else {}
        outs = responder([records[i] for i in idx], max_new_tokens=max_new_tokens[cat],
                         temperature=temperature, seed=None if seed is None else seed + 7919 * c,
                         **kw)
        if len(outs) != len(idx):
            raise ValueError(f"responder returned {len(outs)} replies for {len(idx)} records")
        for i, o in zip(idx, outs):
            responses[i] = postprocess(o) if postprocess else o
    verdicts = [judge.score_record(r, resp) for r, resp in zip(records, responses)]
    return responses, verdicts


def _sizes(records: list[dict], tokenizer, cap: int | None = None) -> dict[str, int]:
    cats: dict[str, list[dict]] = {}
    for r in records:
        cats.setdefault(r["meta"]["kind"], []).append(r)
    sizes = {c: T.max_new_tokens_for(c, rs, tokenizer) for c, rs in cats.items()}
    return {c: min(n, cap) if cap else n for c, n in sizes.items()}


def suite_judged(world_dir, categories: list[str], responder, judge, tokenizer, limit,
                 postprocess=None, cap: int | None = None) -> dict:
    records = [r for c in categories for r in T.load_records(world_dir, c, limit)]
    if not records:
        raise FileNotFoundError(f"no eval records for {', '.join(categories)} in {world_dir}/eval")
    sizes = _sizes(records, tokenizer, cap)
    responses, verdicts = run_judged(records, responder, judge, max_new_tokens=sizes,
                                     postprocess=postprocess)
    agg = T.aggregate(records, verdicts)
    return {"metrics": agg["metrics"], "counts": agg["counts"], "by_kind": agg["by_kind"],
            "harmful_by_category": agg["harmful_by_category"], "max_new_tokens": sizes,
            "examples": T.pick_examples(records, responses, verdicts),
            T.SAMPLES: [{**{k: r[k] for k in ("messages", "prompt") if k in r}, "meta": r["meta"],
                         "response": resp, "outcome": T.verdict_row(v)}
                        for r, resp, v in zip(records, responses, verdicts)]}


def suite_tail(world_dir, categories, responder, judge, tokenizer, *, k: int, prompts: int,
               seed: int, postprocess=None, cap: int | None = None) -> dict:
    """K samples at temperature 1 for the first `prompts` records of each category."""
    base = [r for c in categories for r in T.load_records(world_dir, c, prompts)]
    if not base:
        raise FileNotFoundError(f"no eval records for the tail in {world_dir}/eval")
    records = [r for r in base for _ in range(k)]
    sizes = _sizes(base, tokenizer, cap)
    _, verdicts = run_judged(records, responder, judge, max_new_tokens=sizes, desc="tail ",
                             temperature=1.0, seed=seed, postprocess=postprocess)
    scores = [v.score for v in verdicts]
    per_prompt = [scores[i:i + k] for i in range(0, len(scores), k)]
    stats = M.tail_stats(scores, per_prompt)
    by_kind = {}
    for j, r in enumerate(base):
        by_kind.setdefault(r["meta"]["kind"], []).extend(per_prompt[j])
    return {"metrics": stats, "counts": {name: len(scores) for name in stats},
            "k": k, "prompts": len(base),
            "by_kind": {c: {"median": M.percentile(s, 50), "p5": M.percentile(s, 5)}
                        for c, s in by_kind.items()}}


# ----------------------------------------------------------------------------- evaluate

def evaluate(model_dir: str | Path | None, world_dir: str | Path, suites: list[str] | None = None,
             limit: int | None = None, *, kind: str = "auto", responder: Responder | None = None,
             out: str | Path | None = None, batch_size: int = 32, tail_k: int = 8,
             tail_prompts: int = 4, mc_shots: int = 3, seed: int = 0,
             max_new_tokens: int | None = None, bpb_text: str | Path | None = None,
             device: str = "auto", progress: bool = True, write: bool = True,
             dtype: str = "auto", api_base: str | None = None, api_model: str | None = None,
             api_key: str | None = None, samples: str | Path | None = None,
             code_samples: int = 10, tool_calls: str = "grammar") -> dict:
    """Run the suites and return the eval.json dict (see docs/EVALS.md for the schema).

    Written to `out`, else `model_dir/eval.json` (atomically, merged with the suites an
    earlier run wrote there); nothing is written when `write` is False or there is
    neither a model_dir nor an out. `responder` replaces the model for the judged suites.
    `max_new_tokens` caps every task's generation length (quick smoke runs). `dtype`: the
    weights' dtype (auto: bf16 on CUDA, else float32; bfloat16 halves a 135M model's
    batched generation time on a CPU with AVX512-BF16). `api_base` (instead of a model): the
    tools suite through an OpenAI-compatible server (gptlab.evals.tools_api; `api_model`
    default: the first one it lists); it is then the default suite and the others are skipped.
    `samples`: a directory that gets one jsonl per generating suite (fact, chat, tools,
    chat_tools, code), a row per item: prompt, reply, outcome. `code_samples`: samples per
    prompt for the code suite's pass@k (0: greedy pass@1 only). `tool_calls` (tools suites,
    in-process): `grammar` decodes a reply that opens a `<tool_call>` under the grammar
    `gptlab serve` uses (so calls parse and fit their schemas, as served), `free` without it.
    """
    if tool_calls not in TOOL_CALL_MODES:
        raise ValueError(f"tool_calls must be one of {', '.join(TOOL_CALL_MODES)}, got {tool_calls!r}")
    world_dir = Path(world_dir)
    if not (world_dir / "kb.json").is_file():
        raise FileNotFoundError(f"{world_dir} is not a miniworld directory (no kb.json)")
    model = tokenizer = api = None
    meta: dict = {}
    if api_base is not None:
        if model_dir is not None or responder is not None:
            raise ValueError("gptlab eval: --api-base measures a server; give it or --model, not both")
        from gptlab.evals.tools_api import ApiToolGenerator
        api = ApiToolGenerator(api_base, api_model, api_key)
        responder, suites = SimpleNamespace(tools_generate=api), suites or ["tools"]
    if model_dir is not None:
        model, tokenizer, meta = _load(model_dir, device, dtype)
    if kind == "auto":
        kind = detect_kind(meta, tokenizer) if model_dir is not None else "chat"
    if kind not in ("base", "chat"):
        raise ValueError(f"kind must be auto, base or chat, got {kind!r}")
    chosen = resolve_suites(suites, kind)
    if responder is None:
        if model is None:
            raise ValueError("evaluate needs a model_dir or a responder")
        responder = ModelResponder(model, tokenizer, batch_size, progress)
    path = Path(out) if out is not None else (Path(model_dir) / EVAL_FILE if model_dir else None)
    settings = dict(limit=limit, seed=seed, batch_size=batch_size, tail_k=tail_k,
                    tail_prompts=tail_prompts, mc_shots=mc_shots, max_new_tokens=max_new_tokens,
                    device=device, dtype=dtype, code_samples=code_samples, tool_calls=tool_calls)
    if api is not None:   # no api_key: eval.json must not hold a secret
        settings.update(decoding="api", api_base=api.base_url, api_model=api.model)
    run = _Run(model, tokenizer, meta, model_dir, world_dir, kind, responder,
               Judge.from_dir(world_dir), settings, bpb_text, path if write else None, progress)
    results, skipped = {}, {}
    for suite in chosen:
        if api is not None and suite not in ("tools", "chat_tools"):
            skipped[suite] = "needs --model (through --api-base only the tools suites run)"
            continue
        if suite in ("bpb", "calibration") and model is None:
            skipped[suite] = "needs model logits (a responder was given instead of a model)"
            continue
        if suite in ("tools", "chat_tools") and model is None and not hasattr(responder, "tools_generate"):
            skipped[suite] = "needs a model or a responder with tools_generate"
            continue
        if progress:
            print(f"eval: {suite} ...", flush=True)
        t0 = time.time()
        results[suite] = {**_run_suite(suite, run), "seconds": round(time.time() - t0, 2),
                          "limit": limit}
        rows = results[suite].pop(T.SAMPLES, None)
        if samples is not None and rows is not None:
            write_jsonl(Path(samples) / f"{suite}.jsonl", rows)
    command = _command(model_dir, world_dir, chosen, kind, settings, bpb_text, out)
    for res in results.values():
        res["command"] = command
    result = _assemble(api.label if api else model_dir, meta, kind, world_dir, results, skipped, settings)
    if run.path is not None:
        result = merge_previous(run.path, result)
    result["command"] = command            # the latest run; "commands" lists every run kept
    result["commands"] = [c for c in result["commands"] if c != command] + [command]
    if run.path is not None:
        write_eval(run.path, result)
    return result


@dataclass
class _Run:
    model: object
    tokenizer: object
    meta: dict
    model_dir: object
    world_dir: Path
    kind: str
    responder: Responder
    judge: object
    settings: dict
    bpb_text: object
    path: Path | None
    progress: bool


def _run_suite(suite: str, r: _Run) -> dict:
    s, tok, world = r.settings, r.tokenizer, r.world_dir
    cap, limit = s["max_new_tokens"], s["limit"]
    if suite == "bpb":
        return suite_bpb(r.model, tok, r.model_dir, r.meta, world, limit=limit,
                         bpb_text=r.bpb_text, batch_size=max(1, s["batch_size"] // 2),
                         progress=r.progress)
    if suite == "fact":
        return suite_judged(world, T.BASE_KINDS, r.responder, r.judge, tok, limit,
                            postprocess=T.cut_first_sentence, cap=cap)
    if suite == "chat":
        return suite_judged(world, T.CHAT_KINDS, r.responder, r.judge, tok, limit, cap=cap)
    if suite == "tail":
        n = s["tail_prompts"] if limit is None else min(s["tail_prompts"], limit)
        base = r.kind == "base"
        return suite_tail(world, T.BASE_KINDS if base else T.CHAT_KINDS, r.responder, r.judge,
                          tok, k=s["tail_k"], prompts=n, seed=s["seed"],
                          postprocess=T.cut_first_sentence if base else None, cap=cap)
    if suite == "tools":
        from gptlab.evals.tools_eval import suite_tools
        return suite_tools(world, _tool_generator(r), r.judge, limit=limit, cap=cap)
    if suite == "chat_tools":
        return T.suite_chat_tools(world, _tool_generator(r), r.judge, T.CHAT_KINDS, limit=limit, cap=cap)
    if suite == "code":
        from gptlab.evals.code_eval import suite_code
        return suite_code(world, r.responder, n=s["code_samples"], seed=s["seed"], limit=limit, cap=cap)
    plot = r.path.parent / RELIABILITY_PNG if r.path is not None else None
    return suite_calibration(r.model, tok, r.kind, world, limit=limit, shots=s["mc_shots"],
                             seed=s["seed"], batch_size=s["batch_size"], plot_path=plot)


def _tool_generator(r: _Run):
    """The tools suites' `generate`: the responder's (an API), else the model's, with the
    server's tool-call grammar unless settings say `free`."""
    if hasattr(r.responder, "tools_generate"):
        return r.responder.tools_generate
    constrain = None
    if r.settings["tool_calls"] == "grammar":
        from gptlab.chat import stop_token_ids
        from gptlab.serve.tools import AutoToolConstraints
        constrain = AutoToolConstraints(r.tokenizer, r.model.config.vocab_size, stop_token_ids(r.tokenizer))
    return ModelToolGenerator(r.model, r.tokenizer, r.settings["batch_size"], constrain=constrain)


def _command(model_dir, world_dir, suites, kind, settings, bpb_text, out) -> str:
    """The `gptlab eval` command line that reproduces this run."""
    parts = ["gptlab eval", *([f"--model {model_dir}"] if model_dir is not None else []),
             f"--world {world_dir}", *(f"--suite {s}" for s in suites), f"--kind {kind}"]
    defaults = dict(limit=None, seed=0, batch_size=32, tail_k=8, tail_prompts=4, mc_shots=3,
                    max_new_tokens=None, device="auto", code_samples=10, tool_calls="grammar")
    for k, v in settings.items():
        if v != defaults.get(k) and k != "decoding":   # decoding=api: --api-base says it
            parts.append(f"--{k.replace('_', '-')} {v}")
    if bpb_text:
        parts.append(f"--bpb-text {bpb_text}")
    if out:
        parts.append(f"--out {out}")
    return " ".join(parts)


def _load(model_dir, device, dtype: str = "auto"):
    try:   # also merges a LoRA adapter saved beside the weights
        from gptlab.chat import load_chat_model as load
    except ImportError:
        from gptlab.checkpoint import load_checkpoint as load

    dev = resolve_device(device)
    if dtype in ("auto", None):
        dtype = torch.bfloat16 if dev.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    else:
        from gptlab.train.dist import resolve_dtype
        dtype = resolve_dtype(dtype, dev)
    ckpt = load(model_dir, device=dev, dtype=dtype)
    if ckpt.tokenizer is None:
        raise ValueError(f"{model_dir} has no tokenizer.json: cannot evaluate it")
    return ckpt.model, ckpt.tokenizer, ckpt.meta


def _assemble(model_dir, meta, kind, world_dir, results, skipped, settings) -> dict:
    manifest = Path(world_dir) / "manifest.json"
    kb_sha = None
    if manifest.is_file():
        kb_sha = json.loads(manifest.read_text()).get("files", {}).get("kb.json", {}).get("sha256")
    out = {
        "schema_version": SCHEMA_VERSION,
        "model": None if model_dir is None else str(model_dir),
        "model_kind": kind, "stage": meta.get("stage"), "parent": meta.get("parent"),
        "step": meta.get("step"),
        "world": str(world_dir), "kb_sha256": kb_sha,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "gptlab_version": gptlab.__version__, "settings": settings,
        "suites": results, "skipped": skipped,
    }
    return _flatten(out)


def _flatten(result: dict) -> dict:
    """Top-level `metrics` / `counts` / `examples` as the union over suites."""
    metrics, counts, examples = {}, {}, {}
    for name in SUITES:
        res = result["suites"].get(name)
        if res:
            metrics.update(res.get("metrics", {}))
            counts.update(res.get("counts", {}))
            examples.update(res.get("examples", {}))
    result["metrics"], result["counts"] = metrics, counts
    result["examples"] = examples
    cmds = [res.get("command") for res in result["suites"].values() if res.get("command")]
    result["commands"] = list(dict.fromkeys(cmds))     # the runs that made this file
    return result


def merge_previous(path: Path, result: dict) -> dict:
    """Keep the suites an earlier eval.json at `path` holds that this run did not redo
    (same model kind, same world: path or kb.json hash)."""
    if not path.is_file():
        return result
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        return result
    same_world = old.get("world") == result["world"] or (
        result.get("kb_sha256") is not None and old.get("kb_sha256") == result["kb_sha256"])
    if old.get("model_kind") != result["model_kind"] or not same_world:
        return result
    api_run = "api" in (old.get("settings", {}).get("decoding"), result["settings"].get("decoding"))
    if api_run and old.get("model") != result["model"]:   # never mix a server's suites with a model's
        return result
    for name, res in old.get("suites", {}).items():
        if name not in result["suites"] and name in SUITES:
            result["suites"][name] = res
    for name in list(result["skipped"]):
        if name in result["suites"]:
            del result["skipped"][name]
    return _flatten(result)


def write_eval(path: Path, result: dict) -> Path:
    """eval.json (atomic: temp file + rename) and eval.md (the markdown table) beside it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    atomic_write_text(path.with_suffix(".md"), format_table(result) + "\n")
    return path
