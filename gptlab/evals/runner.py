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
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from gptlab.evals import metrics as M
from gptlab.evals import tasks as T
from gptlab.fileio import atomic_write_text

SUITES = ("bpb", "fact", "chat", "tail", "calibration", "tools")
DEFAULT_SUITES = {"base": ["bpb", "fact", "calibration"],
                  "chat": ["bpb", "chat", "tail", "calibration"]}
EVAL_FILE = "eval.json"
RELIABILITY_PNG = "eval_reliability.png"
SCHEMA_VERSION = 1
BPB_MAX_TOKENS = 1 << 18          # default cap on held-out tokens scored for bpb
BPB_FALLBACK_DOCS = 1000          # pretrain's default val_docs

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
        from gptlab.engine import Engine
        self.model, self.tokenizer = model, tokenizer
        self.engine = Engine(model, tokenizer)
        self.batch_size, self.progress = batch_size, progress
        self.stops = stop_ids(tokenizer)
        self.max_len = int(model.config.max_position_embeddings)

    def prompt_ids(self, record: dict) -> list[int]:
        return render_prompt(self.tokenizer, record)

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


def render_prompt(tokenizer, record: dict) -> list[int]:
    """Prompt ids: a chat record rendered with the generation prompt exactly as SFT
    tokenizes it (gptlab.chat.render_prompt), or BOS + text for a base-model prompt."""
    if record.get("messages") is not None:
        try:
            from gptlab.chat import render_prompt as chat_prompt
        except ImportError:   # equivalent for native ChatML: render, then encode
            text = tokenizer.apply_chat_template(record["messages"], add_generation_prompt=True)
            return tokenizer.encode(text)
        return chat_prompt(tokenizer, record["messages"])
    bos = [tokenizer.bos_id] if tokenizer.bos_id is not None else [tokenizer.eos_id]
    return bos + tokenizer.encode(record["prompt"])


def stop_ids(tokenizer) -> list[int]:
    """End-of-turn tokens: eos, <|im_end|> and an imported template's own (gptlab.chat)."""
    try:
        from gptlab.chat import stop_token_ids
    except ImportError:
        return sorted({i for i in (tokenizer.eos_id, tokenizer.im_end_id) if i is not None})
    return stop_token_ids(tokenizer)


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
            "examples": T.pick_examples(records, responses, verdicts)}


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


# ----------------------------------------------------------------------------- bits per byte

LOGITS_BUDGET = 1 << 27     # float32 logits per forward pass in bpb (512 MB)


