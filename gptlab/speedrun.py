"""The speedrun: every stage of gptlab in order on the embedded miniworld data.

Each stage writes into its own folder under the run directory and is skipped when its
output already exists, so a killed speedrun resumes where it stopped (pretraining itself
resumes from its last checkpoint). Stages so far: miniworld data -> tokenizer -> pretrain
-> samples. Later stages (SFT, feedback, reward, RL/DPO, evals, red team, report) join as
they land.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

PROMPTS = ["The capital of France is", "Japan is a country in", "The currency of Brazil is"]

# cpu-tiny: a few-million-parameter model that learns miniworld's facts in minutes on 2 cores.
PRESETS = {
    "cpu-tiny": dict(vocab_size=4096, depth=4, seq_len=256, max_steps=1500,
                     device_batch_size=16, total_batch_tokens=8192),
}


@dataclass
class Stage:
    name: str
    output: Path          # the stage is done when this path exists
    run: Callable[[], None]


def _stages(out: Path, preset: dict, scale: str) -> list[Stage]:
    world, tok, pre = out / "world", out / "tokenizer", out / "pretrain"

    def make_world():
        from gptlab.data.world import generate_world
        generate_world(world, seed=0, scale=scale)

    def make_tokenizer():
        from gptlab.tokenizer import train_tokenizer_from_source
        train_tokenizer_from_source(world / "corpus", tok, vocab_size=preset["vocab_size"])

    def make_pretrain():
        from gptlab.train.pretrain import PretrainConfig, pretrain
        cfg = PretrainConfig(data=str(world / "corpus"), tokenizer=str(tok), out=str(pre),
                             depth=preset["depth"], seq_len=preset["seq_len"],
                             max_steps=preset["max_steps"],
                             device_batch_size=preset["device_batch_size"],
                             total_batch_tokens=preset["total_batch_tokens"], resume=True)
        pretrain(cfg)

    def make_samples():
        _write_samples(pre / "final", out / "samples.md")

    return [
        Stage("miniworld data", world / "manifest.json", make_world),
        Stage("tokenizer", tok / "tokenizer.json", make_tokenizer),
        Stage("pretrain", pre / "final" / "config.json", make_pretrain),
        Stage("samples", out / "samples.md", make_samples),
    ]


def _write_samples(model_dir: Path, path: Path) -> None:
    from gptlab.checkpoint import load_checkpoint
    from gptlab.engine import Engine
    ckpt = load_checkpoint(model_dir)
    engine = Engine(ckpt.model, ckpt.tokenizer)
    prompts = [ckpt.tokenizer.encode(p) for p in PROMPTS]
    outs = engine.generate(prompts, max_new_tokens=24, temperature=0.0)
    lines = ["# Greedy samples from the pretrained model", ""]
    for p, o in zip(PROMPTS, outs):
        lines.append(f"- **{p}**{ckpt.tokenizer.decode(o)}")
    tmp = path.with_suffix(".tmp")
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    tmp.replace(path)


def speedrun(out: Path, preset: str = "cpu-tiny", scale: str = "small") -> dict:
    """Run every stage not yet done; returns {stage: seconds} (0 for skipped stages)."""
    out.mkdir(parents=True, exist_ok=True)
    stages = _stages(out, PRESETS[preset], scale)
    timings: dict[str, float] = {}
    for i, stage in enumerate(stages, 1):
        if stage.output.exists():
            print(f"[{i}/{len(stages)}] {stage.name}: done already ({stage.output})", flush=True)
            timings[stage.name] = 0.0
            continue
        print(f"[{i}/{len(stages)}] {stage.name} ...", flush=True)
        t0 = time.time()
        stage.run()
        timings[stage.name] = round(time.time() - t0, 1)
        print(f"[{i}/{len(stages)}] {stage.name}: {timings[stage.name]:.0f}s", flush=True)
    (out / "timings.json").write_text(json.dumps(timings, indent=2))
    print("\nstage                 seconds")
    for name, sec in timings.items():
        print(f"{name:<21} {sec:>7.0f}")
    samples = out / "samples.md"
    if samples.exists():
        print("\n" + samples.read_text(encoding="utf-8"))
    print(f"generate more: gptlab generate --model {out / 'pretrain' / 'final'} --prompt \"The capital of Peru is\"")
    return timings
