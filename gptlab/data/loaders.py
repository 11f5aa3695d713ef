"""Text sources -> token shards -> packed training batches.

Three steps, each usable alone:

1. `iter_texts(source)` streams documents from a .txt file (documents separated by blank
   lines), .jsonl (one JSON object per line, text in `text_field`), .parquet, a directory of
   those (walked in sorted order, so the stream is deterministic), a dataset saved with
   `datasets.Dataset.save_to_disk`, or a Hugging Face dataset id `hf:org/name[:split]`
   (`hf:org/name:config:split` for a named config), streamed through `datasets`.
   Malformed records raise `DataError` naming the file, the line (or row) and the field.
2. `build_shards(source, tokenizer, out_dir)` tokenizes every document, appends `eos_id`
   after each, and writes flat `train_000.bin`, `val_000.bin`, ... files of uint16 tokens
   (uint32 when the vocabulary does not fit) plus `shards.json`; the directory appears
   atomically, complete or not at all.
3. `TokenBatchLoader` memory-maps a split, cuts the token stream into rows of
   `seq_len + 1` tokens (consecutive rows overlap by one token, so every token is a target
   exactly once), visits rows in a seeded random order that changes every epoch, and hands
   out `(x, y)` batches. The row order depends only on the seed, never on the number of
   ranks: global step g covers rows [g*B*W, (g+1)*B*W) and rank r takes its B of them.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import time
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import torch

from gptlab.fileio import atomic_dir

TEXT_SUFFIXES = (".txt", ".txt.gz")
JSONL_SUFFIXES = (".jsonl", ".jsonl.gz")
PARQUET_SUFFIXES = (".parquet",)
SUPPORTED_SUFFIXES = TEXT_SUFFIXES + JSONL_SUFFIXES + PARQUET_SUFFIXES


class DataError(ValueError):
    """A data source is malformed; the message names the file and line/row."""


# ---------------------------------------------------------------------------------------
# 1. documents
# ---------------------------------------------------------------------------------------

def iter_texts(source: str | Path, text_field: str = "text") -> Iterator[str]:
    """Yield the documents of `source` as strings; empty documents are skipped.

    A missing path or unsupported file type raises at once; bad records raise `DataError`
    while iterating, when they are reached.
    """
    if isinstance(source, str) and source.startswith("hf:"):
        return _iter_hf(source[3:], text_field)
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"data source {path} does not exist")
    if path.is_dir():
        if (path / "state.json").is_file() or (path / "dataset_dict.json").is_file():
            return _iter_saved_dataset(path, text_field)
        files = _data_files(path)
        return (text for f in files for text in _iter_file(f, text_field))
    if not path.name.endswith(SUPPORTED_SUFFIXES):
        raise DataError(f"{path}: unsupported file type (expected one of {', '.join(SUPPORTED_SUFFIXES)})")
    return _iter_file(path, text_field)


def _data_files(root: Path) -> list[Path]:
    """Supported files under root, recursively, sorted by path; hidden files/dirs skipped."""
    files = sorted(
        p for p in root.rglob("*")
        if p.is_file() and p.name.endswith(SUPPORTED_SUFFIXES)
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )
    if not files:
        raise DataError(f"{root}: no {'/'.join(SUPPORTED_SUFFIXES)} files found")
    return files


def _iter_file(path: Path, text_field: str) -> Iterator[str]:
    name = path.name
    if name.endswith(TEXT_SUFFIXES):
        yield from _iter_txt(path)
    elif name.endswith(JSONL_SUFFIXES):
        yield from _iter_jsonl(path, text_field)
    elif name.endswith(PARQUET_SUFFIXES):
        yield from _iter_parquet(path, text_field)
    else:
        raise DataError(f"{path}: unsupported file type (expected one of {', '.join(SUPPORTED_SUFFIXES)})")


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, line) pairs. Lines are decoded one by one (not in buffered chunks)
    so that invalid UTF-8 is reported at its exact line; line endings are kept as is."""
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"{path}:{lineno}: not valid UTF-8 ({e.reason})") from None
            yield lineno, line


def _iter_txt(path: Path) -> Iterator[str]:
    """Documents are separated by one or more blank (whitespace-only) lines."""
    doc: list[str] = []
    for _, line in _lines(path):
        if line.strip():
            doc.append(line)
        elif doc:
            yield "".join(doc).rstrip("\r\n")
            doc = []
    if doc:
        yield "".join(doc).rstrip("\r\n")


