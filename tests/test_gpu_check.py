"""bench/gpu_check.sh's CPU-checkable parts: the GPU machine lacks most of gptlab's
dependencies, so what the script runs must import without them (bench/gpu_env.py refuses
them under GPU_CHECK_STRICT=1, as the GPU machine would), and the table must read the
parts' results. The whole script at GPU_CHECK_TINY=1 is the rehearsal (docs/PERFORMANCE.md);
it compiles several models, too slow for the suite."""
from __future__ import annotations

import json
import os
import runpy
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENV = ROOT / "bench" / "gpu_env.py"


def _strict(*args, **kw):
    env = {**os.environ, "GPU_CHECK_STRICT": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, str(ENV), *args], capture_output=True, text=True,
                          env=env, timeout=600, **kw)


def test_strict_mode_refuses_what_the_gpu_machine_lacks(tmp_path):
    script = tmp_path / "imports_fastapi.py"
    script.write_text("import fastapi\n")
    r = _strict(str(script))
    assert r.returncode != 0 and "not installed on the GPU check machine" in r.stderr


def test_what_gpu_check_runs_imports_without_the_missing_packages(tmp_path):
    script = tmp_path / "imports.py"
    script.write_text(
        "import gptlab.train.pretrain, gptlab.train.sft, gptlab.evals, gptlab.engine\n"
        "import gptlab.chat, gptlab.checkpoint, gptlab.serve.worker, gptlab.cli\n"
        "import gptlab.data.loaders, gptlab.tokenizer\n"
        "from gptlab.cli import main\n"
        "for cmd in ('sft', 'eval'):  # in this process: each new one costs seconds of imports\n"
        "    try:\n"
        "        main([cmd, '--help'])\n"
        "    except SystemExit as e:\n"
        "        assert e.code in (0, None), (cmd, e.code)\n"
        "print('ok')\n")
    r = _strict(str(script))
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr[-2000:]
    assert "usage: gptlab sft" in r.stdout and "usage: gptlab eval" in r.stdout
    r = _strict("-m", "gptlab", "pretrain", "--help")  # gpu_check.sh's way: -m gptlab
    assert r.returncode == 0 and "usage: gptlab pretrain" in r.stdout, r.stderr[-2000:]


def test_table_reads_every_part(tmp_path, capsys):
    (tmp_path / "parts.json").write_text(json.dumps([
        {"name": "mfu", "status": "ok", "seconds": 61.0},
        {"name": "sft", "status": "FAILED (exit 124, see results/sft.log)", "seconds": 90.0}]))
    row = {"tokens_per_s": 1000.0, "mfu": 0.4, "peak_mem_gib": 10.0, "first_step_s": 30.0}
    (tmp_path / "mfu.json").write_text(json.dumps({"depth": 12, "batch": [32, 1024], "rows": [
        {**row, "model": "gptlab GPT"}, {**row, "model": "transformers Llama", "tokens_per_s": 800.0}]}))
    (tmp_path / "pretrain.json").write_text(json.dumps(
        {"steps": 150, "tokens_per_s": 5e5, "mfu": 0.45, "val_loss": 1.1, "best_val_loss": 1.0}))
    (tmp_path / "generate.json").write_text(json.dumps(
        {"dtype": "torch.bfloat16", "new_tokens": 128, "decode_b1_tokens_per_s": 300.0,
         "decode_b64_tokens_per_s": 9000.0, "serve_1_tokens_per_s": 250.0,
         "serve_64_tokens_per_s": 6000.0, "serve_scaling": 24.0}))
    # in this process (a new one would spend seconds importing torch): main() is what the CLI runs
    runpy.run_path(str(ROOT / "bench" / "gpu_check.py"))["main"](["table", str(tmp_path)])
    out = capsys.readouterr().out
    assert "| sft | FAILED (exit 124" in out and "| mfu | ok, 61 s |" in out
    assert "MFU 40.0%" in out and "| gptlab / transformers | 1.25x |" in out
    assert "150 steps" in out and "MFU 45.0%" in out
    assert "64 streams: 6,000 tok/s (24.0x)" in out
