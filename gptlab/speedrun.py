"""The speedrun: every stage of gptlab in order on the embedded miniworld data.

Each stage writes into its own folder under the run directory and is skipped when its
output already exists, so a killed speedrun resumes where it stopped (the training stages
themselves resume from their last checkpoint). The from-scratch track: miniworld data ->
curate -> tokenizer -> pretrain -> SFT -> feedback -> reward model -> PPO, DPO -> evals ->
win rates -> moderation; then the assistant track (`gptlab.speedrun_assistant`: a real
pretrained chat model through SFT, feedback, DPO and evals); then the red team and
OUT/final on the best chat model of both, and REPORT.md.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from gptlab.align.common import generate_answers, heldout_records, win_rate
from gptlab.align.dpo import DPOConfig, run_dpo
from gptlab.align.reward import RewardConfig, best_of_n, load_reward, train_reward
from gptlab.align.rl import RLConfig, run_rl
from gptlab.align.simulate import simulate_feedback
from gptlab.chat import load_chat_model
from gptlab.checkpoint import atomic_dir
from gptlab.data.curate import CurateConfig, curate
from gptlab.data.world import generate_world
from gptlab.evals import evaluate
from gptlab.fileio import atomic_write_text
from gptlab.judge import Judge
from gptlab.report import report
from gptlab.safety import ModeratorConfig, train_moderator
from gptlab.safety.redteam import RedteamConfig, run_redteam
from gptlab.speedrun_assistant import ASSISTANT_PRESETS, assistant_models, track_dtype
from gptlab.tokenizer import train_tokenizer_from_source
from gptlab.train.pretrain import PretrainConfig, pretrain
from gptlab.train.sft import SFTConfig, sft

# cpu-tiny: a few-million-parameter model that learns miniworld's facts in minutes on 2
# cores (docs/RESULTS.md has the measurements behind these numbers); `test` is the
# smallest run that still goes through every stage (what tests/test_speedrun.py runs at
# scale tiny). Optional keys: lr / optimizer (pretrain; unset = the depth's defaults),
# sft_lr, threads (torch CPU threads; unset = torch's default, all cores), eval_tail_k /
# eval_tail_prompts / eval_max_new_tokens (unset = the eval defaults).
PRESETS = {
    # depth 3 (width 192, 2.0 M params) with a 2048-token vocabulary, Muon on the hidden
    # matrices: ~4.5 epochs of the 0.8 M-token small corpus, then 1.5 SFT epochs. Cut from
    # 640 steps / 2 epochs (docs/RESULTS.md) to give the assistant track (cpu-smol, the
    # model a person talks to) the time: make demo runs both within 45 minutes.
    "cpu-tiny": dict(vocab_size=2048, depth=3, seq_len=256, pretrain_steps=450,
                     device_batch_size=16, total_batch_tokens=8192, optimizer="muon",
                     lr=3e-3, sft_epochs=1.5, sft_mix=0.2, sft_lr=2.5e-3, eval_limit=None,
                     val_docs=500, assistant="cpu-smol"),
    "test": dict(vocab_size=300, depth=1, seq_len=128, pretrain_steps=6,
                 device_batch_size=8, total_batch_tokens=1024, sft_epochs=0.1,
                 sft_mix=0.2, eval_limit=2, val_docs=20, eval_tail_k=2,
                 eval_tail_prompts=1, eval_max_new_tokens=8),
}


# GPU presets: bf16 autocast + torch.compile, real data sets by hub id where the hub is
# reachable (else miniworld at scale full, with a message), several GPUs through torchrun
# (`--nproc-per-node`). gpu-small is a d12 (~110 M params with a 32k vocabulary) that
# trains in minutes on one H100; gpu-d20 is nanochat's d20 (~0.5 B) at Chinchilla's ratio.
HUB_DATA = {"pretrain": "hf:HuggingFaceFW/fineweb-edu:sample-10BT:train",
            "sft": "hf:HuggingFaceTB/smoltalk:all:train",
            "prefs": "hf:HuggingFaceH4/ultrafeedback_binarized:default:train_prefs"}
# `offline`: what changes when the hub is unreachable and miniworld full (~3.4 M tokens)
# is the corpus: at most 4 passes over it (2000 x 262k tokens would be ~150: a d12 overfits
# after a few, issue 15) in smaller batches, so the few passes are still ~200 steps.
_OFFLINE = {"max_epochs": 4.0, "total_batch_tokens": 65536}
GPU_PRESETS = {
    "gpu-small": dict(vocab_size=32768, depth=12, seq_len=1024, pretrain_steps=2000,
                      device_batch_size=32, total_batch_tokens=262144, optimizer="muon",
                      sft_epochs=1.0, sft_mix=0.1, eval_limit=200, val_docs=2000,
                      dtype="bfloat16", compile=True, hub_data=True, scale="full",
                      offline=_OFFLINE),
    "gpu-d20": dict(vocab_size=65536, depth=20, seq_len=2048, pretrain_steps=21400,
                    device_batch_size=32, total_batch_tokens=524288, optimizer="muon",
                    sft_epochs=1.0, sft_mix=0.1, eval_limit=None, val_docs=10000,
                    dtype="bfloat16", compile=True, hub_data=True, scale="full",
                    offline={**_OFFLINE, "total_batch_tokens": 131072}),
}
PRESETS.update(GPU_PRESETS)

# Alignment settings per preset: K answers per prompt for `prompts` train prompts (C(K,2)
# pairs each), the reward model, PPO against it, DPO on the same comparisons, and how
# much of the held-out sets the win rates and the red team use.
_ALIGN_CPU = dict(k=4, prompts=170, noise=0.25, max_new_tokens=64, rm_epochs=2.0,
                  rm_train_layers=None, ppo_steps=30, ppo_batch=32, rl_eval=4,
                  dpo_pairs=1000, dpo_epochs=2.0, dpo_beta=0.1, winrate_per_category=20,
                  best_of=4, redteam_limit=50, moderator_encoder="smollm2")
ALIGN_PRESETS = {
    "cpu-tiny": _ALIGN_CPU,
    "gpu-small": {**_ALIGN_CPU, "prompts": 2000, "ppo_steps": 200, "ppo_batch": 64, "hub_prefs": 20000,
                  "dpo_pairs": None, "max_new_tokens": 256, "winrate_per_category": 100},
    "gpu-d20": {**_ALIGN_CPU, "prompts": 5000, "ppo_steps": 400, "ppo_batch": 128, "hub_prefs": 60000,
                "dpo_pairs": None, "max_new_tokens": 512, "winrate_per_category": 200},
    "test": dict(k=2, prompts=6, noise=0.25, max_new_tokens=8, rm_epochs=1.0,
                 rm_train_layers=None, ppo_steps=2, ppo_batch=4, rl_eval=1, dpo_pairs=8,
                 dpo_epochs=1.0, dpo_beta=0.1, winrate_per_category=1, best_of=2,
                 redteam_limit=2, moderator_encoder=None),
}


def hub_reachable(timeout: float = 3.0) -> bool:
    """Can we reach the Hugging Face hub? (HF_HUB_OFFLINE=1 says no without asking.)"""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", ""):
        return False
    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def data_sources(p: dict, world: Path) -> dict:
    """Where pretraining text, chat data and preferences come from for this preset."""
    local = {"pretrain": str(world / "corpus"), "sft": str(world), "prefs": None}
    if not p.get("hub_data"):
        return local
    if hub_reachable():
        return dict(HUB_DATA)
    print("speedrun: the Hugging Face hub is not reachable (offline, or HF_HUB_OFFLINE=1): "
          "falling back to the embedded miniworld data", flush=True)
    return local


def offline_settings(p: dict, src: dict) -> dict:
    """The preset with its `offline` overrides applied when a hub preset fell back to
    miniworld (pretraining capped at `max_epochs` passes over the corpus)."""
    if not p.get("hub_data") or src["pretrain"].startswith("hf:"):
        return p
    return {**p, **p.get("offline", {})}


def config_argv(cfg) -> list[str]:
    """A stage config -> the CLI flags that rebuild it (fields left at their default are
    omitted), to launch the same stage under torchrun."""
    argv = []
    for f in dataclasses.fields(cfg):
        value, flag = getattr(cfg, f.name), "--" + f.name.replace("_", "-")
        if value == f.default:
            continue
        if isinstance(value, bool):
            argv.append(flag if value else "--no-" + f.name.replace("_", "-"))
        elif value is not None:
            argv += [flag, str(value)]
    return argv


def run_distributed(command: str, cfg, nproc: int) -> None:
    """`gptlab COMMAND` with cfg's flags on `nproc` local processes (torchrun --standalone).
    For several nodes, run the stage commands under torchrun on every node (docs/SPEEDRUN
    in README), then `gptlab speedrun` on node 0 skips the stages already done."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc-per-node={nproc}", "-m", "gptlab", command, *config_argv(cfg)]
    print("  " + " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


@dataclass
class Stage:
    name: str
    output: Path | None   # the stage is done when this path exists (None: always run)
    run: Callable[[], None]


def _stages(out: Path, p: dict, scale: str, nproc: int = 1) -> list[Stage]:
    world, tok, pre, sft_dir = out / "world", out / "tokenizer", out / "pretrain", out / "sft"
    src = data_sources(p, world)
    p = offline_settings(p, src)

    def make_world():
        generate_world(world, seed=0, scale=scale)

    curated = _curate_stage(out, world, scale, src)

    def make_tokenizer():
        train_tokenizer_from_source(src["pretrain"], tok, vocab_size=p["vocab_size"])

    def make_pretrain():
        tokens = p["pretrain_steps"] * p["total_batch_tokens"]
        cfg = PretrainConfig(
            data=src["pretrain"], tokenizer=str(tok), out=str(pre), depth=p["depth"],
            seq_len=p["seq_len"], max_steps=p["pretrain_steps"],
            device_batch_size=p["device_batch_size"],
            total_batch_tokens=p["total_batch_tokens"], val_docs=p["val_docs"],
            lr=p.get("lr"), optimizer=p.get("optimizer", "adamw"),
            dtype=p.get("dtype", "auto"), compile=p.get("compile", False),
            # streamed hub text: tokenize ~1.2 passes' worth, not the whole data set
            data_tokens=int(tokens * 1.2) if src["pretrain"].startswith("hf:") else None,
            eval_every=max(p["pretrain_steps"] // 10, 1), resume=True,
            max_epochs=p.get("max_epochs"))
        run_distributed("pretrain", cfg, nproc) if nproc > 1 else pretrain(cfg)

    def make_sft():
        cfg = SFTConfig(init=str(pre / "final"), data=src["sft"], out=str(sft_dir),
                        mix=f"{src['pretrain']}:{p['sft_mix']}", seq_len=p["seq_len"],
                        epochs=p["sft_epochs"], lr=p.get("sft_lr"), dtype=p.get("dtype", "auto"),
                        compile=p.get("compile", False), resume=True)
        run_distributed("sft", cfg, nproc) if nproc > 1 else sft(cfg)

    def make_eval(model: Path):
        def run():
            evaluate(model, world, limit=p["eval_limit"], tail_k=p.get("eval_tail_k", 8),
                     tail_prompts=p.get("eval_tail_prompts", 4),
                     max_new_tokens=p.get("eval_max_new_tokens"))
        return run

    def make_report():
        report(out)

    align = _align_stages(out, p, world, sft_dir / "final", src["prefs"])
    assistant = []
    if p.get("assistant"):  # the assistant track: a real pretrained model, same stages
        from gptlab.speedrun_assistant import assistant_stages
        assistant = [Stage(*t) for t in assistant_stages(out, world, p["assistant"],
                                                         p["assistant"]["init"])]
    evals = [Stage(f"eval {name}", out / d / "final" / "eval.json", make_eval(out / d / "final"))
             for name, d in MODELS if name != "base"]
    return [
        Stage("miniworld data", world / "manifest.json", make_world),
        *curated,
        Stage("tokenizer", tok / "tokenizer.json", make_tokenizer),
        Stage("pretrain", pre / "final" / "config.json", make_pretrain),
        Stage("SFT", sft_dir / "final" / "config.json", make_sft),
        *align[:4],                      # feedback, reward model, PPO, DPO
        Stage("eval base", pre / "final" / "eval.json", make_eval(pre / "final")),
        *evals,                          # SFT, PPO, DPO
        *align[4:6],                     # win rates, moderation
        *assistant,                      # SmolLM2: SFT, evals, feedback, DPO, win rate
        *align[6:],                      # red team and final, on the best of both tracks
        Stage("report", None, make_report),  # cheap, and must see every stage's timing
    ]


def _curate_stage(out: Path, world: Path, scale: str, src: dict) -> list[Stage]:
    """Curate miniworld's corpus (dedup, quality, PII, decontamination against its evals)
    into out/curated, and point `src` at the kept text; hub data is not curated here."""
    if src["pretrain"] != str(world / "corpus"):
        return []
    src["pretrain"] = str(out / "curated" / "corpus")

    def make_curate():
        curate(CurateConfig(input=str(world / "corpus"), out=str(out / "curated"), world=str(world),
                            workers=0 if scale == "tiny" else 2, progress=False))
    return [Stage("curate", out / "curated" / "report.json", make_curate)]


# The models the speedrun trains, by their folder under the run directory.
MODELS = [("base", Path("pretrain")), ("SFT", Path("sft")), ("PPO", Path("ppo")),
          ("DPO", Path("dpo"))]


def _align_stages(out: Path, p: dict, world: Path, sft_final: Path,
                  prefs: str | None = None) -> list[Stage]:
    """Simulated feedback (plus a preference data set, e.g. UltraFeedback by hub id, when
    `prefs` is given) -> reward model -> PPO and DPO -> win rates -> moderation -> red team
    -> the best model copied to out/final."""
    db, rm, align = out / "feedback.db", out / "rm", out / "align"
    a = p["align"]

    def make_feedback():
        from gptlab.feedback import FeedbackStore  # deferred: needs sqlalchemy (not on GPU boxes)
        imported = 0
        if prefs and not FeedbackStore(db).counts()["comparisons"]:
            imported = FeedbackStore(db).import_file(prefs, limit=a.get("hub_prefs"))
        stats = simulate_feedback(sft_final, world, str(db), k=a["k"], n=a["prompts"],
                                  noise=a["noise"], max_new_tokens=a["max_new_tokens"])
        _write_json(align / "feedback.json", {**stats, "imported_pairs": imported,
                                              "imported_from": prefs})

    def make_rm():
        train_reward(RewardConfig(init=str(sft_final), db=str(db), out=str(rm),
                                  epochs=a["rm_epochs"], world=str(world),
                                  train_layers=a.get("rm_train_layers")))

    def make_ppo():
        run_rl(RLConfig(algo="ppo", init=str(sft_final), reward=str(rm), prompts=str(world),
                        out=str(out / "ppo"), steps=a["ppo_steps"], batch_size=a["ppo_batch"],
                        max_new_tokens=a["max_new_tokens"], eval_per_category=a["rl_eval"],
                        resume=True))

    def make_dpo():
        run_dpo(DPOConfig(init=str(sft_final), db=str(db), out=str(out / "dpo"),
                          max_pairs=a["dpo_pairs"], epochs=a["dpo_epochs"], beta=a["dpo_beta"],
                          resume=True))

    def make_winrates():
        _write_json(align / "winrate.json", win_rates(out, world, a))

    def make_moderator():
        # SmolLM2's hidden states read unseen wordings far better than n-grams (F1 0.905 vs
        # 0.400 on held-out requests, docs/SAFETY.md); the test preset keeps the n-grams.
        train_moderator(ModeratorConfig(data=str(world), out=str(out / "moderator"),
                                        encoder=a["moderator_encoder"], progress=False))

    def make_redteam():
        best = best_model(out)
        big = p.get("assistant") and (out / "assistant") in best.parents  # a 135M model
        run_redteam(RedteamConfig(model=str(best), world=str(world),
                                  out=str(out / "redteam"), guard=str(out / "moderator"),
                                  limit=a["redteam_limit"],
                                  dtype=track_dtype(p["assistant"]["dtype"]) if big else "float32"))

    def make_final():
        best = best_model(out)
        with atomic_dir(out / "final", markers=("config.json",)) as tmp:
            shutil.copytree(best, tmp, dirs_exist_ok=True)
            _write_json(tmp / "speedrun_choice.json", {"chosen": str(best.relative_to(out))})

    return [
        Stage("feedback", align / "feedback.json", make_feedback),
        Stage("reward model", rm / "reward.json", make_rm),
        Stage("PPO", out / "ppo" / "final" / "config.json", make_ppo),
        Stage("DPO", out / "dpo" / "final" / "config.json", make_dpo),
        Stage("win rates", align / "winrate.json", make_winrates),
        Stage("moderation", out / "moderator" / "moderator.json", make_moderator),
        Stage("red team", out / "redteam" / "redteam.json", make_redteam),
        Stage("final", out / "final" / "config.json", make_final),
    ]


def win_rates(out: Path, world: Path, a: dict) -> dict:
    """Gold-judge win rate of PPO, DPO and best-of-N over the SFT model's greedy answers on
    held-out prompts (the same prompts for all)."""
    judge = Judge.from_dir(world)
    records = heldout_records(world, n_per_category=a["winrate_per_category"], seed=1)
    n_tok = a["max_new_tokens"]
    sft = load_chat_model(out / "sft" / "final")
    ref = generate_answers(sft.model, sft.tokenizer, records, max_new_tokens=n_tok)
    result = {"n_prompts": len(records), "reference": "SFT, greedy"}
    for name in ("PPO", "DPO"):
        ck = load_chat_model(out / name.lower() / "final")
        answers = generate_answers(ck.model, ck.tokenizer, records, max_new_tokens=n_tok)
        result[name] = win_rate(answers, ref, records, judge)
    rm = load_reward(out / "rm")
    picks = best_of_n(sft.model, sft.tokenizer, rm, records, a["best_of"], max_new_tokens=n_tok)
    answers = [pick["best"] for pick in picks]
    result[f"best-of-{a['best_of']}"] = win_rate(answers, ref, records, judge)
    return result


def best_model(out: Path) -> Path:
    """The chat model with the highest mean gold-judge score in its eval (SFT, PPO, DPO of
    the from-scratch track, SFT and DPO of the assistant track)."""
    scores = {}
    dirs = [out / sub / "final" for _, sub in MODELS[1:]] + [d for _, d in assistant_models(out)]
    for d in dirs:
        f = d / "eval.json"
        if f.exists():
            scores[d] = json.loads(f.read_text())["metrics"].get("judge_score", 0)
    if not scores:
        raise FileNotFoundError(f"no evaluated chat model under {out}")
    return max(scores, key=scores.get)


def _write_json(path: Path, data) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, default=str) + "\n")


