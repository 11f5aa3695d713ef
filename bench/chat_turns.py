"""Multi-turn chat latency with and without the server's prefix cache.

One client holds a conversation of ``--turns`` turns (each turn sends the whole history, as
every chat UI does, plus a new question); the time to first token (TTFT) of each turn is
mostly the prompt pass over that history. The same conversation runs against a server with
``--prefix-cache-mb 0`` and one with the cache on (replies are greedy, so both
conversations are the same in float32; in bfloat16 the rounding of a prompt pass that starts
from cached keys differs from a full one's, so the replies, and so the later prompts, can
drift apart), and the bench prints each turn's prompt tokens, cached tokens and TTFT side by
side.

    python bench/chat_turns.py --dtype float32                # SmolLM2-135M-Instruct
    python bench/chat_turns.py --model runs/demo/final --turns 6
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).parent))
from serve_load import start_server  # noqa: E402  (the same server launch as the load bench)

QUESTIONS = ["Tell me about the history of Rome in a few sentences.", "What happened after that?",
             "Who were the most important emperors?", "Which of them built the most?",
             "How did the empire end?", "What can a visitor see in Rome today?",
             "Which museums should I not miss?", "Thanks! Summarize our conversation in two lines."]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2", help="checkpoint directory or alias")
    p.add_argument("--turns", type=int, default=6)
    p.add_argument("--max-tokens", type=int, default=64, help="reply length per turn")
    p.add_argument("--cache-mb", type=float, default=256, help="prefix cache of the second server")
    p.add_argument("--port", type=int, default=8793)
    p.add_argument("--dtype", default="auto", help="the server's --dtype")
    return p.parse_args(argv)


def conversation(port: int, turns: int, max_tokens: int) -> list[dict]:
    messages, rows = [{"role": "system", "content": "You are a helpful, concise assistant."}], []
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=600) as client:
        for turn in range(turns):
            messages.append({"role": "user", "content": QUESTIONS[turn % len(QUESTIONS)]})
            body = {"model": "default", "messages": messages, "max_tokens": max_tokens, "temperature": 0,
                    "stream": True, "stream_options": {"include_usage": True}}
            t0, ttft, text, usage = time.perf_counter(), None, [], None
            with client.stream("POST", "/v1/chat/completions", json=body) as r:
                r.raise_for_status()
                for line in r.iter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    chunk = json.loads(line[6:])
                    if chunk.get("usage"):
                        usage = chunk["usage"]
                    if chunk.get("choices") and chunk["choices"][0]["delta"].get("content"):
                        ttft = ttft or time.perf_counter() - t0
                        text.append(chunk["choices"][0]["delta"]["content"])
            messages.append({"role": "assistant", "content": "".join(text)})
            rows.append({"prompt_tokens": usage["prompt_tokens"],
                         "cached_tokens": usage.get("prompt_tokens_details", {}).get("cached_tokens", 0),
                         "ttft_ms": 1e3 * (ttft or float("nan")), "reply": "".join(text)})
    return rows


def warm_up(port: int) -> None:
    """One short request that shares no prefix with the conversation (beyond the template's
    first tokens, under the 8-token minimum)."""
    body = {"model": "default", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
    httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=body, timeout=600).raise_for_status()


def run(args, cache_mb: float) -> list[dict]:
    db = Path(os.environ.get("TMPDIR", "/tmp")) / f"chat_turns_{os.getpid()}_{cache_mb:g}.db"
    server_args = argparse.Namespace(model=args.model, port=args.port, max_batch=16, dtype=args.dtype,
                                     threads=None, extra=["--prefix-cache-mb", str(cache_mb)])
    proc = start_server(server_args, db)
    try:
        warm_up(args.port)
        return conversation(args.port, args.turns, args.max_tokens)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        for suffix in ("", "-wal", "-shm"):
            Path(str(db) + suffix).unlink(missing_ok=True)


def main(argv=None) -> None:
    args = parse_args(argv)
    off, on = run(args, 0), run(args, args.cache_mb)
    print(f"model {args.model} (--dtype {args.dtype}), {args.turns} turns, {args.max_tokens}-token greedy replies")
    print("| turn | prompt tokens off / on | cached (cache on) | TTFT cache off (ms) | TTFT cache on (ms) | off / on |")
    print("|---|---|---|---|---|---|")
    for i, (a, b) in enumerate(zip(off, on), 1):
        print(f"| {i} | {a['prompt_tokens']} / {b['prompt_tokens']} | {b['cached_tokens']} | {a['ttft_ms']:.0f} | "
              f"{b['ttft_ms']:.0f} | {a['ttft_ms'] / b['ttft_ms']:.2f}x |")
    same = sum(a["reply"] == b["reply"] for a, b in zip(off, on))
    print(f"replies identical with and without the cache: {same} of {len(on)}")


if __name__ == "__main__":
    main()
