"""Batch-1 greedy decode speed: gptlab.engine.Engine against transformers' generate().

Same weights, same prompt, same thread count, same number of new tokens (no early stop),
``use_cache=True`` for Hugging Face. A third run, ``unfused``, is our engine with
``fuse=False`` (every decode step through ``GPT.forward`` instead of
``gptlab.engine.FusedDecoder``). They alternate run by run (the order reversed every
other round) after a warm-up; the medians are compared, and the greedy completions are
checked to be identical. Each run's process CPU time is reported too: on a shared machine
with ``--threads 1`` its ratio does not count the time the scheduler gave to other
processes, so it is the steadier figure under load.

    python bench/decode.py                         # depth 4, 32-token prompt, 128 new tokens
    python bench/decode.py --depth 8 --new-tokens 64 --runs 3

``--model smollm2`` (or a checkpoint directory) benchmarks a real model instead: the
imported SmolLM2-135M-Instruct (gptlab.interop.ensure_model), loaded into transformers by
``LlamaForCausalLM.from_pretrained`` from the same checkpoint directory. It reports prefill
tokens/s (prompt tokens / time to the first token) and decode tokens/s (the remaining
new tokens / their time) separately, for gptlab in float32 and with each ``--weights``
mode (see gptlab.engine), for transformers' ``generate`` (timed through a streamer), and
for llama-cpp-python when it is importable (the checkpoint exported to an f32 GGUF, the
same precision, and the original Q4_1 GGUF; f32 KV cache: ``type_k=type_v=0``), plus
each implementation's weight memory (tensor bytes; the GGUF size for llama.cpp), its peak
RSS growth during one call (Linux), the process peak RSS, and greedy agreement with
gptlab float32. Last, the read bandwidth is measured and each implementation's decode speed
is printed as a share of its limit (bandwidth / the weight bytes it reads a token), with the
targets of issue 19: gptlab f32 / llama.cpp f32 and gptlab int4 / llama.cpp Q4_1.
llama-cpp-python is not a project dependency: its default pip build uses -march=native,
which emits AMX instructions on CPUs that advertise AMX, and VMs that do not allow them
crash at the first decode; the bench prints the build command that avoids it.

    python bench/decode.py --model smollm2 --threads 2     # 128-token prompt, 64 new tokens
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time
from pathlib import Path

import torch

from gptlab.engine import Engine
from gptlab.model import GPT, preset


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--vocab-size", type=int, default=4096)
    p.add_argument("--prompt-len", type=int, default=None, help="default 32 (128 with --model)")
    p.add_argument("--new-tokens", type=int, default=None, help="default 128 (64 with --model)")
    p.add_argument("--runs", type=int, default=None, help="timed runs per implementation (default 5, 3 with --model)")
    p.add_argument("--model", default=None, help="a checkpoint directory or alias (smollm2) instead of the preset")
    p.add_argument("--weights", default="int4,int4+int8,int8,bf16",
                   help="with --model: comma-separated gptlab weight modes to time besides float32 ('' for none)")
    p.add_argument("--no-llama-cpp", action="store_true", help="with --model: skip llama-cpp-python")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv=None):
    from transformers import LlamaConfig, LlamaForCausalLM

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    model_mode = args.model is not None
    for name, tiny, real in (("prompt_len", 32, 128), ("new_tokens", 128, 64), ("runs", 5, 3)):
        if getattr(args, name) is None:
            setattr(args, name, real if model_mode else tiny)
    if model_mode:
        return bench_model(args)
    cfg = preset(args.depth, args.vocab_size, max_seq_len=args.prompt_len + args.new_tokens)
    torch.manual_seed(args.seed)
    ours = GPT(cfg).eval()
    hf = LlamaForCausalLM(LlamaConfig(**cfg.to_hf_dict())).eval()
    hf.load_state_dict(ours.state_dict())
    engine = Engine(ours, tokenizer=None)  # small model: decode steps through FusedDecoder
    unfused = Engine(ours, tokenizer=None, fuse=False)  # every step through GPT.forward
    prompt = torch.randint(0, cfg.vocab_size, (1, args.prompt_len),
                           generator=torch.Generator().manual_seed(args.seed))
    n = args.new_tokens

    def run_ours(engine=engine):
        return engine.generate([prompt[0].tolist()], max_new_tokens=n, stop_token_ids=[])[0]

    def run_hf():
        with torch.inference_mode():
            out = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=n,
                              min_new_tokens=n, do_sample=False, use_cache=True,
                              pad_token_id=0, eos_token_id=None)
        return out[0, args.prompt_len:].tolist()

    runs = {"gptlab": run_ours, "hf": run_hf, "unfused": lambda: run_ours(unfused)}
    times, cpu, outputs = {k: [] for k in runs}, {k: [] for k in runs}, {}
    for i in range(args.warmup + args.runs):
        for name in (list(runs) if i % 2 == 0 else list(runs)[::-1]):
            t0, c0 = time.perf_counter(), time.process_time()
            outputs[name] = runs[name]()
            if i >= args.warmup:
                times[name].append(time.perf_counter() - t0)
                cpu[name].append(time.process_time() - c0)
    print(f"config: depth={args.depth} params={ours.num_params() / 1e6:.2f}M vocab={cfg.vocab_size} "
          f"prompt={args.prompt_len} new_tokens={n} batch=1 threads={args.threads} "
          f"torch={torch.__version__}")
    print(f"same greedy tokens: {outputs['gptlab'] == outputs['hf'] == outputs['unfused']}")
    tps = {}
    for name, ts in times.items():
        med = statistics.median(ts)
        tps[name] = n / med
        lo, hi = (n / q for q in statistics.quantiles(ts, n=4)[::2][::-1])
        print(f"{name:>7}: {tps[name]:8.1f} tokens/s  (IQR {lo:.1f}-{hi:.1f}; median {med * 1e3:.0f} ms "
              f"per generate, {len(ts)} runs; CPU {statistics.median(cpu[name]) * 1e3:.0f} ms)")
    cpu_ratio = {k: statistics.median(cpu["hf"]) / statistics.median(cpu[k]) for k in ("gptlab", "unfused")}
    print(f"  ratio: {tps['gptlab'] / tps['hf']:.2f}x (gptlab / hf); without the fused decode step "
          f"{tps['unfused'] / tps['hf']:.2f}x")
    print(f"  CPU-time ratio: {cpu_ratio['gptlab']:.2f}x; unfused {cpu_ratio['unfused']:.2f}x "
          "(hf CPU seconds / ours; with --threads 1 immune to time lost to other processes)")
    return tps


# ----------------------------------------------------------------------------- --model


PROMPT_TEXT = (
    "The history of astronomy spans thousands of years. Ancient observers tracked the motions of "
    "the Sun, the Moon and the planets, and used them to keep calendars and to navigate. The "
    "telescope changed everything: Galileo saw the moons of Jupiter and the phases of Venus, and "
    "Kepler described the orbits of the planets as ellipses. Newton explained why, with a single "
    "law of gravitation. Today astronomers study light at every wavelength, from radio waves to "
    "gamma rays, and detect gravitational waves from merging black holes. "
)


def _proc_kb(field: str) -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _reset_peak_rss() -> bool:
    try:  # Linux: writing 5 to clear_refs resets VmHWM (the peak RSS) to the current RSS
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class _Clock:
    """A transformers streamer that only records when each chunk of tokens arrives: the
    prompt (before prefill), then every new token."""

    def __init__(self):
        self.t = []

    def put(self, value):
        self.t.append(time.perf_counter())

    def end(self):
        pass


def _first_diff(a, b) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def bench_model(args):
    import tempfile

    from transformers import LlamaForCausalLM

    from gptlab.checkpoint import load_checkpoint
    from gptlab.interop import ALIASES, ensure_model

    n, P = args.new_tokens, args.prompt_len
    if n < 2:
        raise SystemExit("--new-tokens must be >= 2 (decode speed needs steps after the first token)")
    ck_dir = ensure_model(args.model)
    mem, impls = {}, {}

    def loaded(name, module):  # MB of distinct weight tensors the implementation holds and reads a token
        def storages(m):
            return {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
                    for t in [*m.parameters(), *m.buffers()]}
        seen = storages(module)
        # a decode step reads every weight once, except the input embedding: one row is looked
        # up, unless the head multiplies by that same table (tied, as in SmolLM2)
        emb = module.model.embed_tokens.weight.untyped_storage().data_ptr()
        looked_up = seen[emb] if emb not in storages(module.lm_head) else 0
        mem[name] = {"load_mb": sum(seen.values()) / 2**20, "read_mb": (sum(seen.values()) - looked_up) / 2**20}

    ck = load_checkpoint(ck_dir)
    model, tok = ck.model.eval(), ck.tokenizer
    loaded("gptlab f32", model)
    ids = (tok.encode(PROMPT_TEXT) * (P // 8 + 1))[:P] if tok is not None else list(range(1, P + 1))
    prompt = torch.tensor([ids])

    def ours(engine):
        def run():
            out = engine.generate([ids], max_new_tokens=n, stop_token_ids=[])[0]
            return out, engine.last_prefill_s, engine.last_decode_s
        return run

    impls["gptlab f32"] = ours(Engine(model))
    for w in [w for w in args.weights.split(",") if w]:
        engine = Engine(model, weights=w)
        impls[f"gptlab {w}"] = ours(engine)
        loaded(f"gptlab {w}", engine.model)

    hf = LlamaForCausalLM.from_pretrained(ck_dir, dtype=torch.float32).eval()
    loaded("hf f32", hf)
    pad = model.config.pad_token_id if model.config.pad_token_id is not None else 0

    def run_hf():
        clock = _Clock()
        with torch.inference_mode():
            out = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=n,
                              min_new_tokens=n, do_sample=False, use_cache=True, pad_token_id=pad,
                              eos_token_id=None, streamer=clock)
        return out[0, P:].tolist(), clock.t[1] - clock.t[0], clock.t[-1] - clock.t[1]

    impls["hf f32"] = run_hf
    tmp = tempfile.TemporaryDirectory(prefix="gptlab-bench-")
    if not args.no_llama_cpp:
        impls.update(_llama_cpp_runners(args, ck_dir, ALIASES, ids, n, tmp.name, mem))

    times = {k: [] for k in impls}
    outputs, peak = {}, {k: 0.0 for k in impls}
    for i in range(args.warmup + args.runs):
        order = list(impls) if i % 2 == 0 else list(impls)[::-1]
        for name in order:
            rss = _proc_kb("VmRSS")
            can_peak = _reset_peak_rss()
            outputs[name], pre, dec = impls[name]()
            if can_peak and (i >= args.warmup or args.warmup == 0):
                peak[name] = max(peak[name], (_proc_kb("VmHWM") - rss) / 1024)
            if i >= args.warmup:
                times[name].append((pre, dec))
    tmp.cleanup()

    n_params = model.num_params()
    print(f"config: model={args.model} params={n_params / 1e6:.1f}M prompt={P} new_tokens={n} batch=1 "
          f"threads={args.threads} runs={args.runs} torch={torch.__version__}")
    print(f"{'implementation':>16} {'decode tok/s':>13} {'prefill tok/s':>14} {'weights MB':>12} "
          f"{'peak/call MB':>13}  greedy vs gptlab f32")
    res = {}
    ref = outputs["gptlab f32"]
    for name, ts in times.items():
        pre = statistics.median(t[0] for t in ts)
        dec = statistics.median(t[1] for t in ts)
        res[name] = {"decode": (n - 1) / dec, "prefill": P / pre}
        same = outputs[name] == ref
        agree = "identical" if same else f"first differs at token {_first_diff(outputs[name], ref)}"
        print(f"{name:>16} {res[name]['decode']:13.1f} {res[name]['prefill']:14.1f} "
              f"{mem.get(name, {}).get('load_mb', float('nan')):12.0f} {peak[name]:13.0f}  {agree}")
    print(f"process peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
    base = res["hf f32"]
    for name in res:
        if name != "hf f32":
            print(f"  ratio {name} / hf f32: decode {res[name]['decode'] / base['decode']:.2f}x, "
                  f"prefill {res[name]['prefill'] / base['prefill']:.2f}x")
    _print_limits(res, mem, args.threads)
    return res


def read_bandwidth_gbs(threads: int, mb: int = 256, repeats: int = 7) -> float:
    """GB/s of reading a 256 MB tensor once (``sum``: one add per 4 bytes, so memory-bound),
    the best of ``repeats``: a decode step only reads its weights, and on a shared machine
    the best pass is the closest to what the memory can give."""
    a = torch.ones(mb * 2**18)
    times = []
    for _ in range(repeats + 1):
        t0 = time.perf_counter()
        a.sum()
        times.append(time.perf_counter() - t0)
    return a.nbytes / min(times[1:]) / 1e9


def _print_limits(res, mem, threads):
    """Each implementation's decode speed against the memory-bandwidth limit (read bandwidth
    measured now / the weight bytes it reads a token: ``read_mb``), and the targets' ratios."""
    read = read_bandwidth_gbs(threads)
    # no implementation can beat the memory: if one streamed its weights faster than the
    # read pass, its rate is the better lower bound on the bandwidth
    reached = {n: r["decode"] * mem[n]["read_mb"] * 2**20 / 1e9 for n, r in res.items() if n in mem}
    best = max(reached, key=reached.get)
    gbs = max(read, reached[best])
    print(f"bandwidth: a 256 MB read pass {read:.1f} GB/s ({threads} threads, best of 7); {best} streamed "
          f"{reached[best]:.1f} GB/s; limit = {gbs:.1f} GB/s / weight bytes read per token")
    for name, r in res.items():
        if name in mem:
            limit = gbs * 1e9 / (mem[name]["read_mb"] * 2**20)
            print(f"  {name:>16}: {r['decode']:6.1f} tok/s = {r['decode'] / limit:4.0%} of its limit {limit:.0f} tok/s")
    for ours, theirs in (("gptlab f32", "llama.cpp f32"), ("gptlab int4", "llama.cpp Q4_1"),
                         ("gptlab int4+int8", "llama.cpp Q4_1")):
        if ours in res and theirs in res:
            print(f"  target {ours} / {theirs}: decode {res[ours]['decode'] / res[theirs]['decode']:.2f}x")