HEADLINE = [("fact_accuracy", "fact completion"), ("bpb", "bits per byte"),
            ("qa_accuracy", "QA accuracy"), ("system_compliance", "system-message compliance"),
            ("harmful_refusal", "harmful refusal"), ("over_refusal", "over-refusal"),
            ("premise_correction", "premise correction")]


def headline_table(out: Path) -> str:
    """Base, SFT, PPO and DPO side by side on the headline metrics, then the win rates over
    SFT and the red team's figures (what `make demo` ends with)."""
    cols = {}
    for name, sub in MODELS:
        f = out / sub / "final" / "eval.json"
        cols[name] = json.loads(f.read_text())["metrics"] if f.exists() else {}
    names = [n for n, _ in MODELS]
    lines = ["| metric | " + " | ".join(names) + " |", "| --- |" + " --- |" * len(names)]
    for key, label in HEADLINE:
        lines.append(f"| {label} | " + " | ".join(_fmt(cols[n].get(key)) for n in names) + " |")
    wr = _read(out / "align" / "winrate.json")
    if wr:
        cells = {n: _fmt(wr[n]["win_rate"]) for n in wr if isinstance(wr[n], dict)}
        lines.append("| win rate over SFT (gold judge) | - | - | " + " | ".join(
            cells.get(n, "-") for n in ("PPO", "DPO")) + " |")
        extra = [f"{n} {c}" for n, c in cells.items() if n not in ("PPO", "DPO")]
        if extra:
            lines.append(f"\nbest-of-N win rate over SFT: {', '.join(extra)}")
    rt = _read(out / "redteam" / "redteam.json")
    if rt:
        for system in ("model", "model+guard"):
            if system in rt:
                r = rt[system]
                lines.append(f"\nred team ({system}, {rt['target']}): attack success "
                             f"{_fmt(r['asr'] and r['asr']['rate'])}, over-refusal "
                             f"{_fmt(r['over_refusal'] and r['over_refusal']['rate'])}")
    return "\n".join(lines)


