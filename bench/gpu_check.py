"""The measuring parts of bench/gpu_check.sh (issue 15); each writes one JSON file.

    python bench/gpu_check.py mfu --depth 12 --out R/mfu.json      # gptlab vs transformers
    python bench/gpu_check.py generate --model CKPT --out R/gen.json  # decode + serving worker
    python bench/gpu_check.py table R                               # the one table

mfu: gptlab's GPT and transformers' LlamaForCausalLM (sdpa) with the same config and
weights, each torch.compile'd, bf16 autocast, fused AdamW, one after the other in this
process; tokens/s over the timed steps, MFU against the GPU's peak bf16 FLOPS (6N + 12LdT
per token, the same count for both), peak memory.

generate: Engine.generate at batch 1 and 64 (greedy, prompts of 32 tokens), then the
serving worker (gptlab.serve.worker, in process, no HTTP: the GPU machine has no fastapi)
with 1 and 64 concurrent streams of max_tokens tokens each, ignore_eos.
"""
from __future__ import annotations

import argparse
import json
import os
import threading
import time
from pathlib import Path

import torch


def _sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _peak_mem(dev) -> float | None:
    return torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else None


def _train_rate(name, model, loss_fn, batch, steps, warmup, dev, flops_per_token, peak):
    """tokens/s, MFU and peak memory of compiled forward + backward + AdamW steps."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=dev.type == "cuda")
    step_fn = torch.compile(model)
    x, y = batch
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    t_compile = time.perf_counter()
    for i in range(warmup + steps):
        if i == warmup:
            _sync(dev)
            t0 = time.perf_counter()
        with torch.autocast(dev.type, dtype=torch.bfloat16):
            loss = loss_fn(step_fn, x, y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i == 0:
            _sync(dev)
            t_compile = time.perf_counter() - t_compile
    _sync(dev)
    dt = time.perf_counter() - t0
    tps = x.numel() * steps / dt
    return {"model": name, "tokens_per_s": tps, "mfu": flops_per_token * tps / peak if peak else None,
            "peak_mem_gib": _peak_mem(dev), "first_step_s": t_compile, "loss": float(loss)}


def cmd_mfu(a) -> dict:
    import torch.nn.functional as F
    from transformers import LlamaConfig, LlamaForCausalLM

    from gptlab.model import GPT, preset
    from gptlab.train.dist import resolve_device
    from gptlab.train.metrics import peak_flops

    dev = resolve_device(a.device)
    cfg = preset(a.depth, a.vocab_size, max_seq_len=a.seq_len)
    torch.manual_seed(0)
    ours = GPT(cfg).to(dev)
    fpt, peak = ours.flops_per_token(a.seq_len), peak_flops(dev)
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, a.vocab_size, (a.batch_size, a.seq_len + 1), generator=gen).to(dev)
    batch = (ids[:, :-1], ids[:, 1:])
    rows = [_train_rate("gptlab GPT", ours, lambda m, x, y: m(x, targets=y), batch, a.steps,
                        a.warmup, dev, fpt, peak)]
    weights = {k: v.detach().clone() for k, v in ours.state_dict().items()}
    del ours
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    hf = LlamaForCausalLM(LlamaConfig(**cfg.to_hf_dict(), attn_implementation="sdpa"))
    hf.load_state_dict(weights)
    hf.to(dev)

    def hf_loss(m, x, y):
        logits = m(input_ids=x).logits
        return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1))

    rows.append(_train_rate("transformers Llama", hf, hf_loss, batch, a.steps, a.warmup, dev, fpt, peak))
    return {"device": _device_name(dev), "depth": a.depth, "batch": [a.batch_size, a.seq_len],
            "vocab_size": a.vocab_size, "flops_per_token": fpt, "rows": rows,
            "torch": torch.__version__}


def _device_name(dev) -> str:
    return torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"


def cmd_generate(a) -> dict:
    from gptlab.chat import load_chat_model
    from gptlab.engine import Engine
    from gptlab.serve.worker import Job, Worker
    from gptlab.train.dist import resolve_device

    dev = resolve_device(a.device)
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    ck = load_chat_model(a.model, device=dev, dtype=dtype)
    model, tok = ck.model.eval(), ck.tokenizer
    vocab = model.config.vocab_size
    gen = torch.Generator().manual_seed(0)
    prompts = torch.randint(3, vocab, (a.streams, a.prompt_len), generator=gen).tolist()
    out = {"device": _device_name(dev), "dtype": str(dtype), "new_tokens": a.new_tokens}
    engine = Engine(model, tok)
    for b in (1, a.streams):
        engine.generate(prompts[:b], max_new_tokens=4)  # warm-up
        _sync(dev)
        t0 = time.perf_counter()
        done = engine.generate(prompts[:b], max_new_tokens=a.new_tokens, stop_token_ids=[])
        _sync(dev)
        out[f"decode_b{b}_tokens_per_s"] = sum(len(d) for d in done) / (time.perf_counter() - t0)
    worker = Worker(model, tok, stop_ids=[], max_batch=a.streams).start()
    try:
        for clients in (1, a.streams):
            out[f"serve_{clients}_tokens_per_s"] = _serve_rate(worker, Job, prompts[:clients], a.new_tokens)
    finally:
        worker.stop()
    out["serve_scaling"] = out[f"serve_{a.streams}_tokens_per_s"] / out["serve_1_tokens_per_s"]
    return out


def _serve_rate(worker, Job, prompts, max_tokens) -> float:
    """Aggregate completion tokens/s of len(prompts) concurrent requests."""
    left, lock, done, tokens = [len(prompts)], threading.Lock(), threading.Event(), [0]

    def emit(events):
        for ev in events:
            if ev[0] == "error":
                raise RuntimeError(f"serving worker: {ev}")
            if ev[0] == "finish":
                with lock:
                    tokens[0] += ev[3]
                    left[0] -= 1
                    if not left[0]:
                        done.set()

    t0 = time.perf_counter()
    for p in prompts:
        worker.submit(Job(prompt_ids=p, max_tokens=max_tokens, emit=emit, temperature=0.0,
                          ignore_eos=True))
    if not done.wait(600):
        raise TimeoutError("serving worker did not finish within 600 s")
    return tokens[0] / (time.perf_counter() - t0)


def cmd_metrics(a) -> dict:
    """A training run's metrics.jsonl -> steps, median tokens/s and MFU (first 3 steps, which
    include compiling, left out), and the last validation loss."""
    import statistics

    recs = [json.loads(line) for line in Path(a.metrics).read_text().splitlines() if line.strip()]
    steps = [r for r in recs if "loss" in r]
    timed = steps[3:] or steps
    vals = [r["val_loss"] for r in recs if r.get("val_loss") is not None]
    mfus = [r["mfu"] for r in timed if r.get("mfu") is not None]
    return {"steps": steps[-1]["step"] if steps else 0,
            "tokens_per_s": statistics.median(r["tokens_per_s"] for r in timed) if timed else None,
            "mfu": statistics.median(mfus) if mfus else None,
            "val_loss": vals[-1] if vals else None,
            "best_val_loss": min(vals) if vals else None}


def cmd_table(a) -> None:
    """One markdown table of every part's result under the results directory."""
    r = Path(a.results)

    def load(name):
        p = r / name
        return json.loads(p.read_text()) if p.exists() else None

    def fmt(v, spec=".3g"):
        return "-" if v is None else format(v, spec) if isinstance(v, (int, float)) else str(v)

    lines = ["| check | result |", "| --- | --- |"]
    for row in (load("parts.json") or []):  # the shell script's parts: name, status, seconds
        lines.append(f"| {row['name']} | {row['status']}, {row['seconds']:.0f} s |")
    mfu = load("mfu.json")
    if mfu:
        for m in mfu["rows"]:
            mfu_txt = "-" if m["mfu"] is None else f"{100 * m['mfu']:.1f}%"
            lines.append(f"| train d{mfu['depth']} {m['model']} (compiled, bf16, "
                         f"{mfu['batch'][0]}x{mfu['batch'][1]}) | {m['tokens_per_s']:,.0f} tok/s, "
                         f"MFU {mfu_txt}, {fmt(m['peak_mem_gib'], '.1f')} GiB, "
                         f"first step {m['first_step_s']:.0f} s |")
        a_, b_ = mfu["rows"]
        lines.append(f"| gptlab / transformers | {a_['tokens_per_s'] / b_['tokens_per_s']:.2f}x |")
    dtype = "float32" if os.environ.get("GPU_CHECK_TINY") == "1" else "bf16"   # gpu_check.sh's $DTYPE
    for name, label in (("pretrain", f"pretrain (compiled, {dtype})"), ("sft", f"SFT (compiled, {dtype})")):
        m = load(f"{name}.json")
        if m:
            mfu_txt = "-" if m.get("mfu") is None else f"{100 * m['mfu']:.1f}%"
            lines.append(f"| {label} | {m['steps']} steps, {fmt(m.get('tokens_per_s'), ',.0f')} tok/s, "
                         f"MFU {mfu_txt}, val loss {fmt(m.get('val_loss'), '.3f')} (best "
                         f"{fmt(m.get('best_val_loss'), '.3f')}) |")
    ev = load("eval.json")
    if ev:
        keys = ("qa_accuracy", "system_compliance", "judge_score", "harmful_refusal")
        vals = ", ".join(f"{k} {fmt(ev['metrics'].get(k))}" for k in keys if k in ev["metrics"])
        lines.append(f"| eval of the SFT model | {vals} |")
    g = load("generate.json")
    if g:
        s = g["new_tokens"]
        lines.append(f"| decode ({g['dtype']}, {s} new tokens) | batch 1: "
                     f"{g['decode_b1_tokens_per_s']:,.0f} tok/s, batch {_streams(g)}: "
                     f"{g[f'decode_b{_streams(g)}_tokens_per_s']:,.0f} tok/s |")
        lines.append(f"| serving worker | 1 stream: {g['serve_1_tokens_per_s']:,.0f} tok/s, "
                     f"{_streams(g)} streams: {g[f'serve_{_streams(g)}_tokens_per_s']:,.0f} tok/s "
                     f"({g['serve_scaling']:.1f}x) |")
    print("\n".join(lines))