def _iter_jsonl(path: Path, text_field: str) -> Iterator[str]:
    for lineno, line in _lines(path):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{lineno}: malformed JSON ({e.msg} at column {e.colno})") from None
        text = _field(record, text_field, f"{path}:{lineno}")
        if text:
            yield text


def _field(record: Any, text_field: str, where: str) -> str:
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
    if text_field not in record:
        keys = ", ".join(sorted(map(str, record))[:10])
        raise DataError(f"{where}: missing field {text_field!r} (record has: {keys})")
    text = record[text_field]
    if not isinstance(text, str):
        raise DataError(f"{where}: field {text_field!r} must be a string, got {type(text).__name__}")
    return text


def _iter_parquet(path: Path, text_field: str) -> Iterator[str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"{path}: unreadable parquet file ({e})") from None
    schema = pf.schema_arrow
    if text_field not in schema.names:
        raise DataError(f"{path}: missing column {text_field!r} (columns: {', '.join(schema.names)})")
    col_type = schema.field(text_field).type
    if not (pa.types.is_string(col_type) or pa.types.is_large_string(col_type)):
        raise DataError(f"{path}: column {text_field!r} must be a string column, got {col_type}")
    row = 0
    try:
        for batch in pf.iter_batches(columns=[text_field], batch_size=1024):
            for text in batch.column(0).to_pylist():
                if text is None:
                    raise DataError(f"{path}: row {row}: field {text_field!r} is null")
                row += 1
                if text:
                    yield text
    except pa.ArrowException as e:
        raise DataError(f"{path}: unreadable parquet data near row {row} ({e})") from None


def _iter_rows(rows: Iterable[Any], text_field: str, where: str) -> Iterator[str]:
    for i, record in enumerate(rows):
        text = _field(record, text_field, f"{where}: row {i}")
        if text:
            yield text


def _iter_saved_dataset(path: Path, text_field: str) -> Iterator[str]:
    import datasets

    ds = datasets.load_from_disk(str(path))
    if isinstance(ds, datasets.DatasetDict):
        if "train" not in ds:
            raise DataError(f"{path}: saved DatasetDict has no 'train' split ({', '.join(ds)})")
        ds = ds["train"]
    yield from _iter_rows(ds, text_field, str(path))


def parse_hf_spec(spec: str) -> tuple[str, str | None, str]:
    """'org/name' | 'org/name:split' | 'org/name:config:split' -> (name, config, split)."""
    parts = spec.split(":")
    if len(parts) == 1:
        return parts[0], None, "train"
    if len(parts) == 2:
        return parts[0], None, parts[1]
    if len(parts) == 3:
        return parts[0], parts[1] or None, parts[2]
    raise DataError(f"hf:{spec}: expected hf:org/name[:split] or hf:org/name:config:split")


def _iter_hf(spec: str, text_field: str) -> Iterator[str]:
    """Stream a `datasets` dataset (hub id or local data dir) without downloading it all."""
    import datasets

    name, config, split = parse_hf_spec(spec)
    ds = datasets.load_dataset(name, config, split=split, streaming=True)
    yield from _iter_rows(ds, text_field, f"hf:{spec}")


# ---------------------------------------------------------------------------------------
# 2. shards
# ---------------------------------------------------------------------------------------

def shard_dtype(vocab_size: int) -> np.dtype:
    """uint16 holds ids 0..65535; bigger vocabularies need uint32."""
    return np.dtype(np.uint16 if vocab_size <= 2**16 else np.uint32)