LLAMA_CPP_BUILD = ('CMAKE_ARGS="-DLLAVA_BUILD=OFF" CFLAGS="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16" '
                   'CXXFLAGS="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16" '
                   'nice -n 19 pip install --no-binary llama-cpp-python llama-cpp-python')


def _llama_cpp_runners(args, ck_dir, aliases, ids, n, tmpdir, mem):
    """llama-cpp-python on the checkpoint exported to an f32 GGUF and, for an alias, on the
    original GGUF; greedy by argmax over the logits, f32 KV cache, same thread count."""
    try:
        import numpy as np
        from llama_cpp import Llama
    except ImportError as e:
        print(f"llama-cpp-python not importable ({e}); skipped. Build it without AMX (pip's default "
              "-march=native build emits AMX on CPUs that advertise it, and VMs that do not allow "
              "AMX segfault at the first decode):\n  " + LLAMA_CPP_BUILD)
        return {}
    from gptlab.interop import export_model, resolve_source

    ggufs = {"llama.cpp f32": export_model(ck_dir, Path(tmpdir) / "model-f32.gguf", to="gguf", dtype="f32")}
    if args.model in aliases:
        src = resolve_source(args.model)
        ggufs[f"llama.cpp {src.path.stem.rsplit('.', 1)[-1]}"] = src.path
    runners = {}
    for name, path in ggufs.items():
        llm = Llama(model_path=str(path), n_threads=args.threads, n_threads_batch=args.threads,
                    n_ctx=len(ids) + n + 8, n_batch=max(512, len(ids)), type_k=0, type_v=0, verbose=False)
        mb = Path(path).stat().st_size / 2**20
        mem[name] = {"load_mb": mb, "read_mb": mb}  # mmapped file; SmolLM2's head is the tied embedding

        def run(llm=llm, vocab=llm.n_vocab()):
            llm.reset()
            t0 = time.perf_counter()
            llm.eval(ids)
            out = [int(np.argmax(np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(vocab,))))]
            t1 = time.perf_counter()
            for _ in range(n - 1):
                llm.eval(out[-1:])
                out.append(int(np.argmax(np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(vocab,)))))
            return out, t1 - t0, time.perf_counter() - t1
        runners[name] = run
    return runners


if __name__ == "__main__":
    main()
