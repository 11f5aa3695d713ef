"""Throughput of `gptlab data curate`: MB of text per second, wall clock and per CPU second.

The corpus is built from miniworld's small corpus: "pages" of `--docs-per-page` random
documents each (~2.5 KB, about the size of a web page of pretraining text; miniworld's own
documents average 0.3 KB, where per-document overhead dominates), plus the planted fixture
of tests/test_curate.py (duplicates, junk, PII, leaks). `--compare-datasketch` also times
the near-duplicate step alone with datasketch's MinHash + MinHashLSH against ours.

    nice python bench/curate.py                      # ~20 MB, 2 workers
    nice python bench/curate.py --mb 5 --workers 0 --compare-datasketch
"""
from __future__ import annotations

import argparse
import json
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

from gptlab.data.curate import CurateConfig, curate
from gptlab.data.curate_fixture import planted_corpus
from gptlab.data.curate_hash import NearDupIndex, minhash, normalize


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--world", help="miniworld directory (default: generate scale small in a temp dir)")
    p.add_argument("--mb", type=float, default=20.0, help="MB of page text to curate (default 20)")
    p.add_argument("--docs-per-page", type=int, default=12)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--raw", action="store_true", help="curate miniworld's documents as they are, not pages")
    p.add_argument("--compare-datasketch", action="store_true")
    return p.parse_args(argv)


def _cpu() -> tuple[float, float]:
    """CPU seconds of this process and of its finished children (the workers)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime, kids.ru_utime + kids.ru_stime


def build_input(world: Path, out: Path, mb: float, per_page: int, raw: bool) -> None:
    rng = random.Random(0)
    planted_corpus(world, out.with_name("planted.jsonl"), seed=0)
    lines = out.with_name("planted.jsonl").read_text(encoding="utf-8").splitlines()
    docs = [json.loads(line)["text"] for line in lines]
    with open(out, "w", encoding="utf-8") as f:
        size = 0
        for line in lines:
            f.write(line + "\n")
            size += len(line)
        while size < mb * 1e6:
            text = rng.choice(docs) if raw else "\n\n".join(rng.sample(docs, per_page))
            line = json.dumps({"text": text}, ensure_ascii=False)
            f.write(line + "\n")
            size += len(line)


def compare_datasketch(texts: list[str]) -> None:
    from datasketch import MinHash, MinHashLSH
    norms = [normalize(t).encode("utf-8") for t in texts]
    mb = sum(map(len, texts)) / 1e6
    t0 = time.process_time()
    lsh = MinHashLSH(threshold=0.7, num_perm=128)
    for i, n in enumerate(norms):
        m = MinHash(num_perm=128)
        m.update_batch([n[j:j + 8] for j in range(max(1, len(n) - 7))])
        if not lsh.query(m):
            lsh.insert(i, m)
    ds = time.process_time() - t0
    t0 = time.process_time()
    index = NearDupIndex(128, 32, 0.7)
    for n in norms:
        sig = minhash(n, 128)
        if sig is not None:
            index.query_insert(sig)
    ours = time.process_time() - t0
    print(f"near-dup step alone on {len(texts)} docs ({mb:.1f} MB), one process: datasketch "
          f"{mb / ds:.2f} MB/s, gptlab's one-permutation MinHash + LSH {mb / ours:.2f} MB/s "
          f"({ds / ours:.0f}x)")


def main(argv=None) -> None:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        world = Path(args.world) if args.world else tmp / "world"
        if not args.world:
            from gptlab.data.world import generate_world
            generate_world(world, seed=0, scale="small")
        src = tmp / "input.jsonl"
        build_input(world, src, args.mb, args.docs_per_page, args.raw)
        cpu0, t0 = _cpu(), time.time()
        rep = curate(CurateConfig(input=str(src), out=str(tmp / "out"), world=str(world),
                                  workers=args.workers, progress=False))
        wall = time.time() - t0
        parent, workers = (b - a for a, b in zip(cpu0, _cpu()))
        cpu = parent + workers
        mb = rep["total"]["bytes"] / 1e6
        print(f"{rep['total']['docs']} docs, {mb:.1f} MB (mean {1e3 * mb / rep['total']['docs']:.2f} KB), "
              f"workers {args.workers}: {mb / wall:.1f} MB/s wall, {mb / cpu:.1f} MB per CPU second "
              f"(parent {parent:.1f} s + workers {workers:.1f} s of CPU; {cpu / wall:.2f} cores busy on average)")
        print(json.dumps({r: s["docs"] for r, s in rep["removed"].items()}))
        if args.compare_datasketch:
            texts = [json.loads(line)["text"] for line in src.read_text(encoding="utf-8").splitlines()[:3000]]
            compare_datasketch(texts)


if __name__ == "__main__":
    sys.exit(main())