class _ShardWriter:
    """Appends tokens to {split}_000.bin, {split}_001.bin, ..., `shard_size` tokens each."""

    def __init__(self, out_dir: Path, split: str, dtype: np.dtype, shard_size: int):
        self.out_dir, self.split, self.dtype, self.shard_size = out_dir, split, dtype, shard_size
        self.files: list[str] = []
        self.tokens = self.docs = self.bytes = 0
        self._f = None
        self._in_shard = 0

    def add(self, ids: list[int], text: str) -> None:
        arr = np.asarray(ids, dtype=self.dtype)
        self.docs += 1
        self.bytes += len(text.encode("utf-8"))
        while arr.size:  # a document may straddle two shards; the loader sees one stream
            if self._f is None or self._in_shard == self.shard_size:
                self._next_file()
            take = arr[: self.shard_size - self._in_shard]
            self._f.write(take.tobytes())
            self._in_shard += take.size
            self.tokens += take.size
            arr = arr[take.size:]

    def _next_file(self) -> None:
        self.close()
        name = f"{self.split}_{len(self.files):03d}.bin"
        self.files.append(name)
        self._f = open(self.out_dir / name, "wb")
        self._in_shard = 0

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None

    def summary(self) -> dict:
        return {"files": self.files, "tokens": self.tokens, "docs": self.docs, "bytes": self.bytes}


def _is_val(index: int, text: str, val_docs: int, val_fraction: float | None) -> bool:
    if val_fraction is None:
        return index < val_docs
    # Hash of the content: the split does not depend on order, duplicates share a side.
    h = int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")
    return h / 2**64 < val_fraction


def batched(it: Iterable[str], n: int) -> Iterator[list[str]]:
    """Lists of n items in order, the last one shorter (itertools.batched, Python 3.12)."""
    batch: list[str] = []
    for x in it:
        batch.append(x)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch


