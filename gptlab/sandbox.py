"""Run untrusted Python (a model's code, its tests) in a separate, limited process.

`run_python(code, timeout=5, memory_mb=512)` writes `code` to main.py in a fresh temporary
directory, runs it in a new process and returns a `SandboxResult` (exit code, stdout,
stderr, whether it timed out, which limits were in force). The caller's process never runs
the code. What is enforced, and how:

- wall-clock timeout: the parent kills the child's whole process group (its own session)
  with SIGKILL when `timeout` passes;
- CPU time: RLIMIT_CPU (the kernel sends SIGXCPU, then SIGKILL);
- memory: RLIMIT_AS (address space): allocating past it raises MemoryError in the child;
- output: stdout/stderr go to files in the sandbox directory under RLIMIT_FSIZE, so a flood
  of output cannot fill the parent's memory or the disk; at most `max_output` chars are read;
- no fork/exec/subprocess, no sockets, no ctypes, no writes outside the directory: a Python
  audit hook (PEP 578, cannot be removed once installed) refuses them in the child. This
  layer is always there, but code that reaches native code some other way could get past it,
  so when the judge runs as root the kernel enforces the same where it can:
- as root: the child gets a network namespace of its own with no interfaces up (connect
  fails with "Network is unreachable"), runs as an unused uid that owns only the sandbox
  directory (file permissions stop writes elsewhere, except world-writable places like
  /tmp, which the audit hook covers), with RLIMIT_NPROC 1 so the kernel refuses fork.
  These need an interpreter that another uid may execute; a Python under /root (pyenv) is
  not, so then /usr/bin/python3 is used, or, when there is none either, the uid switch is
  skipped. `SandboxResult.layers` says which layers were in force.

The environment is minimal (PATH, HOME and TMPDIR = the sandbox directory), Python runs in
isolated mode (-I: no PYTHON* variables, no user site-packages), and the directory is
deleted afterwards.
"""
from __future__ import annotations

import os
import resource
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

# Runs in the child before the user's code: the audit hook, then main.py as __main__.
_BOOTSTRAP = r'''
import os, sys
ROOT = os.path.realpath(os.getcwd())
BLOCKED = {"os.fork", "os.forkpty", "os.system", "os.exec", "os.posix_spawn", "os.spawn",
           "os.kill", "os.killpg", "subprocess.Popen", "socket.__new__", "socket.connect",
           "socket.bind", "socket.getaddrinfo", "ctypes.dlopen", "pty.spawn", "os.chroot",
           "os.setuid", "os.setgid", "os.unshare", "os.setns", "sys.setrecursionlimit"}
NO_IMPORT = {"ctypes", "_ctypes", "_posixsubprocess", "cffi"}
PATH_EVENTS = {"os.remove", "os.rmdir", "os.mkdir", "os.rename", "os.replace", "os.symlink",
               "os.link", "os.chmod", "os.chown", "os.truncate", "os.utime", "shutil.rmtree",
               "shutil.copyfile", "shutil.move"}
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC

def inside(path):
    if isinstance(path, int):
        return True          # an already open descriptor
    p = os.path.realpath(os.fsdecode(path))
    return p == ROOT or p.startswith(ROOT + os.sep)

def hook(event, args):
    if event in BLOCKED:
        raise PermissionError(f"sandbox: {event} is not allowed")
    if event == "import" and args[0].split(".")[0] in NO_IMPORT:
        raise PermissionError(f"sandbox: import {args[0]} is not allowed")
    if event == "open":
        path, mode, flags = args
        writing = any(c in str(mode or "") for c in "wax+") or bool((flags or 0) & WRITE_FLAGS)
        if writing and path is not None and not inside(path):
            raise PermissionError(f"sandbox: writing {path} (outside the sandbox) is not allowed")
    elif event in PATH_EVENTS:
        for a in args[:2]:
            if isinstance(a, (str, bytes, os.PathLike)) and not inside(a):
                raise PermissionError(f"sandbox: {event} on {a} (outside the sandbox) is not allowed")

import runpy
if sys.argv[1:] != ["--no-audit"]:
    sys.addaudithook(hook)
sys.argv = ["main.py"]
sys.path.insert(0, ROOT)     # as `python main.py` would: the directory's modules import
runpy.run_path("main.py", run_name="__main__")
'''

_CLONE_NEWNET = 0x40000000


@dataclass
class SandboxResult:
    returncode: int | None
    stdout: str
    stderr: str
    timed_out: bool
    seconds: float
    layers: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out


def _world_executable(path: str) -> bool:
    """Can any uid execute `path` (every parent directory searchable by others)?"""
    p = Path(path).resolve()
    if not p.is_file() or not p.stat().st_mode & stat.S_IXOTH:
        return False
    return all(d.stat().st_mode & stat.S_IXOTH for d in p.parents)


