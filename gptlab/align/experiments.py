"""The alignment experiments of docs/ALIGNMENT.md, one command each:

    python bench/align_experiments.py --exp winrate      # best-of-N, DPO, PPO, GRPO vs SFT
    python bench/align_experiments.py --exp efficiency   # win rate vs number of comparisons
    python bench/align_experiments.py --exp overopt      # gold / proxy vs KL, clean vs noisy labels
    python bench/align_experiments.py --exp tax          # QA accuracy and bits per byte, before / after

Every method starts from the same SFT model and learns from the same comparisons (the
first N pairs of a feedback store written by `gptlab feedback simulate`): DPO directly;
best-of-N, PPO and GRPO through a reward model trained on them (`gptlab reward`). The win
rate is the gold judge's, of the method's greedy answer over the SFT model's greedy answer
on the same held-out prompts (`common.heldout_records`, 20 per category; ties count 1/2):
greedy against greedy compares the two models' most likely answers, which is what a user
of the deployed model gets (best-of-N is the exception: it is a sampling procedure, so its
answer is the highest-reward of N temperature-1 samples). Results go to OUT/<exp>.json,
plots to docs/alignment_<exp>.png; finished runs are reused, so a killed experiment
continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from gptlab.align.common import generate_answers, heldout_records, win_rate, win_rate_tiebroken
from gptlab.align.dpo import DPOConfig, run_dpo
from gptlab.align.reward import RewardConfig, best_of_n, load_reward, train_reward
from gptlab.align.rl import RLConfig, run_rl
from gptlab.chat import load_chat_model
from gptlab.evals.runner import evaluate
from gptlab.evals.tasks import KIND_METRICS
from gptlab.fileio import read_jsonl
from gptlab.judge import Judge

EXPERIMENTS = ("winrate", "efficiency", "overopt", "tax")


@dataclass
class ExpConfig:
    world: str = "runs/base/world"
    sft: str = "runs/base/sft"
    db: str = "runs/rm/feedback.db"               # noisy labels (25% flipped), the main data
    clean_db: str = "runs/rm/feedback_clean.db"   # the same comparisons without label noise
    out: str = "runs/align_exp"
    docs: str = "docs"
    pairs: int = 1000
    per_category: int = 20
    max_new_tokens: int = 64
    rl_steps: int = 30
    best_of: int = 8
    sizes: str = "100,300,1000,3000"             # efficiency: comparison counts
    seed: int = 0
    # the assistant track (SmolLM2) trains in bf16 on its top blocks, with its own DPO recipe
    dtype: str = "float32"                       # weights / autocast for training and answers
    train_layers: int = 0                        # DPO trains only the top N blocks (0 = all)
    dpo_lr: float = 1e-4
    dpo_epochs: float = 2.0
    nll_weight: float = 0.0                      # RPO: the chosen answers' NLL added to DPO
    tiebreak_samples: int = 0                    # decide greedy ties by N sampled answers each
    methods: str = "best_of_n,dpo"               # efficiency: which methods per size


# --------------------------------------------------------------------------- pieces


def _torch_dtype(name: str) -> torch.dtype:
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[name]


def subset_db(src: str, n_pairs: int, dst: Path) -> Path:
    """A copy of the first rankings of ``src`` (with their ties) holding about ``n_pairs``
    preference pairs (a ranking of K answers states K(K-1)/2 pairs minus its ties), so a
    reward model sees exactly what DPO sees."""
    from gptlab.feedback import FeedbackStore  # deferred: needs sqlalchemy (not on GPU boxes)

    if dst.is_file():
        return dst
    rankings, total, keep = FeedbackStore(src).rankings(), 0, []
    for r in rankings:
        if total >= n_pairs:
            break
        keep.append(r)
        k = len(r["responses"])
        total += k * (k - 1) // 2 - len(r["ties"])  # tied pairs are no preference
    if total < n_pairs:
        raise ValueError(f"{src} holds {total} pairs, fewer than {n_pairs}")
    tmp = dst.with_name(dst.name + ".tmp")
    tmp.unlink(missing_ok=True)
    store = FeedbackStore(tmp)
    for r in keep:
        pid = store.add_prompt(r["prompt"], source="subset", meta=r["meta"])
        ids = [store.add_response(pid, text) for text in r["responses"]]
        store.add_ranking(pid, ids, rater=r["rater"], kind=r["kind"], ties=r["ties"])
    store.engine.dispose()
    tmp.replace(dst)
    return dst


def reward_model(cfg: ExpConfig, db: Path, out: Path) -> Path:
    if not (out / "reward.json").is_file():
        train_reward(RewardConfig(init=cfg.sft, db=str(db), out=str(out), progress=False,
                                  device="cpu", world=cfg.world))
    return out


def dpo_model(cfg: ExpConfig, db: Path, out: Path, **kw) -> Path:
    if (out / "final" / "config.json").is_file():
        return out / "final"
    return run_dpo(DPOConfig(init=cfg.sft, db=str(db), out=str(out), progress=False,
                             device="cpu", seed=cfg.seed, lr=cfg.dpo_lr, epochs=cfg.dpo_epochs,
                             nll_weight=cfg.nll_weight, train_layers=cfg.train_layers or None,
                             dtype=cfg.dtype, **kw))


def rl_model(cfg: ExpConfig, algo: str, reward: str, out: Path, **kw) -> Path:
    if (out / "final" / "config.json").is_file():
        return out / "final"
    rl = dict(algo=algo, init=cfg.sft, reward=str(reward), prompts=cfg.world, out=str(out),
              steps=cfg.rl_steps, max_new_tokens=cfg.max_new_tokens, progress=False,
              device="cpu", seed=cfg.seed)
    rl.update(kw)
    return run_rl(RLConfig(**rl))


class Scorer:
    """Held-out records, the SFT model's greedy answers, and win rates against them."""

    def __init__(self, cfg: ExpConfig):
        self.cfg = cfg
        self.records = heldout_records(cfg.world, cfg.per_category, seed=cfg.seed)
        self.judge = Judge.from_dir(cfg.world)
        self.sft = load_chat_model(cfg.sft, dtype=_torch_dtype(cfg.dtype))
        self.sft_answers = self.answers(cfg.sft)

    def _cached(self, key: str, make) -> list[str]:
        """Answers of one model or method, kept in OUT/answers/KEY.json (reruns reuse them)."""
        path = Path(self.cfg.out) / "answers" / f"{key}.json"
        if path.is_file():
            return json.loads(path.read_text())
        out = make()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(out))
        return out

    def answers(self, model_dir) -> list[str]:
        def make():
            ck = load_chat_model(model_dir, dtype=_torch_dtype(self.cfg.dtype))
            return generate_answers(ck.model, ck.tokenizer, self.records,
                                    max_new_tokens=self.cfg.max_new_tokens)
        key = Path(model_dir).parent.name if Path(model_dir).name == "final" else Path(model_dir).name
        return self._cached(key, make)

    def win_rate(self, answers: list[str], model_dir=None) -> dict:
        """Greedy win rate over SFT; with cfg.tiebreak_samples and a model, greedy ties are
        decided by sampled answers (`common.win_rate_tiebroken`)."""
        if model_dir is not None and self.cfg.tiebreak_samples > 0:
            policy = load_chat_model(model_dir, dtype=_torch_dtype(self.cfg.dtype))
            wr = win_rate_tiebroken(policy, self.sft, self.records, self.judge,
                                    samples=self.cfg.tiebreak_samples,
                                    max_new_tokens=self.cfg.max_new_tokens, seed=self.cfg.seed)
        else:
            wr = win_rate(answers, self.sft_answers, self.records, self.judge)
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in wr.items()}

    def best_of_n(self, rm_dir: Path, n: int) -> list[str]:
        def make():
            rm = load_reward(str(rm_dir))
            picks = best_of_n(self.sft.model, self.sft.tokenizer, rm, self.records, n,
                              max_new_tokens=self.cfg.max_new_tokens, seed=self.cfg.seed)
            return [p["best"] for p in picks]
        return self._cached(f"best_of_{n}_{Path(rm_dir).name}", make)


