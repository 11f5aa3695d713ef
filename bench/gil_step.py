"""A decode step beside a busy Python thread: what the GIL costs the server's worker.

The server's worker thread runs decode steps while the event loop thread parses requests.
A step from Python gives the GIL back at each torch op and must win it again; while the
other thread runs Python, each of those waits can last the switch interval. This times
``FusedDecoder.step`` (SmolLM2-135M, batch 1, one torch thread) alone and beside a thread
that adds integers in a loop, with the blocks scripted (TorchScript, the default) and as the
plain Python function, and prints each slowdown.

    python bench/gil_step.py --switch 0.0005
"""

from __future__ import annotations

import argparse
import sys
import threading
import time

import torch

import gptlab.engine as engine
from gptlab.chat import load_chat_model
from gptlab.interop import ensure_model
from gptlab.model import KVCache


def step_ms(fused, model, steps: int = 16) -> float:
    cache = KVCache(model.config, 1, steps + 8, device="cpu", dtype=torch.float32)
    state, token = fused.start(cache), torch.tensor([1])
    t0 = time.perf_counter()
    with torch.inference_mode():
        for _ in range(steps):
            fused.step(state, token, cache, None)
    return (time.perf_counter() - t0) / steps * 1e3


def beside_busy_thread(fn) -> float:
    stop = False

    def busy():
        n = 0
        while not stop:
            for i in range(1000):
                n += i

    thread = threading.Thread(target=busy, daemon=True)
    thread.start()
    try:
        return fn()
    finally:
        stop = True
        thread.join()


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--switch", type=float, default=0.0005, help="sys.setswitchinterval (the server's: 0.0005)")
    p.add_argument("--model", default="smollm2")
    args = p.parse_args(argv)
    sys.setswitchinterval(args.switch)
    torch.set_num_threads(1)
    model = load_chat_model(ensure_model(args.model)).model
    fused = engine.FusedDecoder(model)
    fused.refresh()
    scripted = engine._blocks_fn()
    for name, blocks in (("scripted", scripted), ("python", engine._blocks)):
        engine._blocks_fn = lambda blocks=blocks: blocks
        step_ms(fused, model)  # warm-up
        alone = min(step_ms(fused, model) for _ in range(3))
        busy = min(beside_busy_thread(lambda: step_ms(fused, model)) for _ in range(2))
        print(f"{name:8s} switch {args.switch * 1e3:g} ms: step alone {alone:.1f} ms, "
              f"beside a busy thread {busy:.1f} ms ({busy / alone:.1f}x)", flush=True)


if __name__ == "__main__":
    main()
