"""What decontamination is worth: the from-scratch track (make demo's cpu-tiny preset:
pretrain, then SFT) trained on miniworld's corpus three ways, then QA measured on the
held-out QA set:

- clean:   the corpus as generated, curated as the speedrun curates it;
- leaked:  the same corpus plus the held-out QA items (question and reference answer)
           planted as "quiz pages", curated with every rule but decontamination;
- curated: the leaked corpus curated with decontamination on (13-gram overlap with the
           world's eval sets), i.e. what `make demo` does.

A leak is planted `--copies` times, each copy on a page of `--per-page` items in another
order, so the copies are neither exact nor near duplicates of each other (dedup alone
would otherwise remove all but one). The gap leaked - clean is the contamination effect;
curated - clean is what curation leaves of it. One tokenizer (trained on the clean
corpus) serves all three arms. The pages go after the clean documents, so with them
removed the curated arm's corpus is the clean arm's byte for byte; an arm whose kept
corpus equals an earlier arm's is reported as that arm, not trained again.

    nice python bench/contamination.py --out /tmp/contam          # ~25 min on 2 cores
    python bench/contamination.py --out /tmp/c --steps 30 --sft-epochs 0.2   # a quick look
"""
from __future__ import annotations

import argparse
import hashlib
import json
import random
import time
from pathlib import Path

from gptlab.data.curate import CurateConfig, curate, eval_texts
from gptlab.fileio import read_jsonl, write_jsonl

ARMS = ("clean", "leaked", "curated")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="working directory (one folder per arm)")
    p.add_argument("--world", help="miniworld directory (default: generate scale small, seed 0, in OUT/world)")
    p.add_argument("--copies", type=int, default=3, help="times each held-out QA item is planted")
    p.add_argument("--per-page", type=int, default=5, help="QA items per planted page")
    p.add_argument("--steps", type=int, default=None, help="pretraining steps (default: the cpu-tiny preset's)")
    p.add_argument("--sft-epochs", type=float, default=None, help="SFT epochs (default: the preset's)")
    p.add_argument("--arms", default=",".join(ARMS), help="which arms to run, comma-separated")
    p.add_argument("--seed", type=int, default=0, help="seed of pretraining and SFT (init, data order)")
    return p.parse_args(argv)


def quiz_pages(items: list[dict], copies: int, per_page: int, seed: int = 0) -> list[str]:
    """Each QA item `copies` times, `per_page` items a page, in a fresh order per copy."""
    rng = random.Random(seed)
    texts = [eval_texts(rec) for rec in items]
    pages = []
    for c in range(copies):
        order = rng.sample(range(len(texts)), len(texts))
        for start in range(0, len(order), per_page):
            lines = [f"Q{k + 1}. {texts[i]}" for k, i in enumerate(order[start:start + per_page])]
            pages.append(f"Geography quiz, set {c + 1}.{start // per_page + 1} (with answers)\n" + "\n".join(lines))
    return pages


def leaked_corpus(world: Path, out: Path, copies: int, per_page: int) -> tuple[Path, int]:
    """world/corpus plus the planted pages, as one jsonl file; returns it and the page count."""
    docs = [rec for f in sorted((world / "corpus").glob("*.jsonl")) for rec in read_jsonl(f)]
    pages = quiz_pages(read_jsonl(world / "eval" / "qa.jsonl"), copies, per_page)
    # after the clean documents (pretraining's validation split is the first documents, and
    # the loader visits rows in a seeded random order anyway): with the pages removed, the
    # curated arm's corpus is the clean arm's, byte for byte
    path = out / "leaked_corpus" / "corpus.jsonl"
    write_jsonl(path, docs + [{"text": t} for t in pages])
    return path.parent, len(pages)


