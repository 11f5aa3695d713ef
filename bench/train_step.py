"""Training throughput of gptlab.model.GPT against transformers.LlamaForCausalLM.

Same config, same weights, same batch, same thread count, same precision, same optimizer
(fused AdamW: what `build_optimizer` gives ours, and the default of the transformers Trainer
on torch >= 2.8), measured in one process: the two models alternate step by step after a
warm-up, and the medians of the per-step times are compared. Prints tokens/s for both and
the ratio (ours / HF).

    python bench/train_step.py                      # depth 4, batch 8 x 256, 20 steps
    python bench/train_step.py --depth 6 --seq-len 512 --batch-size 4 --steps 10
    python bench/train_step.py --compile --dtype bfloat16   # both under bf16 autocast
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from gptlab.model import GPT, preset


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--vocab-size", type=int, default=4096)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--steps", type=int, default=20, help="timed steps per model")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--tied", action="store_true", help="tie input/output embeddings")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                   help="bfloat16: both models' steps run under CPU bf16 autocast (weights and "
                   "AdamW state stay float32, as in `gptlab pretrain --dtype bfloat16`)")
    p.add_argument("--compile", action="store_true", help="torch.compile gptlab's model (transformers "
                   "stays eager, the reference); the first step's time, compile included, is printed")
    return p.parse_args(argv)


def build(args):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = preset(args.depth, args.vocab_size, max_seq_len=args.seq_len)
    cfg.tie_word_embeddings = args.tied
    torch.manual_seed(args.seed)
    ours = GPT(cfg)
    hf = LlamaForCausalLM(LlamaConfig(**cfg.to_hf_dict()))
    hf.load_state_dict(ours.state_dict())
    return cfg, ours.train(), hf.train()


def make_steps(ours, hf, x, y, dtype=torch.float32):
    """One closure per model doing forward + backward + AdamW step on the same loss
    (HF gets ``shift_labels=y``: the same targets, no internal shift)."""

    def step_fn(model, loss_fn):
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1, fused=True)

        def step():
            with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
                loss = loss_fn()
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            return loss.item()
        return step

    return {
        "gptlab": step_fn(ours, lambda: ours(x, y)),
        "hf": step_fn(hf, lambda: hf(input_ids=x, labels=y, shift_labels=y).loss),
    }


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg, ours, hf = build(args)
    g = torch.Generator().manual_seed(args.seed)
    x = torch.randint(0, cfg.vocab_size, (args.batch_size, args.seq_len + 1), generator=g)
    x, y = x[:, :-1].contiguous(), x[:, 1:].contiguous()
    steps = make_steps(torch.compile(ours) if args.compile else ours, hf, x, y, getattr(torch, args.dtype))
    first, first_s = {}, {}
    for name, step in steps.items():  # also the first warm-up step (compiling, with --compile)
        t0 = time.perf_counter()
        first[name] = step()
        first_s[name] = time.perf_counter() - t0
    times = {name: [] for name in steps}
    for i in range(args.warmup + args.steps):
        for name in (list(steps) if i % 2 == 0 else list(steps)[::-1]):
            t0 = time.perf_counter()
            steps[name]()
            if i >= args.warmup:
                times[name].append(time.perf_counter() - t0)
    tokens = args.batch_size * args.seq_len
    tol = 1e-4 if args.dtype == "float32" else 1e-2  # bf16 rounds each matmul's inputs
    print(f"same initial loss: {abs(first['gptlab'] - first['hf']) < tol} "
          f"(gptlab {first['gptlab']:.5f}, hf {first['hf']:.5f})")
    print(f"first step (compile included{'' if args.compile else ': none'}): gptlab {first_s['gptlab']:.1f} s, "
          f"hf {first_s['hf']:.1f} s")
    print(f"config: depth={args.depth} params={ours.num_params() / 1e6:.2f}M vocab={cfg.vocab_size} "
          f"batch={args.batch_size}x{args.seq_len} threads={args.threads} tied={args.tied} "
          f"dtype={args.dtype} compiled={args.compile} torch={torch.__version__}")
    tps = {}
    for name, ts in times.items():
        med = statistics.median(ts)
        tps[name] = tokens / med
        lo, hi = (tokens / q for q in statistics.quantiles(ts, n=4)[::2][::-1])
        print(f"{name:>7}: {tps[name]:10.0f} tokens/s  (IQR {lo:.0f}-{hi:.0f}; median step "
              f"{med * 1e3:.1f} ms over {len(ts)} steps)")
    print(f"  ratio: {tps['gptlab'] / tps['hf']:.2f}x (gptlab / hf)")
    return tps


if __name__ == "__main__":
    main()