def _interpreter(switch_uid: bool) -> str:
    exe = os.path.realpath(sys.executable)
    if not switch_uid or _world_executable(exe):
        return exe
    for alt in ("/usr/bin/python3", "/usr/local/bin/python3"):
        if _world_executable(alt):
            return alt
    return ""


def _sandbox_uid() -> int:
    """An uid no account uses: 200000 + pid keeps concurrent sandboxes apart."""
    return 200_000 + os.getpid() % 100_000


def _limits(memory_mb: int, cpu_seconds: int, file_mb: int, uid: int | None, netns: bool):
    """The child's set-up between fork and exec (runs in the child only)."""
    def setup():
        os.setsid()
        if netns:
            import ctypes
            ctypes.CDLL(None, use_errno=True).unshare(_CLONE_NEWNET)
        mem = memory_mb * 2**20
        resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + 1))
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_mb * 2**20, file_mb * 2**20))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if uid is not None:
            resource.setrlimit(resource.RLIMIT_NPROC, (1, 1))
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
    return setup


def _netns_works() -> bool:
    """Does unshare(CLONE_NEWNET) succeed here? (root in a container may still lack it)"""
    try:
        r = subprocess.run([sys.executable, "-c", "import ctypes,sys; "
                            f"sys.exit(ctypes.CDLL(None).unshare({_CLONE_NEWNET}) != 0)"],
                           timeout=10, capture_output=True)
        return r.returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


_NETNS: bool | None = None


def run_python(code: str, *, stdin: str = "", files: dict[str, str] | None = None,
               timeout: float = 5.0, memory_mb: int = 512, cpu_seconds: int | None = None,
               max_output: int = 64_000, file_mb: int = 16, audit: bool = True) -> SandboxResult:
    """Run `code` as main.py in a fresh temporary directory (with `files` beside it) in a
    limited subprocess; see the module docstring for what is enforced. `audit=False` leaves
    out the Python-level layer (the tests use it to check that the kernel's layers hold alone)."""
    global _NETNS
    root_user = hasattr(os, "geteuid") and os.geteuid() == 0
    if root_user and _NETNS is None:
        _NETNS = _netns_works()
    netns = bool(root_user and _NETNS)
    exe = _interpreter(root_user)
    uid = _sandbox_uid() if root_user and exe else None
    exe = exe or os.path.realpath(sys.executable)
    layers = ["timeout", "rlimit_as", "rlimit_cpu", "rlimit_fsize"] + (["audit_hook"] if audit else [])
    layers += ["netns"] if netns else []
    layers += ["uid", "rlimit_nproc"] if uid is not None else []
    tmp = Path(tempfile.mkdtemp(prefix="gptlab-sandbox-"))
    try:
        (tmp / "main.py").write_text(code, encoding="utf-8")
        for name, text in (files or {}).items():
            target = (tmp / name).resolve()
            if tmp.resolve() not in target.parents:
                raise ValueError(f"sandbox file name {name!r} points outside the sandbox")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text, encoding="utf-8")
        (tmp / ".stdin").write_text(stdin, encoding="utf-8")
        if uid is not None:
            for p in [tmp, *tmp.rglob("*")]:
                os.chown(p, uid, uid)
        env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp), "TMPDIR": str(tmp), "LANG": "C.UTF-8",
               "PYTHONDONTWRITEBYTECODE": "1", "PYTHONIOENCODING": "utf-8"}
        cpu = cpu_seconds or max(1, int(timeout) + 1)
        t0 = time.time()
        with open(tmp / ".stdin", "rb") as fin, open(tmp / ".stdout", "wb") as fout, \
                open(tmp / ".stderr", "wb") as ferr:
            proc = subprocess.Popen([exe, "-I", "-B", "-c", _BOOTSTRAP] + ([] if audit else ["--no-audit"]), cwd=tmp, env=env,
                                    stdin=fin, stdout=fout, stderr=ferr, close_fds=True,
                                    preexec_fn=_limits(memory_mb, cpu, file_mb, uid, netns))
            timed_out = False
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                timed_out = True
                _kill_group(proc)
        seconds = time.time() - t0
        return SandboxResult(returncode=proc.returncode, stdout=_read(tmp / ".stdout", max_output),
                             stderr=_read(tmp / ".stderr", max_output), timed_out=timed_out,
                             seconds=round(seconds, 3), layers=layers)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)   # the child leads its own session/group
    except ProcessLookupError:
        pass
    proc.wait()


def _read(path: Path, limit: int) -> str:
    with open(path, "rb") as f:
        data = f.read(limit * 4)
    return data.decode("utf-8", errors="replace")[:limit]