def train_arm(name: str, corpus: Path, world: Path, tok: Path, out: Path, decontaminate: bool,
              preset: dict, seed: int = 0, done: dict | None = None) -> dict:
    """Curate -> pretrain -> SFT -> chat eval of one arm; its QA figures and curation counts."""
    from gptlab.evals import evaluate
    from gptlab.train.pretrain import PretrainConfig, pretrain
    from gptlab.train.sft import SFTConfig, sft

    done = {} if done is None else done    # kept-corpus sha256 -> the row of the arm trained on it
    arm = out / name
    t0 = time.time()
    if not (arm / "curated" / "report.json").is_file():
        curate(CurateConfig(input=str(corpus), out=str(arm / "curated"),
                            world=str(world) if decontaminate else None, workers=2, progress=False))
    report = json.loads((arm / "curated" / "report.json").read_text())
    kept = arm / "curated" / "corpus"
    digest = corpus_sha(kept)
    if digest in done:   # the same kept text as an arm already trained: the same run
        return {**done[digest], "arm": name, "contamination_removed": report["removed"]["contamination"]["docs"],
                "same_corpus_as": done[digest]["arm"], "seconds": round(time.time() - t0)}
    pretrain(PretrainConfig(data=str(kept), tokenizer=str(tok), out=str(arm / "pretrain"),
                            depth=preset["depth"], seq_len=preset["seq_len"], max_steps=preset["pretrain_steps"],
                            device_batch_size=preset["device_batch_size"],
                            total_batch_tokens=preset["total_batch_tokens"], val_docs=preset["val_docs"],
                            lr=preset["lr"], optimizer=preset["optimizer"], resume=True, progress=False, seed=seed,
                            eval_every=max(preset["pretrain_steps"] // 5, 1)))
    sft(SFTConfig(init=str(arm / "pretrain" / "final"), data=str(world), out=str(arm / "sft"),
                  mix=f"{kept}:{preset['sft_mix']}", seq_len=preset["seq_len"], epochs=preset["sft_epochs"],
                  lr=preset["sft_lr"], resume=True, progress=False, seed=seed))
    ev = evaluate(arm / "sft" / "final", world, ["chat"], progress=False)
    m, n = ev["metrics"], ev["counts"]
    row = {"arm": name, "qa": m["qa_accuracy"], "qa_n": n["qa_accuracy"],
            "relations": {k.split("/", 1)[1]: m[k] for k in m if k.startswith("qa_accuracy/")},
            "judge_score": m.get("judge_score"),
            "contamination_removed": report["removed"]["contamination"]["docs"],
            "kept_docs": report["kept"]["docs"], "seconds": round(time.time() - t0)}
    done[digest] = row
    return row


def corpus_sha(folder: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(folder.glob("*.jsonl")):
        h.update(f.read_bytes())
    return h.hexdigest()


def main(argv=None) -> None:
    from gptlab.data.world import generate_world
    from gptlab.speedrun import PRESETS
    from gptlab.speedrun_assistant import wilson
    from gptlab.tokenizer import train_tokenizer_from_source

    args = parse_args(argv)
    out = Path(args.out)
    preset = dict(PRESETS["cpu-tiny"])
    preset["pretrain_steps"] = args.steps or preset["pretrain_steps"]
    preset["sft_epochs"] = args.sft_epochs or preset["sft_epochs"]
    world = Path(args.world) if args.world else out / "world"
    if not (world / "manifest.json").is_file():
        generate_world(world, seed=0, scale="small")
    leaked, pages = leaked_corpus(world, out, args.copies, args.per_page)
    tok = out / "tokenizer"
    if not (tok / "tokenizer.json").is_file():
        train_tokenizer_from_source(world / "corpus", tok, vocab_size=preset["vocab_size"])
    sources = {"clean": (world / "corpus", True), "leaked": (leaked, False), "curated": (leaked, True)}
    rows, done = [], {}
    for name in [a for a in args.arms.split(",") if a]:
        corpus, decontaminate = sources[name]
        rows.append(train_arm(name, corpus, world, tok, out / f"seed{args.seed}", decontaminate, preset, args.seed, done))
        print(json.dumps(rows[-1]), flush=True)
    (out / f"contamination.seed{args.seed}.json").write_text(json.dumps({"pages": pages, "copies": args.copies, "seed": args.seed,
                                                        "preset": preset, "arms": rows}, indent=1))
    print(f"\n{pages} quiz pages planted ({args.copies} copies of each held-out QA item); "
          f"pretrain {preset['pretrain_steps']} steps, SFT {preset['sft_epochs']} epochs")
    print("| arm | QA on the held-out set (95% interval) | contamination docs removed | kept docs |")
    print("|---|---|---:|---:|")
    for r in rows:
        lo, hi = wilson(r["qa"], r["qa_n"])
        same = f" (kept corpus identical to {r['same_corpus_as']}'s)" if "same_corpus_as" in r else ""
        print(f"| {r['arm']} | {100 * r['qa']:.1f}% [{100 * lo:.0f}-{100 * hi:.0f}] n={r['qa_n']}{same} | "
              f"{r['contamination_removed']} | {r['kept_docs']} |")


if __name__ == "__main__":
    main()