def _methods(cfg: ExpConfig, scorer: Scorer, n_pairs: int, root: Path, methods) -> dict:
    """Train every method on the first ``n_pairs`` comparisons of cfg.db; their win rates."""
    db = subset_db(cfg.db, n_pairs, root / f"pairs_{n_pairs}.db")
    res, t = {}, {}
    rm = None
    if {"best_of_n", "ppo", "grpo"} & set(methods):
        t0 = time.perf_counter()
        rm = reward_model(cfg, db, root / f"rm_{n_pairs}")
        t["rm"] = time.perf_counter() - t0
    for m in methods:
        t0 = time.perf_counter()
        model = None
        if m == "best_of_n":
            answers = scorer.best_of_n(rm, cfg.best_of)
        else:
            if m == "dpo":
                model = dpo_model(cfg, db, root / f"dpo_{n_pairs}")
            else:
                model = rl_model(cfg, m, str(rm), root / f"{m}_{n_pairs}")
            answers = scorer.answers(model)
        t[m] = time.perf_counter() - t0
        res[m] = scorer.win_rate(answers, model)
        print(f"{n_pairs} pairs, {m}: {res[m]}", flush=True)
    return {"win": res, "seconds": {k: round(v, 1) for k, v in t.items()}}


# --------------------------------------------------------------------------- experiments


