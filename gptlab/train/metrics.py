"""What a training run reports: throughput, metrics files and the progress bar.

- tokens/s and MFU against a small table of peak FLOPS (:func:`peak_flops`);
- metrics jsonl on rank 0 (+ optional TensorBoard / W&B), trimmed on resume
  (:class:`MetricsLogger`, :func:`read_metrics`);
- a tqdm bar on rank 0 (:class:`Progress`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from gptlab.fileio import read_jsonl
from gptlab.train.dist import is_main_process, print0

# --------------------------------------------------------------------------- throughput

# Dense bf16 peak FLOPS per device (no sparsity), matched against the CUDA device name.
PEAK_FLOPS = {
    "H200": 989e12, "H100": 989e12, "H800": 989e12, "GH200": 989e12,
    "B200": 2250e12, "B100": 1750e12,
    "A100": 312e12, "A800": 312e12, "A10G": 70e12, "A10": 125e12, "A6000": 155e12,
    "L40S": 362e12, "L40": 181e12, "L4": 121e12, "4090": 165e12, "3090": 71e12,
    "V100": 125e12, "T4": 65e12,
}


def peak_flops(device: torch.device) -> float | None:
    """Peak bf16 FLOPS of ``device`` from :data:`PEAK_FLOPS`; None on CPU/MPS or unknown GPUs."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device).upper()
    for key in sorted(PEAK_FLOPS, key=len, reverse=True):  # "L40S" before "L40" before "L4"
        if key in name:
            return PEAK_FLOPS[key]
    return None


def model_flops_utilization(flops_per_token: float, tokens_per_s: float,
                            peak: float | None, world_size: int = 1) -> float | None:
    """MFU = flops/token x tokens/s / (peak x devices); None when the peak is unknown."""
    if not peak:
        return None
    return flops_per_token * tokens_per_s / (peak * world_size)


# --------------------------------------------------------------------------- logging


class MetricsLogger:
    """Rank-0 metrics sink: one json line per call, plus TensorBoard / W&B when asked.

    Optional backends are used only if requested *and* installed (a warning otherwise).
    ``resume_step`` drops lines past that step so that a resumed run's file reads like an
    uninterrupted one (the killed run may have logged steps it never checkpointed).
    Every line is strict JSON: a NaN or inf value is written as null.
    """

    def __init__(self, path: str | Path | None, *, enabled: bool = True,
                 tensorboard_dir: str | Path | None = None, wandb_project: str | None = None,
                 wandb_config: dict | None = None, resume_step: int | None = None):
        self.enabled = enabled and is_main_process()
        self._file = self._tb = self._wandb = None
        if not self.enabled:
            return
        if path is not None:
            path = Path(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            if resume_step is not None:
                truncate_metrics(path, resume_step)
            elif path.exists():
                path.unlink()
            self._file = open(path, "a", encoding="utf-8")
        if tensorboard_dir:
            self._tb = _open_tensorboard(tensorboard_dir)
        if wandb_project:
            self._wandb = _open_wandb(wandb_project, wandb_config or {})

    def log(self, record: dict) -> None:
        if not self.enabled:
            return
        if self._file is not None:
            self._file.write(json.dumps(_json_safe(record), allow_nan=False) + "\n")
            self._file.flush()
        step = record.get("step", 0)
        scalars = {k: v for k, v in record.items()
                   if k != "step" and isinstance(v, (int, float)) and v is not None}
        if self._tb is not None:
            for k, v in scalars.items():
                self._tb.add_scalar(k, v, step)
        if self._wandb is not None:
            self._wandb.log(scalars, step=step)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()
        self._file = self._tb = self._wandb = None


def _json_safe(record: dict) -> dict:
    """NaN and inf become null: bare NaN / Infinity are not JSON (strict parsers refuse
    the whole file), and null says "no valid value at this step"."""
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v
            for k, v in record.items()}


def truncate_metrics(path: Path, last_step: int) -> None:
    """Keep only the jsonl lines with ``step <= last_step``."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line).get("step", 0) <= last_step:
                keep.append(line)
        except json.JSONDecodeError:  # a line cut by SIGKILL
            continue
    path.write_text("".join(k + "\n" for k in keep), encoding="utf-8")


def _open_tensorboard(log_dir):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        print0("warning: tensorboard is not installed; --tensorboard ignored")
        return None
    return SummaryWriter(log_dir=str(log_dir))


def _open_wandb(project: str, config: dict):
    try:
        import wandb
    except ImportError:
        print0("warning: wandb is not installed; --wandb ignored")
        return None
    return wandb.init(project=project, config=config)


def read_metrics(path: str | Path) -> list[dict]:
    """All records of a metrics jsonl file (a last line cut by a killed run is dropped)."""
    return read_jsonl(path, cut_tail_ok=True)


class Progress:
    """tqdm bar on rank 0 (silent elsewhere) showing loss, tokens/s and MFU when known."""

    def __init__(self, total: int, initial: int = 0, desc: str = "train",
                 enabled: bool = True):
        self.bar = None
        if enabled and is_main_process():
            from tqdm.auto import tqdm
            self.bar = tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True)

    def update(self, loss: float, tokens_per_s: float, mfu: float | None = None,
               **extra: Any) -> None:
        if self.bar is None:
            return
        post = {"loss": f"{loss:.4f}", "tok/s": f"{tokens_per_s:,.0f}"}
        if mfu is not None:
            post["mfu"] = f"{100 * mfu:.1f}%"
        post.update({k: f"{v:.4g}" if isinstance(v, float) else v for k, v in extra.items()})
        self.bar.set_postfix(post, refresh=False)
        self.bar.update(1)

    def write(self, msg: str) -> None:
        if self.bar is not None:
            self.bar.write(msg)
        else:
            print0(msg)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