def build_shards(source: str | Path, tokenizer, out_dir: str | Path, *, val_docs: int = 1000,
                 val_fraction: float | None = None, shard_size: int = 100_000_000,
                 text_field: str = "text", progress: bool = True,
                 max_tokens: int | None = None) -> dict:
    """Tokenize `source` into token shards in `out_dir`; returns the shards.json dict.

    `max_tokens` stops reading once the train split holds that many tokens (for hub data
    sets streamed through `datasets`, which may be far larger than a run needs).

    The first `val_docs` documents go to the val split -- or, when `val_fraction` is set,
    each document goes to val when the hash of its text falls below that fraction.
    `shard_size` is in tokens. `source_sha256` hashes the document texts as read (each
    followed by a NUL byte), so it identifies the data whatever the file format.
    """
    from tqdm.auto import tqdm

    dtype = shard_dtype(tokenizer.vocab_size)
    src_hash = hashlib.sha256()
    with atomic_dir(out_dir, markers=("shards.json",)) as tmp:
        writers = {s: _ShardWriter(tmp, s, dtype, shard_size) for s in ("train", "val")}
        index = 0
        with tqdm(desc="tokenizing", unit="doc", delay=2.0, disable=not progress) as bar:
            for texts in batched(iter_texts(source, text_field), 256):
                for text, ids in zip(texts, tokenizer.encode_batch(texts), strict=True):
                    src_hash.update(text.encode("utf-8") + b"\0")
                    split = "val" if _is_val(index, text, val_docs, val_fraction) else "train"
                    writers[split].add(ids + [tokenizer.eos_id], text)
                    index += 1
                    if max_tokens and writers["train"].tokens >= max_tokens:
                        break
                bar.update(len(texts))
                if max_tokens and writers["train"].tokens >= max_tokens:
                    break
        for w in writers.values():
            w.close()
        if writers["train"].docs == 0:
            raise DataError(f"{source}: {index} documents, none left for training after the val split")
        meta = {
            "version": 1,
            "dtype": dtype.name,
            "eos_id": tokenizer.eos_id,
            "vocab_size": tokenizer.vocab_size,
            "tokenizer_sha256": hashlib.sha256(tokenizer.to_json().encode("utf-8")).hexdigest(),
            "source": str(source),
            "source_sha256": src_hash.hexdigest(),
            "text_field": text_field,
            "max_tokens": max_tokens,
            "shard_size": shard_size,
            "val_docs": val_docs if val_fraction is None else None,
            "val_fraction": val_fraction,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "splits": {s: w.summary() for s, w in writers.items()},
        }
        (tmp / "shards.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


# ---------------------------------------------------------------------------------------
# 3. batches
# ---------------------------------------------------------------------------------------

class TokenBatchLoader:
    """Infinite, seeded, resumable batches of packed token rows from one split.

    Row i of the split is tokens [i*T, i*T + T + 1) of the concatenated stream (T =
    seq_len), so x = row[:-1], y = row[1:]. Epoch e visits rows in the order
    `permutation(seed, e)` (identity when shuffle=False). The global stream of rows is the
    concatenation of epochs; global step g uses stream positions [g*B*W, (g+1)*B*W) and
    rank r takes [g*B*W + r*B, g*B*W + (r+1)*B).
    """

    def __init__(self, shard_dir: str | Path, split: str, batch_size: int, seq_len: int, *,
                 seed: int = 0, rank: int = 0, world_size: int = 1, shuffle: bool = True):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
        self.shard_dir = Path(shard_dir)
        self.split, self.batch_size, self.seq_len = split, batch_size, seq_len
        self.seed, self.rank, self.world_size, self.shuffle = seed, rank, world_size, shuffle
        self.meta = self._read_meta()
        self._maps = self._open_shards()
        self._starts = np.cumsum([0] + [len(m) for m in self._maps])  # token offset per shard
        self.num_tokens = int(self._starts[-1])
        self.num_rows = (self.num_tokens - 1) // seq_len if self.num_tokens else 0
        if self.num_rows == 0:
            raise DataError(f"{self.shard_dir}: split {split!r} has {self.num_tokens} tokens, "
                            f"fewer than seq_len + 1 = {seq_len + 1}")
        self.position = 0  # global stream position (in rows) of the next step
        self._perm_epoch, self._perm = -1, None

    def _read_meta(self) -> dict:
        p = self.shard_dir / "shards.json"
        if not p.is_file():
            raise FileNotFoundError(f"{p} not found: build shards first (gptlab.data.loaders.build_shards)")
        meta = json.loads(p.read_text())
        if self.split not in meta["splits"]:
            raise DataError(f"{p}: no split {self.split!r} (have {', '.join(meta['splits'])})")
        return meta

    def _open_shards(self) -> list[np.memmap]:
        dtype = np.dtype(self.meta["dtype"])
        maps = []
        for name in self.meta["splits"][self.split]["files"]:
            if (self.shard_dir / name).stat().st_size:  # np.memmap refuses empty files
                maps.append(np.memmap(self.shard_dir / name, dtype=dtype, mode="r"))
        return maps

    @property
    def epoch(self) -> int:
        return self.position // self.num_rows

    def _row_index(self, pos: int) -> int:
        """Map a global stream position to a row of the split."""
        epoch, i = divmod(pos, self.num_rows)
        if not self.shuffle:
            return i
        if epoch != self._perm_epoch:
            rng = np.random.default_rng([self.seed, epoch])
            self._perm, self._perm_epoch = rng.permutation(self.num_rows), epoch
        return int(self._perm[i])

    def _tokens(self, start: int, n: int) -> np.ndarray:
        """Tokens [start, start + n) of the split's stream, across shard boundaries."""
        out = np.empty(n, dtype=np.int64)
        k = int(np.searchsorted(self._starts, start, side="right")) - 1
        filled = 0
        while filled < n:
            off = start + filled - int(self._starts[k])
            chunk = self._maps[k][off: off + n - filled]
            out[filled: filled + len(chunk)] = chunk
            filled += len(chunk)
            k += 1
        return out

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's (x, y), each int64 of shape (batch_size, seq_len); advances one step."""
        B, T = self.batch_size, self.seq_len
        first = self.position + self.rank * B
        rows = np.stack([self._tokens(self._row_index(p) * T, T + 1) for p in range(first, first + B)])
        self.position += B * self.world_size
        rows_t = torch.from_numpy(rows)
        return rows_t[:, :-1].contiguous(), rows_t[:, 1:].contiguous()

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        while True:
            yield self.next_batch()

    def state_dict(self) -> dict:
        epoch, pos = divmod(self.position, self.num_rows)
        return {"epoch": epoch, "position": pos, "seed": self.seed, "num_rows": self.num_rows,
                "split": self.split, "seq_len": self.seq_len, "shuffle": self.shuffle}

    def load_state_dict(self, state: dict) -> None:
        """Resume where `state_dict()` was taken; batch size and world size may differ."""
        for key in ("seed", "num_rows", "seq_len", "shuffle"):
            if key in state and state[key] != getattr(self, key):
                raise ValueError(f"loader state has {key}={state[key]!r} but this loader has "
                                 f"{getattr(self, key)!r}; the data or settings changed")
        self.position = int(state["epoch"]) * self.num_rows + int(state["position"])