# Stage wall times of a whole `make demo` (2026-12-04, docs/RESULTS.md: a loaded machine, so
# these are on the long side), for the ETA printed when a stage starts. The assistant SFT
# since its tools mix went to 0.25 with the chat-with-tools rows: 300 steps in 29 min on a
# quiet machine (2026-12-06; the tool definitions make those rows long). Its midtraining:
# 300 steps of 16 corpus rows in 14 min alone (2026-12-07).
STAGE_SECONDS = {"cpu-tiny": {
    "miniworld data": 3, "curate": 1, "tokenizer": 1, "pretrain": 415, "SFT": 173,
    "feedback": 10, "reward model": 9, "PPO": 60, "DPO": 18, "eval base": 3, "eval SFT": 24,
    "eval PPO": 25, "eval DPO": 21, "win rates": 15, "moderation": 102, "assistant midtraining": 840,
    "assistant SFT": 1750,
    "eval unchanged init": 82, "eval assistant SFT": 157, "assistant feedback": 107,
    "assistant DPO": 225, "eval assistant DPO": 241, "eval assistant tools": 300,
    "eval assistant chat with tools": 180, "eval unchanged init code": 90, "eval assistant code": 240,
    "assistant win rate": 66, "red team": 288,
    "final": 1, "report": 2}}


