"""The SFT data: chat records from files, directories or hf: datasets, the --mix pools
(chat or text), the per-epoch mixture, and `SFTBatches`, the resumable stream of
length-grouped micro-batches with its step-wide loss normalizer. `sft.prepare_data` puts
them together from a config."""
from __future__ import annotations

import gzip
import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path

import torch

from gptlab.chat import (
    Example, FitStats, collate, fit_examples, length_grouped_batches, render_records, text_examples)
from gptlab.data.formats import FormatError, KIND, convert_record, detect_format
from gptlab.data.loaders import iter_texts


def parse_mix(spec: str | None) -> list[tuple[str, float]]:
    """'a:0.2,hf:org/x:train:0.1' -> [('a', 0.2), ('hf:org/x:train', 0.1)]."""
    out = []
    for part in (spec or "").split(","):
        part = part.strip()
        if not part:
            continue
        source, sep, weight = part.rpartition(":")
        try:
            w = float(weight)
        except ValueError:
            w = None
        if not sep or not source or w is None or not 0 < w < 1:
            raise ValueError(f"--mix entries are SOURCE:WEIGHT with 0 < WEIGHT < 1, got {part!r}")
        out.append((source, w))
    if sum(w for _, w in out) >= 1:
        raise ValueError(f"--mix weights must sum to less than 1 (the rest is --data), got {spec!r}")
    return out


# --------------------------------------------------------------------------- reading data

_CHAT_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".parquet")


def chat_files(path: Path) -> list[Path]:
    if path.is_dir():
        if (path / "sft").is_dir():  # a miniworld directory: its SFT conversations
            path = path / "sft"
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.name.endswith(_CHAT_SUFFIXES)
                       and not any(part.startswith(".") for part in p.relative_to(path).parts))
        if not files:
            raise FileNotFoundError(f"no {', '.join(_CHAT_SUFFIXES)} files under {path}")
        return files
    if not path.exists():
        raise FileNotFoundError(f"data source {path} does not exist")
    return [path]


def _file_rows(path: Path):
    """(line or row number, raw record) of one file."""
    if path.name.endswith(".parquet"):
        import pyarrow.parquet as pq
        n = 0
        for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
            for rec in batch.to_pylist():
                n += 1
                yield n, rec
        return
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        if path.name.endswith(".json"):
            yield from enumerate(json.load(f), 1)
            return
        for i, line in enumerate(f, 1):
            if line.strip():
                try:
                    yield i, json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}: line {i}: invalid JSON ({e.msg})") from None


def _hf_rows(spec: str):
    """hf:org/name | hf:org/name:split | hf:org/name:config:split -> (row number, record)."""
    import datasets

    parts = spec.split(":")
    name, config, split = parts[0], None, "train"
    if len(parts) == 2:
        split = parts[1]
    elif len(parts) == 3:
        config, split = parts[1] or None, parts[2]
    elif len(parts) > 3:
        raise ValueError(f"hf:{spec}: expected hf:org/name[:split] or hf:org/name:config:split")
    yield from enumerate(datasets.load_dataset(name, config, split=split), 1)


def _rows(source: str):
    """(where, number, raw record) for every record of a chat source."""
    if source.startswith("hf:"):
        for n, rec in _hf_rows(source[3:]):
            yield source, n, rec
        return
    for f in chat_files(Path(source)):
        for n, rec in _file_rows(f):
            yield str(f), n, rec


def load_chat_records(source: str) -> list[dict]:
    """Chat records ``{"messages", "meta"}`` from a miniworld dir, a file or directory of
    messages / sharegpt records (.jsonl, .jsonl.gz, .json, .parquet), or ``hf:org/name``.

    Formats are read by ``gptlab.data.formats``; each record's ``meta`` (e.g.
    ``masked_turns``) is kept. A malformed record raises ``FormatError`` naming its file
    and line."""
    out, fmts = [], {}
    for where, n, rec in _rows(source):
        try:
            if where not in fmts:
                fmts[where] = detect_format(rec) if isinstance(rec, dict) else "messages"
                if KIND[fmts[where]] != "chat":
                    raise ValueError(f"{where}: holds {KIND[fmts[where]]} records, not chat conversations")
            conv = convert_record(rec, fmts[where])
        except FormatError as e:
            msg = str(e).split(f"field '{e.field}': ", 1)[-1]
            raise FormatError(where, n, e.field, msg) from None
        meta = rec.get("meta") if isinstance(rec.get("meta"), dict) else {}
        out.append({"messages": conv["messages"], "meta": meta})
        if "tools" in conv:  # tool definitions, rendered in the system turn (gptlab.tool_format)
            out[-1]["tools"] = conv["tools"]
    return out


def source_kind(source: str) -> str:
    """"chat" or "text": what the first record of a source holds."""
    if not source.startswith("hf:"):
        path = Path(source)
        if path.is_dir() and (path / "sft").is_dir():
            return "chat"
        if path.is_file() and path.name.endswith((".txt", ".txt.gz")):
            return "text"
        if path.is_dir() and not any(p.name.endswith(_CHAT_SUFFIXES) for p in path.rglob("*")):
            return "text"  # a directory of .txt files
    for _, _, rec in _rows(source):
        return KIND.get(detect_format(rec), "text") if isinstance(rec, dict) else "text"
    raise ValueError(f"{source}: no records")


def records_sha(records: list[dict]) -> str:
    h = hashlib.sha256()
    for r in records:
        h.update(json.dumps(r, sort_keys=True, ensure_ascii=False).encode("utf-8"))
    return h.hexdigest()


