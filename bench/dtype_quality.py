"""What serving in bfloat16 costs in quality: teacher-forced negative log-likelihood and top-1
agreement of a model in float32 and in bfloat16 (what `gptlab serve --dtype auto` picks for
big models on hardware with native bf16), on text the model did not train on (this
repository's docs, up to 512 tokens per file); then whether a seeded reply (temperature 0.8)
is the same when it runs alone and when it runs among 7 other requests in the server's
continuous-batching worker, in each dtype.

    python bench/dtype_quality.py                     # SmolLM2-135M-Instruct
    python bench/dtype_quality.py --model runs/demo/final --files 'docs/*.md'
"""

from __future__ import annotations

import argparse
import glob
import math

import torch


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2", help="checkpoint dir or alias")
    p.add_argument("--files", default="docs/*.md", help="glob of text files to score")
    p.add_argument("--max-tokens", type=int, default=512, help="tokens scored per file")
    p.add_argument("--seeded", type=int, default=6, help="seeded replies compared alone vs batched (0: skip)")
    p.add_argument("--reply-tokens", type=int, default=48)
    return p.parse_args(argv)


@torch.no_grad()
def score(model, docs: list[torch.Tensor]) -> tuple[float, torch.Tensor]:
    """Mean NLL per token (nats) and the argmax prediction at every position."""
    total, count, top = 0.0, 0, []
    for ids in docs:
        logits = model(ids[None])[0, :-1].float()
        total -= logits.log_softmax(-1).gather(1, ids[1:, None]).sum().item()
        count += len(ids) - 1
        top.append(logits.argmax(-1))
    return total / count, torch.cat(top)


QUESTIONS = ["Tell me a short story about a cat.", "What is the capital of France?", "Write a poem about rain.",
             "Give me three tips for learning Python.", "Describe the ocean.", "Why is the sky blue?",
             "Name a country in South America.", "What do bees make?"]


def batch_invariance(model, tok, n: int, tokens: int) -> int:
    """How many of ``n`` seeded replies are identical alone and in a batch of 8."""
    import threading

    from gptlab.chat import render_prompt, stop_token_ids
    from gptlab.serve.worker import Job, Worker

    worker = Worker(model, tok, stop_token_ids(tok), max_batch=16).start()

    def run(jobs):
        texts, done = {}, []
        for key, question, seed in jobs:
            texts[key], ev = "", threading.Event()
            done.append(ev)

            def emit(events, key=key, ev=ev):
                for e in events:
                    if e[0] == "delta":
                        texts[key] += e[2]
                    else:
                        ev.set()
            prompt = render_prompt(tok, [{"role": "user", "content": question}])
            worker.submit(Job(prompt, tokens, emit, temperature=0.8, seed=seed))
        for ev in done:
            ev.wait(600)
        return texts

    try:
        same = 0
        for s in range(n):
            me = ("me", QUESTIONS[s % len(QUESTIONS)], 100 + s)
            others = [(k, QUESTIONS[k], 7 + k + 10 * s) for k in range(7)]
            same += run([me])["me"] == run([me, *others])["me"]
        return same
    finally:
        worker.stop()


def main(argv=None) -> None:
    args = parse_args(argv)
    from gptlab.chat import load_chat_model
    from gptlab.interop import ensure_model

    ckpt = load_chat_model(ensure_model(args.model))
    model, tok = ckpt.model.eval(), ckpt.tokenizer
    files = sorted(glob.glob(args.files))
    if not files:
        raise SystemExit(f"no file matches {args.files!r}")
    docs = [torch.tensor(tok.encode(open(f, encoding="utf-8").read())[:args.max_tokens]) for f in files]
    docs = [d for d in docs if len(d) > 1]
    nll32, top32 = score(model, docs)
    same32 = batch_invariance(model, tok, args.seeded, args.reply_tokens) if args.seeded else None
    nll16, top16 = score(model.to(torch.bfloat16), docs)
    same16 = batch_invariance(model, tok, args.seeded, args.reply_tokens) if args.seeded else None
    print(f"{args.model}: {len(docs)} files, {sum(len(d) - 1 for d in docs)} scored tokens")
    print("| dtype | NLL (nats/token) | perplexity | top-1 agreement with float32 | seeded replies the same alone and batched |")
    print("|---|---|---|---|---|")
    print(f"| float32 | {nll32:.4f} | {math.exp(nll32):.2f} | 1 | {same32} of {args.seeded} |")
    print(f"| bfloat16 | {nll16:.4f} ({nll16 / nll32 - 1:+.2%}) | {math.exp(nll16):.2f} | "
          f"{(top16 == top32).float().mean().item():.3f} | {same16} of {args.seeded} |")


if __name__ == "__main__":
    main()
