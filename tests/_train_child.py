"""Child process for tests/test_train.py: runs `pretrain` from a JSON config.

    python tests/_train_child.py '{"data": ..., "out": ...}'
    torchrun --standalone --nproc_per_node 2 tests/_train_child.py '{...}'

Single-threaded and deterministic, so that runs can be compared to 1e-6. Two optional
hooks let the test interrupt a run at an exact point: `PAUSE_AT_FORWARD=N` (the N-th
training forward pass) and `PAUSE_AT_SAVE=N` (the N-th `torch.save`, i.e. inside the
N-th checkpoint write). At that point the child writes the file `PAUSE_MARKER` and waits
until `PAUSE_MARKER.release` appears, so the test can SIGKILL or SIGTERM it there.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch


def _pause() -> None:
    marker = Path(os.environ["PAUSE_MARKER"])
    marker.write_text(str(os.getpid()))
    release = marker.with_name(marker.name + ".release")
    while not release.exists():
        time.sleep(0.01)


def _install_hooks() -> None:
    from gptlab.model import GPT

    at_forward = int(os.environ.get("PAUSE_AT_FORWARD", "0"))
    at_save = int(os.environ.get("PAUSE_AT_SAVE", "0"))
    calls = {"forward": 0, "save": 0}
    if at_forward:
        forward = GPT.forward

        def counted_forward(self, *args, **kwargs):
            if self.training and torch.is_grad_enabled():  # training micro-steps only
                calls["forward"] += 1
                if calls["forward"] == at_forward:
                    _pause()
            return forward(self, *args, **kwargs)

        GPT.forward = counted_forward
    if at_save:
        save = torch.save

        def counted_save(*args, **kwargs):
            calls["save"] += 1
            if calls["save"] == at_save:
                _pause()
            return save(*args, **kwargs)

        torch.save = counted_save


def _deterministic() -> None:
    """torch.use_deterministic_algorithms(True) without its Inductor half: it also sets
    Inductor's flag, and importing Inductor costs ~2 s of CPU in every child (a dozen per
    run of test_train.py). Nothing here compiles, so the eager-mode flag is all that counts."""
    set_eager_flag = getattr(torch._C, "_set_deterministic_algorithms", None)
    if set_eager_flag is None:  # a torch without the private setter: the public call
        torch.use_deterministic_algorithms(True)
    else:
        set_eager_flag(True)
    assert torch.are_deterministic_algorithms_enabled()


def main() -> None:
    torch.set_num_threads(1)
    _deterministic()
    from gptlab.train.pretrain import PretrainConfig, pretrain

    _install_hooks()
    final = pretrain(PretrainConfig(**json.loads(sys.argv[1])))
    print(f"FINAL {final}", flush=True)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # Under torchrun on gloo, a rank sometimes aborts during interpreter finalization
        # ("terminate called without an active exception") after the run has finished and
        # the process group is destroyed: a teardown race in gloo's threads (twice in fresh-
        # clone CI runs on 2026-12-08), not a training failure. The test checks what the run
        # wrote, so a finished rank exits at once, without finalization.
        sys.stderr.flush()
        os._exit(0)


if __name__ == "__main__":
    main()
