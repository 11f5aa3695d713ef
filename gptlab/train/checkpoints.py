"""Step checkpoints of a training run: folders, resume, RNG state and stop signals.

- ``out/ckpt/step_N`` directories, pruning, and the newest-intact-checkpoint lookup for
  ``--resume`` (:func:`resume_checkpoint`); the refusal to resume when a setting that
  shapes the model or the data changed (:func:`check_resume`);
- Python / numpy / torch RNG capture for an exact resume (:func:`rng_state`);
- graceful SIGTERM / Ctrl-C: a flag the loop checks between steps (:class:`StopSignal`).

Writing one checkpoint directory (atomic, hashed) is `gptlab.checkpoint`'s job.
"""

from __future__ import annotations

import dataclasses
import random
import re
import shutil
import signal
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from gptlab.checkpoint import load_checkpoint, load_train_state, verify_checkpoint
from gptlab.train.dist import all_reduce_sum, barrier, load_model_state, load_optimizer_state, print0

# --------------------------------------------------------------------------- checkpoints

_STEP_DIR = re.compile(r"^step_(\d+)$")


def checkpoint_path(root: str | Path, step: int) -> Path:
    """``root/step_000123``."""
    return Path(root) / f"step_{step:06d}"


def list_checkpoints(root: str | Path) -> list[tuple[int, Path]]:
    """Complete step checkpoints under ``root``, oldest first.

    Saving is atomic (temp dir + rename), so only exact ``step_N`` names count; temporary
    or half-written siblings left by a SIGKILL are ignored.
    """
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _STEP_DIR.match(p.name)
        if m and p.is_dir():
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest_checkpoint(root: str | Path) -> Path | None:
    """The newest complete ``step_N`` checkpoint under ``root``, or None."""
    found = list_checkpoints(root)
    return found[-1][1] if found else None


def prune_checkpoints(root: str | Path, keep: int) -> None:
    """Delete all but the newest ``keep`` step checkpoints (``keep <= 0`` keeps all)."""
    if keep <= 0:
        return
    for _, p in list_checkpoints(root)[:-keep]:
        shutil.rmtree(p, ignore_errors=True)


def remove_stale_temp_dirs(root: str | Path) -> None:
    """Delete ``.step_N.tmp-*`` directories that a killed checkpoint write left behind.

    Only ``.tmp-`` ones: a ``.step_N.old-*`` backup may still be needed to recover
    ``step_N`` (see ``gptlab.checkpoint.recover_dir``).
    """
    root = Path(root)
    if root.is_dir():
        for p in root.glob(".step_*.tmp-*"):
            shutil.rmtree(p, ignore_errors=True)


def resume_checkpoint(out: str | Path, resume: bool, is_main: bool = True) -> Path | None:
    """The checkpoint a run continues from: the newest complete ``out/ckpt/step_N`` when
    ``resume``, else None; damaged ones are skipped, saying why
    (:func:`newest_intact_checkpoint`). Cleans up on the way: temp dirs of a killed save,
    and on a fresh run the step checkpoints of an earlier one (a later --resume must not
    pick them up)."""
    root = Path(out) / "ckpt"
    if is_main:
        remove_stale_temp_dirs(root)
    latest = newest_intact_checkpoint(root) if resume else None
    if latest is None:
        if resume:
            print0(f"--resume: no checkpoint in {root}; starting fresh")
        elif is_main and list_checkpoints(root):
            print0(f"removing checkpoints of an earlier run in {root} (use --resume to continue)")
            shutil.rmtree(root)
        barrier()
    return latest


def newest_intact_checkpoint(root: str | Path) -> Path | None:
    """The newest ``step_N`` under ``root`` that passes ``verify_checkpoint`` (recorded
    sha256, weights that load and are finite, a loadable train_state.pt); each newer one
    is skipped with a line saying why. None when there are none; an error when there are
    some but none is intact (starting over silently would throw the run away)."""
    found = list_checkpoints(root)
    skipped = []
    for _, path in reversed(found):
        try:
            verify_checkpoint(path)
        except (ValueError, OSError) as e:  # CheckpointError, NonFiniteError, missing files
            print0(f"--resume: skipping {path.name}: {e}")
            skipped.append(path.name)
            continue
        if skipped:
            print0(f"--resume: continuing from {path.name}, the newest intact checkpoint "
                   f"(skipped {', '.join(skipped)})")
        return path
    if found:
        raise ValueError(f"--resume: none of the {len(found)} checkpoints in {root} is intact "
                         f"(see above); delete them to start over")
    return None


