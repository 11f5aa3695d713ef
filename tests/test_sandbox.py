"""gptlab.sandbox: untrusted code runs in another process, and code that loops forever,
allocates 10 GB, forks, writes outside its directory or opens a socket is stopped or
refused -- by the Python audit hook, and (as root) by the kernel's layers alone too."""
from __future__ import annotations

import os
import time

import pytest

from gptlab.sandbox import run_python

ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def test_runs_code_in_its_own_directory_and_process():
    r = run_python("import os, sys\nopen('out.txt', 'w').write('hi')\n"
                   "print(open('out.txt').read(), os.getpid(), sys.stdin.read())", stdin="from stdin")
    assert r.ok, r.stderr
    text, pid, rest = r.stdout.split(" ", 2)
    assert text == "hi" and int(pid) != os.getpid() and rest.strip() == "from stdin"


def test_files_and_failures_are_reported():
    r = run_python("from solution import add\nassert add(2, 2) == 5, 'add(2, 2) != 5'",
                   files={"solution.py": "def add(a, b):\n    return a + b\n"})
    assert not r.ok and r.returncode == 1 and "AssertionError: add(2, 2) != 5" in r.stderr
    with pytest.raises(ValueError, match="outside the sandbox"):
        run_python("pass", files={"../escape.py": "x = 1"})


def test_infinite_loop_is_killed_at_the_timeout():
    t0 = time.time()
    r = run_python("while True:\n    pass", timeout=1.5)
    assert r.timed_out and not r.ok and r.returncode < 0
    assert time.time() - t0 < 10


def test_ten_gigabytes_are_refused():
    r = run_python("x = bytearray(10 * 1024 ** 3)\nprint('allocated')", memory_mb=512)
    assert not r.ok and "MemoryError" in r.stderr and "allocated" not in r.stdout


@pytest.mark.parametrize("code", [
    "import os\nprint(os.fork())",
    "import subprocess\nsubprocess.run(['true'])",
    "import os\nos.system('true')",
    "import ctypes\nctypes.CDLL(None).fork()",
])
def test_fork_and_exec_are_refused(code):
    r = run_python(code)
    assert not r.ok and "PermissionError: sandbox:" in r.stderr


def test_writes_outside_are_refused(tmp_path):
    target = tmp_path / "pwned.txt"
    for code in (f"open({str(target)!r}, 'w').write('x')",
                 f"import os\nos.mkdir({str(tmp_path / 'd')!r})",
                 f"import pathlib\npathlib.Path({str(target)!r}).write_text('x')"):
        r = run_python(code)
        assert not r.ok and "outside the sandbox" in r.stderr, r.stderr
    assert not target.exists() and not (tmp_path / "d").exists()


def test_sockets_are_refused():
    r = run_python("import socket\ns = socket.socket()\ns.connect(('127.0.0.1', 9))")
    assert not r.ok and "PermissionError: sandbox: socket" in r.stderr


@pytest.mark.skipif(not ROOT, reason="the kernel layers need root (uid switch, network namespace)")
def test_kernel_layers_hold_without_the_audit_hook(tmp_path):
    tmp_path.chmod(0o755)
    target = tmp_path / "pwned.txt"
    r = run_python("import os\nprint(os.fork())", audit=False)
    assert "uid" in r.layers and not r.ok and "BlockingIOError" in r.stderr   # RLIMIT_NPROC
    r = run_python(f"open({str(target)!r}, 'w').write('x')", audit=False)
    assert not r.ok and "PermissionError" in r.stderr and not target.exists()
    r = run_python("import socket\nsocket.create_connection(('1.1.1.1', 80), timeout=3)", audit=False)
    if "netns" in r.layers:
        assert not r.ok and "Network is unreachable" in r.stderr
