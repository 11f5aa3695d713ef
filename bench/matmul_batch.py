"""What batching buys on this CPU: the time of one decode step's projections for a batch of
M rows against one row, in float32 and bfloat16 (the two dtypes `gptlab serve --dtype auto`
chooses between by timing them: gptlab.serve.dtype_auto).

Each measurement multiplies (M, K) activations by every weight matrix of a model's blocks
(q/k/v/o, gate/up/down; shapes from the model's config), so the weights stream from memory
as in a real decode step. A ratio near 1 means a batch of M costs what one row costs, so M
concurrent clients get close to M times the tokens/s; a ratio near M means batching buys
nothing.

    python bench/matmul_batch.py                          # SmolLM2-135M's shapes
    python bench/matmul_batch.py --model runs/demo/final --threads 1
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2", help="checkpoint dir or alias whose config gives the shapes")
    p.add_argument("--rows", default="1,8,16", help="batch sizes (the first is the reference)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--repeats", type=int, default=7, help="timed passes (median)")
    return p.parse_args(argv)


def block_shapes(config: dict) -> list[tuple[int, int]]:
    """(out, in) of every projection in every block."""
    d, i = config["hidden_size"], config["intermediate_size"]
    hd = config.get("head_dim") or d // config["num_attention_heads"]
    q, kv = config["num_attention_heads"] * hd, config["num_key_value_heads"] * hd
    per_block = [(q, d), (kv, d), (kv, d), (d, q), (i, d), (i, d), (d, i)]
    return per_block * config["num_hidden_layers"]


def step_ms(weights: list[torch.Tensor], rows: int, repeats: int) -> float:
    x = {w.shape[1]: torch.randn(rows, w.shape[1], dtype=w.dtype) for w in weights}
    times = []
    for _ in range(repeats + 1):  # the first pass warms up
        t0 = time.perf_counter()
        for w in weights:
            torch.nn.functional.linear(x[w.shape[1]], w)
        times.append(time.perf_counter() - t0)
    return 1e3 * sorted(times[1:])[len(times[1:]) // 2]


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_grad_enabled(False)
    if args.threads:
        torch.set_num_threads(args.threads)
    from gptlab.interop import ensure_model
    config = json.loads((Path(ensure_model(args.model)) / "config.json").read_text())
    shapes = block_shapes(config)
    rows = [int(r) for r in args.rows.split(",")]
    print(f"{args.model}: {len(shapes)} projections, {sum(o * i for o, i in shapes) / 1e6:.1f} M weights, "
          f"{torch.get_num_threads()} threads")
    print("| dtype | " + " | ".join(f"{r} rows (ms)" for r in rows) + " | " +
          " | ".join(f"{r} rows / {rows[0]}" for r in rows[1:]) + " |")
    print("|---" * (2 * len(rows)) + "|")
    for dtype in (torch.float32, torch.bfloat16):
        torch.manual_seed(0)
        weights = [torch.randn(o, i, dtype=dtype) for o, i in shapes]
        ms = [step_ms(weights, r, args.repeats) for r in rows]
        print(f"| {str(dtype).removeprefix('torch.')} | " + " | ".join(f"{m:.2f}" for m in ms) + " | " +
              " | ".join(f"{m / ms[0]:.2f}x" for m in ms[1:]) + " |")


if __name__ == "__main__":
    main()