def resume_state(out: str | Path, resume: bool, is_main: bool = True) -> tuple[Path | None, dict]:
    """:func:`resume_checkpoint` and the train state saved with it ((None, {}) on a fresh run)."""
    latest = resume_checkpoint(out, resume, is_main)
    return (latest, load_train_state(latest)) if latest is not None else (None, {})


def restore_step(latest: Path, state: dict, model, optimizer, *, adapter: bool = False,
                 restore_data: Callable[[dict], None] = lambda state: None) -> int:
    """Continue a run from the step checkpoint ``latest`` whose train ``state`` the stage has
    read and checked (:func:`check_resume`): the weights (or, with ``adapter``, only the LoRA
    adapter), the optimizer, the stage's data position (``restore_data(state)``), then the
    RNG. The one resume path of pretrain, SFT, DPO and RL; returns the step to start from."""
    if adapter:
        from peft import set_peft_model_state_dict  # deferred: peft loads transformers
        set_peft_model_state_dict(model, state["adapter"])
    else:
        load_model_state(model, load_checkpoint(latest, device="cpu").model.state_dict())
    load_optimizer_state(model, optimizer, state["optimizer"])
    restore_data(state)
    set_rng_state(state["rng"])
    print0(f"resumed from {latest} (step {state['step']})")
    return int(state["step"])


def check_resume(latest: Path, old: dict, fixed: dict) -> None:
    """Refuse to resume when a setting that shapes the model or the data stream changed
    (``old``: the saved config; ``fixed``: those settings now; keys the old run did not
    record are not compared)."""
    for key, value in fixed.items():
        if key in old and old[key] != value:
            raise ValueError(f"cannot resume {latest}: {key} was {old[key]!r}, now {value!r}")


def resume_run(cfg, model, optimizer, fixed: Sequence[str], *, is_main: bool = True,
               adapter: bool = False, restore_data: Callable[[dict], None] = lambda state: None
               ) -> int:
    """The resume path of a stage whose config has ``out`` and ``resume`` (every
    ``TrainSettings``): 0 on a fresh start (stale step checkpoints of an older run removed);
    else the step to continue from, once the settings named in ``fixed`` -- those that shape
    the model or the data stream -- equal what the newest intact checkpoint recorded (a
    setting an older run did not record counts as its default) and :func:`restore_step` has
    put the weights, optimizer, data position and RNG back."""
    latest, state = resume_state(cfg.out, cfg.resume, is_main)
    if latest is None:
        return 0
    old = {**_field_defaults(type(cfg)), **state.get("config", {})}
    check_resume(latest, old, {key: getattr(cfg, key) for key in fixed})
    return restore_step(latest, state, model, optimizer, adapter=adapter, restore_data=restore_data)


def _field_defaults(cls) -> dict:
    """The default of each field of a config dataclass that has one."""
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


def rng_state() -> dict:
    """Python, numpy and torch (CPU and CUDA) RNG states, for exact resume."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Inverse of :func:`rng_state`."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class StopSignal:
    """Turns SIGTERM and the first Ctrl-C into a flag the loop checks between steps.

    The loop then saves a checkpoint and exits (:meth:`raise_if_stopping`); a second
    Ctrl-C interrupts immediately. SIGKILL cannot be caught: atomic checkpoints plus
    ``--resume`` cover it. Use as a context manager (main thread only).
    """

    def __init__(self):
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> "StopSignal":
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave the handlers alone
                pass
        return self

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()

    def _handle(self, signum, frame) -> None:
        if self.signum == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt  # second Ctrl-C: stop now
        self.signum = signum

    def should_stop(self) -> bool:
        """True on every rank as soon as any rank got a signal (one tiny all-reduce)."""
        return all_reduce_sum(1.0 if self.signum is not None else 0.0) > 0

    def raise_if_stopping(self) -> None:
        """After the final save: re-raise as KeyboardInterrupt or exit 143 for SIGTERM."""
        if self.signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise SystemExit(128 + (self.signum or signal.SIGTERM))