def exp_winrate(cfg: ExpConfig) -> dict:
    scorer = Scorer(cfg)
    root = Path(cfg.out)
    return {"pairs": cfg.pairs, "n": len(scorer.records),
            **_methods(cfg, scorer, cfg.pairs, root, ["best_of_n", "dpo", "ppo", "grpo"])}


def exp_efficiency(cfg: ExpConfig) -> dict:
    scorer = Scorer(cfg)
    root = Path(cfg.out)
    rows = {}
    for n in sorted(int(x) for x in cfg.sizes.split(",")):
        # best-of-N through a reward model, and DPO; PPO per size would cost one more RL
        # run per size (`--exp winrate --pairs N` runs it for one)
        rows[n] = _methods(cfg, scorer, n, root, cfg.methods.split(","))
        _partial(cfg, "efficiency", {"n": len(scorer.records), "by_pairs": rows})
    return {"n": len(scorer.records), "by_pairs": rows}


def _partial(cfg: ExpConfig, exp: str, res: dict) -> None:
    """Write what is done so far (a long experiment stopped midway still has its points)."""
    path = Path(cfg.out) / f"{exp}.partial.json"
    path.write_text(json.dumps(res, indent=2) + "\n")


def exp_overopt(cfg: ExpConfig) -> dict:
    """PPO against reward models from noisy and clean labels, run long, gold eval often."""
    root = Path(cfg.out)
    out = {}
    for name, src in (("noisy", cfg.db), ("clean", cfg.clean_db)):
        tag = "" if name == "noisy" else "_clean"  # the noisy store's RM is --exp winrate's
        db = subset_db(src, cfg.pairs, root / f"pairs_{cfg.pairs}{tag}.db")
        rm = reward_model(cfg, db, root / f"rm_{cfg.pairs}{tag}")
        run = root / f"overopt_ppo_{name}"
        # a weaker KL penalty and twice the steps, so the policy drifts far from the reference
        rl_model(cfg, "ppo", str(rm), run, steps=2 * cfg.rl_steps, eval_every=max(1, cfg.rl_steps // 3),
                 eval_per_category=4, kl_coef=0.01)
        from gptlab.train.metrics import read_metrics
        out[name] = overopt_points(read_metrics(run / "metrics.jsonl"))
    return out


def overopt_points(metrics: list[dict], window: int = 5) -> list[dict]:
    """At each gold eval: the KL per answer and the proxy reward of the rollouts (means over
    the last ``window`` steps), the gold score and the proxy of the greedy eval answers."""
    steps = [r for r in metrics if "reward" in r]
    points = []
    for r in metrics:
        if "gold" not in r:
            continue
        recent = [s for s in steps if r["step"] - window < s["step"] <= r["step"]] or [{"kl_seq": 0.0}]
        mean = lambda k: sum(s.get(k, 0.0) for s in recent) / len(recent)  # noqa: E731
        points.append({"step": r["step"], "kl_seq": mean("kl_seq"),
                       "proxy": mean("reward") if r["step"] else None, "gold": r["gold"],
                       "eval_proxy": r["eval_proxy"], "win_rate": r["win_rate"]})
    return points


def exp_tax(cfg: ExpConfig) -> dict:
    """Before / after: QA accuracy (eval/qa.jsonl, the eval suite's definition: no hard
    failure of the judge), over-refusal on benign look-alikes, harmful refusal, and bits
    per byte on held-out text, for the SFT model and every model trained under OUT."""
    root, judge = Path(cfg.out), Judge.from_dir(cfg.world)
    models = {"sft": Path(cfg.sft)}
    for m in ("dpo", "ppo", "grpo"):
        d = root / f"{m}_{cfg.pairs}" / "final"
        if (d / "config.json").is_file():
            models[m] = d
    sets = {k: read_jsonl(Path(cfg.world) / "eval" / f"{k}.jsonl")[:n]
            for k, n in (("qa", 200), ("benign_edgy", 60), ("harmful", 80))}
    res = {}
    for name, d in models.items():
        ck = load_chat_model(d)
        row = {}
        for kind, recs in sets.items():
            metric, pred, _ = KIND_METRICS[kind]
            answers = generate_answers(ck.model, ck.tokenizer, recs, max_new_tokens=cfg.max_new_tokens)
            flags = [pred(judge.score_record(r, a)) for r, a in zip(recs, answers)]
            row[metric] = round(sum(bool(f) for f in flags) / len(flags), 4)
        bpb = evaluate(d, cfg.world, suites=["bpb"], limit=200, write=False, progress=False, device="cpu")
        row["bpb"] = round(_metric(bpb.get("metrics", bpb), "bpb"), 4)
        res[name] = row
        print(name, row, flush=True)
    return res


def _metric(flat: dict, key: str):
    v = flat.get(key)
    if isinstance(v, dict):
        v = v.get("value")
    return v


# --------------------------------------------------------------------------- plots


def plot(exp: str, res: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    if exp == "winrate":
        names = list(res["win"])
        vals = [res["win"][m]["win_rate"] for m in names]
        ax.bar(names, vals, color="#4a7")
        ax.axhline(0.5, color="gray", ls="--", lw=1)
        ax.set_ylabel("gold-judge win rate over SFT")
        ax.set_title(f"{res['pairs']} comparisons, {res['n']} held-out prompts")
    elif exp == "efficiency":
        ns = sorted(res["by_pairs"], key=int)
        for m in (m for m in ("best_of_n", "dpo") if m in res["by_pairs"][ns[0]]["win"]):
            ax.plot([int(n) for n in ns], [res["by_pairs"][n]["win"][m]["win_rate"] for n in ns],
                    marker="o", label=m)
        ax.set_xscale("log")
        ax.axhline(0.5, color="gray", ls="--", lw=1)
        ax.set_xlabel("comparisons")
        ax.set_ylabel("win rate over SFT")
        ax.legend()
    elif exp == "overopt":
        ax2 = ax.twinx()
        for (name, pts), color in zip(((k, res[k]) for k in ("noisy", "clean") if k in res),
                                      ("#c44", "#46c")):
            x = [math.sqrt(max(p["kl_seq"], 0.0)) for p in pts]
            ax.plot(x, [p["gold"] for p in pts], marker="o", color=color, label=f"gold, RM from {name} labels")
            ax2.plot(x, [p["eval_proxy"] for p in pts], marker="x", ls=":", color=color,
                     label=f"proxy: RM score of the same answers ({name})")
        ax.set_xlabel("sqrt(KL(policy || reference)) per answer, nats^0.5")
        ax.set_ylabel("gold-judge score (held-out, greedy)")
        ax2.set_ylabel("reward-model score (normalized units)")
        h1, l1 = ax.get_legend_handles_labels()
        h2, l2 = ax2.get_legend_handles_labels()
        ax.legend(h1 + h2, l1 + l2, fontsize=7, loc="lower left")
    else:
        return
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--exp", required=True, choices=EXPERIMENTS)
    for name, f in ExpConfig.__dataclass_fields__.items():
        p.add_argument("--" + name.replace("_", "-"), type=type(f.default), default=f.default)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = ExpConfig(**{k: getattr(args, k) for k in ExpConfig.__dataclass_fields__})
    t0 = time.perf_counter()
    res = {"winrate": exp_winrate, "efficiency": exp_efficiency, "overopt": exp_overopt,
           "tax": exp_tax}[args.exp](cfg)
    res = {"experiment": args.exp, "config": vars(cfg), "wall_s": round(time.perf_counter() - t0, 1),
           **res}
    out = Path(cfg.out) / f"{args.exp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2) + "\n")
    plot(args.exp, res, Path(cfg.docs) / f"alignment_{args.exp}.png")
    print(f"wrote {out}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