# --------------------------------------------------------------------------- the data set


@dataclass
class MixPart:
    """A mixture source: its pool of examples and how many it gives per epoch."""

    source: str
    weight: float
    kind: str
    pool: list[Example]
    per_epoch: int


@dataclass
class SFTData:
    train: list[Example]          # the --data conversations used for training
    val: list[Example]            # held out from --data
    mixes: list[MixPart]
    info: dict                    # counts for data.json / gptlab.json

    @property
    def epoch_size(self) -> int:
        return len(self.train) + sum(m.per_epoch for m in self.mixes)

    def epoch_examples(self, epoch: int) -> list[Example]:
        """The examples of one epoch: all of train, plus each mixture's next slice of its
        (cyclic) pool."""
        out = list(self.train)
        for m in self.mixes:
            start = epoch * m.per_epoch
            out += [m.pool[(start + i) % len(m.pool)] for i in range(m.per_epoch)]
        return out


def chat_examples(tokenizer, records: list[dict], seq_len: int, policy: str
                   ) -> tuple[list[Example], FitStats]:
    rendered = render_records(tokenizer, records)
    return fit_examples((Example.make(ids, mask) for ids, mask in rendered), seq_len, policy)


def text_pool(source: str, tokenizer, seq_len: int, needed: int, seed: int, part: int = 0,
               max_docs: int = 200_000) -> list[Example]:
    """Tokenized text pieces for a mixture: local sources are read whole (up to max_docs
    documents), streamed ones only as far as needed; shuffled with the seed and ``part``,
    the source's place in --mix (not its path, so a copy elsewhere gives the same order)."""
    limit = max_docs if not source.startswith("hf:") else max(needed, 1)
    docs = []
    for text in iter_texts(source):
        docs.append(text)
        if len(docs) >= limit:
            break
    pool = []
    for i in range(0, len(docs), 1000):
        ids = tokenizer.encode_batch(docs[i:i + 1000])
        pool += text_examples((d + [tokenizer.eos_id] for d in ids), seq_len)
    random.Random(f"mix-{seed}-{part}").shuffle(pool)
    if not pool:
        raise ValueError(f"--mix {source}: no text")
    return pool


class SFTBatches:
    """The resumable stream of micro-batches.

    The global stream is the concatenation of epochs, each cut into length-grouped
    micro-batches of `rows` examples (`length_grouped_batches`). Optimizer step g uses
    stream positions [g*A*W, (g+1)*A*W) (A accumulation steps, W processes); process r
    takes positions g*A*W + a*W + r. Every process knows the whole step, so each computes
    the step's total number of target tokens -- the loss normalizer -- without talking.
    """

    def __init__(self, data: SFTData, rows: int, pad_id: int, seq_len: int, *, seed: int,
                 accum: int, rank: int = 0, world_size: int = 1, device=None,
                 pad_multiple: int | None = None):
        self.data, self.rows, self.pad_id, self.seq_len = data, rows, pad_id, seq_len
        self.seed, self.accum, self.rank, self.world = seed, accum, rank, world_size
        self.device = device
        # rows padded to a multiple of 16 on accelerators (few shapes, aligned kernels);
        # on CPU padding is only cost
        cpu = device is None or torch.device(device).type == "cpu"
        self.pad_multiple = pad_multiple or (1 if cpu else 16)
        self.position = 0
        self._epoch, self._examples, self._batches = -1, None, None
        self._queue: list = []
        self.batches_per_epoch = len(self._epoch_batches(0))

    def _epoch_batches(self, epoch: int) -> list[list[int]]:
        if epoch != self._epoch:
            self._examples = self.data.epoch_examples(epoch)
            lengths = [len(e) for e in self._examples]
            self._batches = length_grouped_batches(lengths, self.rows, self.seed, epoch)
            self._epoch = epoch
        return self._batches

    def _batch(self, pos: int) -> list[Example]:
        epoch, i = divmod(pos, self.batches_per_epoch)
        batches = self._epoch_batches(epoch)
        return [self._examples[j] for j in batches[i]]

    def next_batch(self):
        """This process's next micro-batch: (x, y, target tokens, scale). The loss of the
        micro-batch is mean_loss * tokens * scale (see `make_loss_fn`)."""
        if not self._queue:
            n = self.accum * self.world
            step = [self._batch(self.position + k) for k in range(n)]
            total = sum(e.n_targets for b in step for e in b)
            scale = n / total
            for a in range(self.accum):
                b = step[a * self.world + self.rank]
                x, y = collate(b, self.pad_id, pad_multiple=self.pad_multiple, seq_len=self.seq_len)
                self._queue.append((x.to(self.device), y.to(self.device),
                                    sum(e.n_targets for e in b), scale))
            self.position += n
        return self._queue.pop(0)

    @property
    def epoch(self) -> float:
        return self.position / self.batches_per_epoch

    def state_dict(self) -> dict:
        return {"position": self.position, "batches_per_epoch": self.batches_per_epoch,
                "rows": self.rows, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        if state["batches_per_epoch"] != self.batches_per_epoch or state["rows"] != self.rows:
            raise ValueError("cannot resume: the data or batch layout changed since the checkpoint "
                             f"({state['batches_per_epoch']} batches of {state['rows']} per epoch then, "
                             f"{self.batches_per_epoch} of {self.rows} now)")
        self.position, self._queue = int(state["position"]), []
