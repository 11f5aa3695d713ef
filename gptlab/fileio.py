"""Small file helpers with no heavy imports (usable from the data generators and the CLI
without loading torch)."""
from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import tempfile
import tomllib
import uuid
import warnings
from importlib.resources import files
from pathlib import Path
from typing import Iterator


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write `text` to `path` (UTF-8) so that a reader sees the old file or the whole new
    one, never a part: a temporary file in the same directory, fsynced, then renamed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)               # mkstemp creates 0600
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_jsonl(path: str | Path, rows) -> None:
    """One JSON object per line (keys sorted, UTF-8 kept), written atomically."""
    atomic_write_text(path, "".join(json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n" for r in rows))


# ---------------------------------------------------------------------------------------
# atomic directories: checkpoints, data shards, reports (torch-free, so the data side can use them)
# ---------------------------------------------------------------------------------------

def _fsync_tree(root: Path) -> None:
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            with open(os.path.join(dirpath, name), "rb") as f:
                os.fsync(f.fileno())
        _fsync_dir(Path(dirpath))


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # some platforms cannot open directories; best effort
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _swap_in(tmp: Path, out: Path) -> None:
    """Rename tmp to out; an existing out is renamed away first and removed afterwards."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{uuid.uuid4().hex[:8]}")
        os.rename(out, old)
    try:
        os.rename(tmp, out)
    except BaseException:
        if old is not None:
            os.rename(old, out)
        raise
    _fsync_dir(out.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_dir(out_dir: str | Path, markers: tuple[str, ...] = ()) -> Iterator[Path]:
    """Yield an empty temporary directory that replaces `out_dir` when the block succeeds.

    If the block raises, the temporary directory is deleted and `out_dir` is untouched.
    An existing non-empty `out_dir` is only replaced when it holds one of `markers`
    (when given), so a wrong path cannot wipe an unrelated directory.
    """
    out = Path(out_dir).absolute()
    if markers and out.is_dir() and any(out.iterdir()) and not any((out / m).exists() for m in markers):
        raise FileExistsError(f"{out} exists and does not look like a gptlab output "
                              f"(none of {', '.join(markers)}); refusing to replace it")
    recover_dir(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it 0700
        yield tmp
        _fsync_tree(tmp)
        _swap_in(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def recover_dir(path: str | Path) -> bool:
    """If `path` is missing but a backup from an interrupted swap exists, restore it."""
    path = Path(path).absolute()
    if path.exists() or not path.parent.is_dir():
        return False
    backups = sorted(path.parent.glob(f".{glob.escape(path.name)}.old-*"), key=lambda p: p.stat().st_mtime)
    if not backups:
        return False
    os.rename(backups[-1], path)
    warnings.warn(f"restored {path} from {backups[-1].name} (an earlier save was interrupted)",
                  stacklevel=2)
    return True


# ---------------------------------------------------------------------------------------
# jsonl
# ---------------------------------------------------------------------------------------

def read_package_toml(package: str, name: str) -> dict:
    """A TOML data file shipped inside a gptlab package (miniworld's wordings, the report's
    targets): read through importlib.resources, so an installed wheel finds it too."""
    return tomllib.loads(files(package).joinpath(name).read_text(encoding="utf-8"))


def read_jsonl(path: str | Path, *, cut_tail_ok: bool = False) -> list:
    """The records of a jsonl file; blank lines are skipped.

    One policy for bad lines: a line that is not valid JSON is a one-line ValueError naming
    the file and the line. With ``cut_tail_ok`` (logs appended while a run goes on, e.g.
    metrics.jsonl), a last line without its newline that does not parse -- what a killed
    writer leaves -- is dropped instead.
    """
    return [record for _, record in read_jsonl_numbered(path, cut_tail_ok=cut_tail_ok)]


def read_jsonl_numbered(path: str | Path, *, cut_tail_ok: bool = False) -> list[tuple[int, object]]:
    """``read_jsonl`` with each record's line number: ``[(line, record), ...]``, for readers
    that point back into the file (decontamination's "eval/x.jsonl:12")."""
    text = Path(path).read_text(encoding="utf-8")
    # split on "\n" only: str.splitlines would also cut at U+2028 and friends, which
    # json.dumps(ensure_ascii=False) leaves raw inside strings
    lines = text.split("\n")
    out = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            out.append((n, json.loads(line)))
        except json.JSONDecodeError as e:
            if cut_tail_ok and n == len(lines):   # the last piece has no newline after it
                break
            raise ValueError(f"{path}:{n}: not valid JSON ({e.msg})") from None
    return out