def _streams(g) -> int:
    return max(int(k[len("serve_"):-len("_tokens_per_s")]) for k in g if k.startswith("serve_")
               and k.endswith("_tokens_per_s"))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("mfu")
    m.add_argument("--depth", type=int, default=12)
    m.add_argument("--vocab-size", type=int, default=32768)
    m.add_argument("--batch-size", type=int, default=32)
    m.add_argument("--seq-len", type=int, default=1024)
    m.add_argument("--steps", type=int, default=20)
    m.add_argument("--warmup", type=int, default=3)
    m.add_argument("--device", default="auto")
    m.add_argument("--out", required=True)
    g = sub.add_parser("generate")
    g.add_argument("--model", required=True)
    g.add_argument("--streams", type=int, default=64)
    g.add_argument("--prompt-len", type=int, default=32)
    g.add_argument("--new-tokens", type=int, default=128)
    g.add_argument("--device", default="auto")
    g.add_argument("--out", required=True)
    r = sub.add_parser("metrics")
    r.add_argument("metrics")
    r.add_argument("--out", required=True)
    t = sub.add_parser("table")
    t.add_argument("results")
    a = p.parse_args(argv)
    if a.cmd == "table":
        return cmd_table(a)
    result = {"mfu": cmd_mfu, "generate": cmd_generate, "metrics": cmd_metrics}[a.cmd](a)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