def _eta(preset: str, stage: str) -> str:
    sec = STAGE_SECONDS.get(preset, {}).get(stage)
    if sec is None:
        return ""
    end = time.strftime("%H:%M", time.localtime(time.time() + sec))
    return f" (ETA ~{sec // 60} min {sec % 60:02d} s, ends ~{end})" if sec >= 60 else \
        f" (ETA ~{sec} s, ends ~{end})"


def _read(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)


def _assistant_settings(name: str | None, init: str | None) -> dict | None:
    if name in (None, "", "none"):
        return None
    if name not in ASSISTANT_PRESETS:
        raise ValueError(f"unknown assistant preset {name!r}; choose one of "
                         f"{sorted(ASSISTANT_PRESETS)} or none")
    a = {**ASSISTANT_PRESETS[name], "preset": name}
    a["init"] = str(init) if init else a["init"]
    if not a["init"]:
        raise ValueError(f"assistant preset {name!r} needs a model to start from (assistant_init)")
    return a


def _check_settings(out: Path, settings: dict) -> None:
    """Record the preset in out/speedrun.json; refuse to resume a run made with another
    (its finished stages would be skipped and silently mixed with the new settings)."""
    f = out / "speedrun.json"
    if f.exists():
        old = json.loads(f.read_text())
        if old != settings:
            diff = ", ".join(f"{k}: {old.get(k)!r} -> {settings.get(k)!r}"
                             for k in sorted(set(old) | set(settings)) if old.get(k) != settings.get(k))
            raise ValueError(f"{out} was made with other speedrun settings ({diff}); "
                             f"use another --out or delete it")
        return
    stale = [d for d in ("tokenizer", "pretrain", "sft") if (out / d).exists()]
    if stale:
        raise ValueError(f"{out} has {', '.join(stale)} from a speedrun without speedrun.json "
                         f"(settings unknown); use another --out or delete it")
    f.write_text(json.dumps(settings, indent=2))


