"""Throughput of `gptlab data curate`: MB of text per second, wall clock and per CPU second.

The corpus is built from miniworld's small corpus: "pages" of `--docs-per-page` random
documents each (~2.5 KB, about the size of a web page of pretraining text; miniworld's own
documents average 0.3 KB, where per-document overhead dominates), plus the planted fixture
of tests/test_curate.py (duplicates, junk, PII, leaks). `--compare-datasketch` also times
the near-duplicate step alone with datasketch's MinHash + MinHashLSH against ours.
`--baseline REV` also runs the curation code of git revision REV (its curate.py and
curate_hash.py, loaded from `git show`) on the same input, alternating with the current
code, so that both are measured under the same load.

    nice python bench/curate.py                      # ~20 MB, 2 workers
    nice python bench/curate.py --baseline HEAD --repeat 3
    nice python bench/curate.py --mb 5 --workers 0 --compare-datasketch
"""
from __future__ import annotations

import argparse
import importlib.util
import itertools
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import gptlab.data.curate  # noqa: F401  (the code measured)
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
    p.add_argument("--baseline", metavar="REV", help="also time the curation code of this git revision")
    p.add_argument("--repeat", type=int, default=1, help="runs of each code (default 1)")
    return p.parse_args(argv)


def load_revision(rev: str, folder: Path):
    """gptlab.data.curate as it was at git revision `rev`, importable beside the current one
    (its curate_hash is loaded from the same revision)."""
    root = Path(__file__).resolve().parent.parent
    def show(path: str) -> str:
        return subprocess.run(["git", "show", f"{rev}:{path}"], cwd=root, check=True,
                              capture_output=True, text=True).stdout
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "baseline_curate_hash.py").write_text(show("gptlab/data/curate_hash.py"))
    (folder / "baseline_curate.py").write_text(show("gptlab/data/curate.py").replace(
        "from gptlab.data.curate_hash import", "from baseline_curate_hash import"))
    sys.path.insert(0, str(folder))
    spec = importlib.util.spec_from_file_location("baseline_curate", folder / "baseline_curate.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["baseline_curate"] = module
    spec.loader.exec_module(module)
    return module


def timed_run(module, src: Path, out: Path, world: Path, workers: int) -> dict:
    """One curation of `src`: its report plus wall seconds and CPU seconds (parent, workers)."""
    cpu0, t0 = _cpu(), time.time()
    rep = module.curate(module.CurateConfig(input=str(src), out=str(out), world=str(world),
                                            workers=workers, progress=False))
    wall = time.time() - t0
    parent, children = (b - a for a, b in zip(cpu0, _cpu()))
    return {"report": rep, "wall": wall, "parent": parent, "workers": children}


def describe(name: str, run: dict, workers: int) -> str:
    rep, wall, parent, children = run["report"], run["wall"], run["parent"], run["workers"]
    cpu = parent + children
    mb = rep["total"]["bytes"] / 1e6
    return (f"{name}: {rep['total']['docs']} docs, {mb:.1f} MB (mean {1e3 * mb / rep['total']['docs']:.2f} KB), "
            f"workers {workers}: {mb / wall:.1f} MB/s wall, {mb / cpu:.1f} MB per CPU second "
            f"(parent {parent:.2f} s + workers {children:.2f} s of CPU; {cpu / wall:.2f} cores busy on "
            f"average; load average {os.getloadavg()[0]:.2f})")


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
        codes = [("current", sys.modules["gptlab.data.curate"])]
        if args.baseline:
            codes.insert(0, (f"baseline {args.baseline}", load_revision(args.baseline, tmp / "baseline")))
        warm = tmp / "warm.jsonl"         # imports and first calls outside the timing
        with open(src, encoding="utf-8") as f:
            warm.write_text("".join(itertools.islice(f, 300)), encoding="utf-8")
        for _, module in codes:
            timed_run(module, warm, tmp / "warm_out", world, args.workers)
        for k in range(args.repeat):
            for name, module in codes:
                run = timed_run(module, src, tmp / f"out{k}", world, args.workers)
                shutil.rmtree(tmp / f"out{k}")
                print(describe(name, run, args.workers), flush=True)
        print(json.dumps({r: s["docs"] for r, s in run["report"]["removed"].items()}))
        if args.compare_datasketch:
            texts = [json.loads(line)["text"] for line in src.read_text(encoding="utf-8").splitlines()[:3000]]
            compare_datasketch(texts)


if __name__ == "__main__":
    sys.exit(main())