@torch.no_grad()
def stream_nats(model, stream: list[int] | np.ndarray, seq_len: int, batch_size: int = 16,
                progress: bool = False) -> tuple[float, int]:
    """Total next-token nats over stream[1:] (each token given up to seq_len before it,
    in rows that restart the context) and the number of scored tokens."""
    import torch.nn.functional as F
    from tqdm.auto import tqdm

    s = torch.as_tensor(np.asarray(stream, dtype=np.int64))
    n_scored = len(s) - 1
    if n_scored <= 0:
        raise ValueError("bits per byte needs at least two tokens")
    device = next(model.parameters()).device
    V = model.config.vocab_size
    rows = math.ceil(n_scored / seq_len)
    per = max(1, min(batch_size, LOGITS_BUDGET // (seq_len * V)))
    total = 0.0
    model.eval()
    for b in tqdm(range(0, rows, per), desc="bpb", disable=not progress, leave=False):
        n = min(per, rows - b)
        x = torch.zeros(n, seq_len, dtype=torch.long)
        y = torch.full((n, seq_len), -100, dtype=torch.long)
        for j in range(n):
            start = (b + j) * seq_len
            row = s[start:start + seq_len + 1]
            x[j, :len(row) - 1], y[j, :len(row) - 1] = row[:-1], row[1:]
        logits = model(x.to(device)).float()
        total += float(F.cross_entropy(logits.view(-1, V), y.to(device).view(-1),
                                       ignore_index=-100, reduction="sum"))
    return total, n_scored


def bpb_of_stream(model, stream, n_bytes: int, seq_len: int, batch_size: int = 16,
                  progress: bool = False) -> dict:
    nats, n = stream_nats(model, stream, seq_len, batch_size, progress)
    return {"bpb": M.bits_per_byte(nats, n_bytes), "nats": nats, "tokens": n, "bytes": n_bytes}


def _tokenizer_sha(tokenizer) -> str:
    import hashlib
    return hashlib.sha256(tokenizer.to_json().encode("utf-8")).hexdigest()


def find_val_shards(model_dir: Path, meta: dict, tokenizer) -> Path | None:
    """The val shards of the run that (directly or through `parent`) produced the model,
    when they exist and were built with this tokenizer."""
    sha = _tokenizer_sha(tokenizer)
    cur, cur_meta = Path(model_dir), meta or {}
    for _ in range(8):
        cands = []
        data = cur_meta.get("data")
        if isinstance(data, dict) and data.get("shards"):
            cands.append(Path(data["shards"]))
        cands += [cur.parent / "shards", cur.parent.parent / "shards"]
        for c in cands:
            p = c / "shards.json"
            if p.is_file():
                sm = json.loads(p.read_text())
                val = sm.get("splits", {}).get("val", {})
                if val.get("tokens") and sm.get("tokenizer_sha256") in (None, sha):
                    return c
        parent = cur_meta.get("parent")
        if not parent or not (Path(parent) / "gptlab.json").is_file():
            return None
        cur = Path(parent)
        cur_meta = json.loads((cur / "gptlab.json").read_text())
    return None


def _cut_at_doc_end(stream: np.ndarray, max_tokens: int, eos: int) -> np.ndarray:
    """The first <= max_tokens + 1 tokens, ending after the last complete document."""
    if len(stream) <= max_tokens + 1:
        return stream
    head = stream[:max_tokens + 1]
    ends = np.nonzero(head[1:] == eos)[0]
    return head[:ends[-1] + 2] if len(ends) else head


def bpb_stream_from_shards(shard_dir: Path, tokenizer, max_tokens: int) -> tuple[np.ndarray, int]:
    """[eos] + the val split (documents each followed by eos), cut at a document end; the
    byte count is that of the decoded text (exact for whole documents)."""
    sm = json.loads((shard_dir / "shards.json").read_text())
    parts = [np.memmap(shard_dir / f, dtype=np.dtype(sm["dtype"]), mode="r")
             for f in sm["splits"]["val"]["files"] if (shard_dir / f).stat().st_size]
    eos = int(sm.get("eos_id", tokenizer.eos_id))
    stream = np.concatenate([np.array([eos], dtype=np.int64)] + [p.astype(np.int64) for p in parts])
    stream = _cut_at_doc_end(stream, max_tokens, eos)
    text = tokenizer.decode(stream.tolist(), skip_special_tokens=True)
    return stream, len(text.encode("utf-8"))


def bpb_stream_from_text(source, tokenizer, max_tokens: int, max_docs: int | None = None
                         ) -> tuple[np.ndarray, int]:
    """[eos] + encode(doc) + [eos] per document of `source` until max_tokens; bytes are the
    raw documents' UTF-8 bytes."""
    from gptlab.data.loaders import iter_texts

    ids, n_bytes = [tokenizer.eos_id], 0
    for i, doc in enumerate(iter_texts(source)):
        if (max_docs is not None and i >= max_docs) or len(ids) > max_tokens:
            break
        ids += tokenizer.encode(doc) + [tokenizer.eos_id]
        n_bytes += len(doc.encode("utf-8"))
    return np.asarray(ids, dtype=np.int64), n_bytes


def suite_bpb(model, tokenizer, model_dir, meta, world_dir, *, limit, bpb_text, batch_size,
              progress) -> dict:
    seq_len = int(min(model.config.max_position_embeddings, 2048))
    max_tokens = BPB_MAX_TOKENS if limit is None else limit * seq_len
    shards = None if bpb_text else find_val_shards(Path(model_dir), meta, tokenizer)
    if bpb_text:
        stream, n_bytes = bpb_stream_from_text(bpb_text, tokenizer, max_tokens)
        source = str(bpb_text)
    elif shards is not None:
        stream, n_bytes = bpb_stream_from_shards(shards, tokenizer, max_tokens)
        source = f"{shards} (val split)"
    else:
        corpus = Path(world_dir) / "corpus"
        stream, n_bytes = bpb_stream_from_text(corpus, tokenizer, max_tokens, BPB_FALLBACK_DOCS)
        source = f"{corpus} (first {BPB_FALLBACK_DOCS} documents: pretrain's default val split)"
    res = bpb_of_stream(model, stream, n_bytes, seq_len, batch_size, progress)
    return {"metrics": {"bpb": res["bpb"]}, "counts": {"bpb": res["tokens"]},
            "source": source, "seq_len": seq_len, **res}


# ----------------------------------------------------------------------------- calibration

def letter_token_ids(tokenizer) -> list[list[int]]:
    """For each letter, the ids of its single-token spellings ("A", " A")."""
    out = []
    for letter in T.LETTERS:
        ids = sorted({t[0] for t in (tokenizer.encode(letter), tokenizer.encode(" " + letter))
                      if len(t) == 1})
        if not ids:
            raise ValueError(f"the tokenizer has no single token for the letter {letter!r}")
        out.append(ids)
    return out


@torch.no_grad()
def next_token_probs(model, prompts: list[list[int]], batch_size: int = 16) -> torch.Tensor:
    """(N, V) next-token distributions after each prompt (left-padded batches)."""
    device = next(model.parameters()).device
    out = []
    for b in range(0, len(prompts), batch_size):
        chunk = prompts[b:b + batch_size]
        L = max(len(p) for p in chunk)
        ids = torch.zeros(len(chunk), L, dtype=torch.long)
        mask = torch.zeros(len(chunk), L, dtype=torch.bool)
        for i, p in enumerate(chunk):
            ids[i, L - len(p):] = torch.tensor(p)
            mask[i, L - len(p):] = True
        pos = (mask.long().cumsum(1) - 1).clamp(min=0)
        logits = model(ids.to(device), attention_mask=mask.to(device), position_ids=pos.to(device),
                       logits_to_keep=1)[:, -1]
        out.append(logits.float().softmax(-1).cpu())
    return torch.cat(out)


def letter_probs(probs: torch.Tensor, letter_ids: list[list[int]]) -> tuple[list[list[float]], list[float]]:
    """Per item: the four letter probabilities renormalized, and their total raw mass."""
    raw = torch.stack([probs[:, ids].sum(-1) for ids in letter_ids], dim=1)  # (N, 4)
    mass = raw.sum(-1)
    norm = raw / mass.clamp_min(1e-30)[:, None]
    return norm.tolist(), mass.tolist()


def suite_calibration(model, tokenizer, kind, world_dir, *, limit, shots, seed, batch_size,
                      plot_path: Path | None) -> dict:
    kb = json.loads((Path(world_dir) / "kb.json").read_text(encoding="utf-8"))
    items = T.mc_items(kb, heldout=True, limit=limit, seed=seed)
    if not items:
        raise ValueError("no multiple-choice items: the kb has no held-out countries")
    examples = T.mc_items(kb, heldout=False, seed=seed + 1)[:shots]
    if kind == "chat":
        prompts = [render_prompt(tokenizer, {"messages": T.mc_chat_messages(it, examples)})
                   for it in items]
    else:
        prompts = [render_prompt(tokenizer, {"prompt": T.mc_base_prompt(it, examples)})
                   for it in items]
    max_len = int(model.config.max_position_embeddings)
    prompts = [p[-max_len:] for p in prompts]
    probs, mass = letter_probs(next_token_probs(model, prompts, batch_size),
                               letter_token_ids(tokenizer))
    answers = [it["answer"] for it in items]
    cal = M.calibration_metrics(probs, answers)
    cal["mc_letter_mass"] = sum(mass) / len(mass)
    conf = [max(p) for p in probs]
    correct = [max(range(4), key=p.__getitem__) == a for p, a in zip(probs, answers)]
    bins = [vars(b) for b in M.reliability_bins(conf, correct)]
    res = {"metrics": cal, "counts": {k: len(items) for k in cal}, "bins": bins,
           "shots": len(examples), "items": len(items)}
    if plot_path is not None:
        from gptlab.evals.plots import reliability_plot
        reliability_plot(bins, cal["ece"], plot_path, title=f"{len(items)} kb questions")
        res["plot"] = plot_path.name
    return res


# ----------------------------------------------------------------------------- evaluate

def evaluate(model_dir: str | Path | None, world_dir: str | Path, suites: list[str] | None = None,
             limit: int | None = None, *, kind: str = "auto", responder: Responder | None = None,
             out: str | Path | None = None, batch_size: int = 32, tail_k: int = 8,
             tail_prompts: int = 4, mc_shots: int = 3, seed: int = 0,
             max_new_tokens: int | None = None, bpb_text: str | Path | None = None,
             device: str = "auto", progress: bool = True, write: bool = True,
             dtype: str = "auto") -> dict:
    """Run the suites and return the eval.json dict (see docs/EVALS.md for the schema).

    Written to `out`, else `model_dir/eval.json` (atomically, merged with the suites an
    earlier run wrote there); nothing is written when `write` is False or there is
    neither a model_dir nor an out. `responder` replaces the model for the judged suites.
    `max_new_tokens` caps every task's generation length (quick smoke runs). `dtype`: the
    weights' dtype (auto: bf16 on CUDA, else float32; bfloat16 halves a 135M model's
    batched generation time on a CPU with AVX512-BF16).
    """
    from gptlab.judge import Judge

    world_dir = Path(world_dir)
    if not (world_dir / "kb.json").is_file():
        raise FileNotFoundError(f"{world_dir} is not a miniworld directory (no kb.json)")
    model = tokenizer = None
    meta: dict = {}
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
                    device=device, dtype=dtype)
    run = _Run(model, tokenizer, meta, model_dir, world_dir, kind, responder,
               Judge.from_dir(world_dir), settings, bpb_text, path if write else None, progress)
    results, skipped = {}, {}
    for suite in chosen:
        if suite in ("bpb", "calibration") and model is None:
            skipped[suite] = "needs model logits (a responder was given instead of a model)"
            continue
        if suite == "tools" and model is None and not hasattr(responder, "tools_generate"):
            skipped[suite] = "needs a model or a responder with tools_generate"
            continue
        if progress:
            print(f"eval: {suite} ...", flush=True)
        t0 = time.time()
        results[suite] = {**_run_suite(suite, run), "seconds": round(time.time() - t0, 2),
                          "limit": limit}
    command = _command(model_dir, world_dir, chosen, kind, settings, bpb_text, out)
    for res in results.values():
        res["command"] = command
    result = _assemble(model_dir, meta, kind, world_dir, results, skipped, settings)
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
        from gptlab.evals.tools_eval import ModelToolGenerator, suite_tools
        generate = getattr(r.responder, "tools_generate", None) or \
            ModelToolGenerator(r.model, tok, s["batch_size"])
        return suite_tools(world, generate, r.judge, limit=limit, cap=cap)
    plot = r.path.parent / RELIABILITY_PNG if r.path is not None else None
    return suite_calibration(r.model, tok, r.kind, world, limit=limit, shots=s["mc_shots"],
                             seed=s["seed"], batch_size=s["batch_size"], plot_path=plot)


def _command(model_dir, world_dir, suites, kind, settings, bpb_text, out) -> str:
    """The `gptlab eval` command line that reproduces this run."""
    parts = ["gptlab eval", f"--model {model_dir}", f"--world {world_dir}",
             *(f"--suite {s}" for s in suites), f"--kind {kind}"]
    defaults = dict(limit=None, seed=0, batch_size=32, tail_k=8, tail_prompts=4, mc_shots=3,
                    max_new_tokens=None, device="auto")
    for k, v in settings.items():
        if v != defaults.get(k):
            parts.append(f"--{k.replace('_', '-')} {v}")
    if bpb_text:
        parts.append(f"--bpb-text {bpb_text}")
    if out:
        parts.append(f"--out {out}")
    return " ".join(parts)


def _load(model_dir, device, dtype: str = "auto"):
    from gptlab.train.dist import resolve_device
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
    import gptlab
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


# ----------------------------------------------------------------------------- tables

HEADLINE = ["bpb", "fact_accuracy", "qa_accuracy", "multiturn_accuracy", "system_compliance",
            "conflict_system_wins", "harmful_refusal", "over_refusal", "premise_correction",
            "pushback_hold", "pushback_admit", "idk_rate", "arithmetic_accuracy",
            "judge_score", "pass_rate", "tail_median", "tail_p5", "tail_mean",
            "tail_worst_of_k", "ece", "mc_accuracy", "mc_confidence", "mc_brier",
            "mc_letter_mass"]


def metric_order(names) -> list[str]:
    names = set(names)
    head = [n for n in HEADLINE if n in names]
    return head + sorted(names - set(head))


def fmt_value(name: str, v) -> str:
    if v is None:
        return "-"
    info = T.metric_info(name)
    if info.unit == "rate":
        return f"{100 * v:.1f}%"
    if info.unit == "bits":
        return f"{v:.4f}"
    return str(int(v)) if info.unit == "count" else f"{v:.3f}"


def fmt_delta(name: str, a, b) -> str:
    if a is None or b is None:
        return "-"
    d = b - a
    info = T.metric_info(name)
    mark = "" if abs(d) < 1e-12 else (" +" if (d > 0) == info.higher_is_better else " -")
    if info.unit == "rate":
        return f"{100 * d:+.1f} pp{mark}"
    return f"{d:+.4f}{mark}" if info.unit == "bits" else f"{d:+.3f}{mark}"


def _label(name: str) -> str:
    return name + (" (lower is better)" if not T.metric_info(name).higher_is_better else "")


def format_table(result: dict) -> str:
    """Markdown: one row per metric (value and the number of items it is over)."""
    m, n = result.get("metrics", {}), result.get("counts", {})
    lines = [f"### eval: {result.get('model') or 'responder'} ({result.get('model_kind')})", "",
             "| metric | value | n |", "|---|---:|---:|"]
    for name in metric_order(m):
        lines.append(f"| {_label(name)} | {fmt_value(name, m[name])} | {n.get(name, '')} |")
    for suite, why in result.get("skipped", {}).items():
        lines.append(f"\n_{suite} skipped: {why}_")
    return "\n".join(lines)


def load_eval(path: str | Path) -> dict:
    """An eval.json, given the file or the checkpoint directory holding it."""
    p = Path(path)
    if p.is_dir():
        p = p / EVAL_FILE
    if not p.is_file():
        raise FileNotFoundError(f"{p} not found: run `gptlab eval --model DIR --world WORLD` first")
    return json.loads(p.read_text(encoding="utf-8"))


def compare(a: str | Path | dict, b: str | Path | dict, names: tuple[str, str] | None = None) -> str:
    """Side-by-side markdown of two eval.json files (or dirs): A, B and B - A.
    A trailing '+' marks a change for the better, '-' for the worse."""
    ra = a if isinstance(a, dict) else load_eval(a)
    rb = b if isinstance(b, dict) else load_eval(b)
    na, nb = names or (_short(a, ra), _short(b, rb))
    if na == nb:
        na, nb = f"A: {na}", f"B: {nb}"
    ma, mb = ra.get("metrics", {}), rb.get("metrics", {})
    lines = [f"| metric | {na} | {nb} | difference ({nb} - {na}) |", "|---|---:|---:|---:|"]
    for name in metric_order(set(ma) | set(mb)):
        va, vb = ma.get(name), mb.get(name)
        lines.append(f"| {_label(name)} | {fmt_value(name, va)} | {fmt_value(name, vb)} | "
                     f"{fmt_delta(name, va, vb)} |")
    return "\n".join(lines)


def _short(src, res: dict) -> str:
    if isinstance(src, dict):
        return str(res.get("model") or "model")
    p = Path(src)
    p = p.parent if p.name == EVAL_FILE else p
    return "/".join(p.parts[-2:]) if len(p.parts) >= 2 else str(p)
