"""Batch-1 greedy decode speed: gptlab.engine.Engine against transformers' generate().

Same weights, same prompt, same thread count, same number of new tokens (no early stop),
``use_cache=True`` for Hugging Face. The two alternate run by run after a warm-up; the
medians are compared, and the two greedy completions are checked to be identical.

    python bench/decode.py                         # depth 4, 32-token prompt, 128 new tokens
    python bench/decode.py --depth 8 --new-tokens 64 --runs 3
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from gptlab.engine import Engine
from gptlab.model import GPT, preset


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--vocab-size", type=int, default=4096)
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--runs", type=int, default=5, help="timed runs per implementation")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv=None):
    from transformers import LlamaConfig, LlamaForCausalLM

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = preset(args.depth, args.vocab_size, max_seq_len=args.prompt_len + args.new_tokens)
    torch.manual_seed(args.seed)
    ours = GPT(cfg).eval()
    hf = LlamaForCausalLM(LlamaConfig(**cfg.to_hf_dict())).eval()
    hf.load_state_dict(ours.state_dict())
    engine = Engine(ours, tokenizer=None)
    prompt = torch.randint(0, cfg.vocab_size, (1, args.prompt_len),
                           generator=torch.Generator().manual_seed(args.seed))
    n = args.new_tokens

    def run_ours():
        return engine.generate([prompt[0].tolist()], max_new_tokens=n, stop_token_ids=[])[0]

    def run_hf():
        with torch.inference_mode():
            out = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=n,
                              min_new_tokens=n, do_sample=False, use_cache=True,
                              pad_token_id=0, eos_token_id=None)
        return out[0, args.prompt_len:].tolist()

    runs = {"gptlab": run_ours, "hf": run_hf}
    times, outputs = {k: [] for k in runs}, {}
    for i in range(args.warmup + args.runs):
        for name in (list(runs) if i % 2 == 0 else list(runs)[::-1]):
            t0 = time.perf_counter()
            outputs[name] = runs[name]()
            if i >= args.warmup:
                times[name].append(time.perf_counter() - t0)
    print(f"config: depth={args.depth} params={ours.num_params() / 1e6:.2f}M vocab={cfg.vocab_size} "
          f"prompt={args.prompt_len} new_tokens={n} batch=1 threads={args.threads} "
          f"torch={torch.__version__}")
    print(f"same greedy tokens: {outputs['gptlab'] == outputs['hf']}")
    tps = {}
    for name, ts in times.items():
        med = statistics.median(ts)
        tps[name] = n / med
        lo, hi = (n / q for q in statistics.quantiles(ts, n=4)[::2][::-1])
        print(f"{name:>7}: {tps[name]:8.1f} tokens/s  (IQR {lo:.1f}-{hi:.1f}; median {med * 1e3:.0f} ms "
              f"per generate, {len(ts)} runs)")
    print(f"  ratio: {tps['gptlab'] / tps['hf']:.2f}x (gptlab / hf)")
    return tps


if __name__ == "__main__":
    main()