def speedrun(out: Path, preset: str = "cpu-tiny", scale: str | None = None,
             nproc_per_node: int = 1, assistant: str | None = None,
             assistant_init: str | None = None) -> dict:
    """Run every stage not yet done; returns {stage: seconds}. A skipped stage keeps the
    seconds it took when it ran (from timings.json), so the table describes the whole run.
    scale: miniworld size (unset: the preset's, else small). nproc_per_node > 1 runs the
    training stages under torchrun on that many local processes (GPUs). assistant: the
    assistant track's preset (unset: the preset's own, cpu-smol for cpu-tiny; "none": no
    assistant track); assistant_init: the model it starts from instead of the preset's."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    p = {**PRESETS[preset], "align": ALIGN_PRESETS[preset]}
    p["assistant"] = _assistant_settings(p.get("assistant") if assistant is None else assistant,
                                         assistant_init)
    scale = scale or p.get("scale", "small")
    _check_settings(out, {"preset": preset, "scale": scale, **p})
    if p.get("threads"):
        import torch
        torch.set_num_threads(p["threads"])
    stages = _stages(out, p, scale, nproc_per_node)
    timings_file = out / "timings.json"
    timings = json.loads(timings_file.read_text()) if timings_file.exists() else {}
    for i, stage in enumerate(stages, 1):
        tag = f"[{i}/{len(stages)}] {stage.name}"
        if stage.output is not None and stage.output.exists():
            print(f"{tag}: done already ({stage.output})", flush=True)
            continue
        print(f"{tag} ...{_eta(preset, stage.name)}", flush=True)
        t0 = time.time()
        stage.run()
        timings[stage.name] = round(time.time() - t0, 1)
        print(f"{tag}: {timings[stage.name]:.0f}s", flush=True)
        timings_file.write_text(json.dumps(timings, indent=2))
    print("\nstage                 seconds")
    for name, sec in timings.items():
        print(f"{name:<21} {sec:>7.0f}")
    print(f"{'total':<21} {sum(timings.values()):>7.0f}\n")
    print(headline_table(out))
    print(f"\nfull report: {out / 'REPORT.md'}")
    print(f"chat with it:  gptlab chat --model {out / 'final'}")
    print(f"serve it:      gptlab serve --model {out / 'final'}")
    return timings
