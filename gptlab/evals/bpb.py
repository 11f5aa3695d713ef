"""The bpb suite: bits per byte of a model on held-out text (the pretraining val shards
when their tokenizer matches, else the first documents of a text source), tokenizer-free
so models with different vocabularies compare."""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import torch

from gptlab.data.loaders import iter_texts
from gptlab.evals import metrics as M


# ----------------------------------------------------------------------------- bits per byte

BPB_MAX_TOKENS = 1 << 18          # default cap on held-out tokens scored for bpb
BPB_FALLBACK_DOCS = 1000          # pretrain's default val_docs
LOGITS_BUDGET = 1 << 27     # float32 logits per forward pass in bpb (512 MB)


@torch.no_grad()
def stream_nats(model, stream: list[int] | np.ndarray, seq_len: int, batch_size: int = 16,
                progress: bool = False) -> tuple[float, int]:
    """Total next-token nats over stream[1:] (each token given up to seq_len before it,
    in rows that restart the context) and the number of scored tokens."""
    import torch.nn.functional as F
    from tqdm.auto import tqdm

    s = torch.as_tensor(np.asarray(stream, dtype=np.int64))
    n_scored = len(s) - 1
    if n_scored <= 0:
        raise ValueError("bits per byte needs at least two tokens")
    device = next(model.parameters()).device
    V = model.config.vocab_size
    rows = math.ceil(n_scored / seq_len)
    per = max(1, min(batch_size, LOGITS_BUDGET // (seq_len * V)))
    total = 0.0
    model.eval()
    for b in tqdm(range(0, rows, per), desc="bpb", disable=not progress, leave=False):
        n = min(per, rows - b)
        x = torch.zeros(n, seq_len, dtype=torch.long)
        y = torch.full((n, seq_len), -100, dtype=torch.long)
        for j in range(n):
            start = (b + j) * seq_len
            row = s[start:start + seq_len + 1]
            x[j, :len(row) - 1], y[j, :len(row) - 1] = row[:-1], row[1:]
        logits = model(x.to(device)).float()
        total += float(F.cross_entropy(logits.view(-1, V), y.to(device).view(-1),
                                       ignore_index=-100, reduction="sum"))
    return total, n_scored


def bpb_of_stream(model, stream, n_bytes: int, seq_len: int, batch_size: int = 16,
                  progress: bool = False) -> dict:
    nats, n = stream_nats(model, stream, seq_len, batch_size, progress)
    return {"bpb": M.bits_per_byte(nats, n_bytes), "nats": nats, "tokens": n, "bytes": n_bytes}


def _tokenizer_sha(tokenizer) -> str:
    return hashlib.sha256(tokenizer.to_json().encode("utf-8")).hexdigest()


def find_val_shards(model_dir: Path, meta: dict, tokenizer) -> Path | None:
    """The val shards of the run that (directly or through `parent`) produced the model,
    when they exist and were built with this tokenizer."""
    sha = _tokenizer_sha(tokenizer)
    cur, cur_meta = Path(model_dir), meta or {}
    for _ in range(8):
        cands = []
        data = cur_meta.get("data")
        if isinstance(data, dict) and data.get("shards"):
            cands.append(Path(data["shards"]))
        cands += [cur.parent / "shards", cur.parent.parent / "shards"]
        for c in cands:
            p = c / "shards.json"
            if p.is_file():
                sm = json.loads(p.read_text())
                val = sm.get("splits", {}).get("val", {})
                if val.get("tokens") and sm.get("tokenizer_sha256") in (None, sha):
                    return c
        parent = cur_meta.get("parent")
        if not parent or not (Path(parent) / "gptlab.json").is_file():
            return None
        cur = Path(parent)
        cur_meta = json.loads((cur / "gptlab.json").read_text())
    return None


def _cut_at_doc_end(stream: np.ndarray, max_tokens: int, eos: int) -> np.ndarray:
    """The first <= max_tokens + 1 tokens, ending after the last complete document."""
    if len(stream) <= max_tokens + 1:
        return stream
    head = stream[:max_tokens + 1]
    ends = np.nonzero(head[1:] == eos)[0]
    return head[:ends[-1] + 2] if len(ends) else head


def bpb_stream_from_shards(shard_dir: Path, tokenizer, max_tokens: int) -> tuple[np.ndarray, int]:
    """[eos] + the val split (documents each followed by eos), cut at a document end; the
    byte count is that of the decoded text (exact for whole documents)."""
    sm = json.loads((shard_dir / "shards.json").read_text())
    parts = [np.memmap(shard_dir / f, dtype=np.dtype(sm["dtype"]), mode="r")
             for f in sm["splits"]["val"]["files"] if (shard_dir / f).stat().st_size]
    eos = int(sm.get("eos_id", tokenizer.eos_id))
    stream = np.concatenate([np.array([eos], dtype=np.int64)] + [p.astype(np.int64) for p in parts])
    stream = _cut_at_doc_end(stream, max_tokens, eos)
    text = tokenizer.decode(stream.tolist(), skip_special_tokens=True)
    return stream, len(text.encode("utf-8"))


def bpb_stream_from_text(source, tokenizer, max_tokens: int, max_docs: int | None = None
                         ) -> tuple[np.ndarray, int]:
    """[eos] + encode(doc) + [eos] per document of `source` until max_tokens; bytes are the
    raw documents' UTF-8 bytes."""
    ids, n_bytes = [tokenizer.eos_id], 0
    for i, doc in enumerate(iter_texts(source)):
        if (max_docs is not None and i >= max_docs) or len(ids) > max_tokens:
            break
        ids += tokenizer.encode(doc) + [tokenizer.eos_id]
        n_bytes += len(doc.encode("utf-8"))
    return np.asarray(ids, dtype=np.int64), n_bytes


def suite_bpb(model, tokenizer, model_dir, meta, world_dir, *, limit, bpb_text, batch_size,
              progress) -> dict:
    seq_len = int(min(model.config.max_position_embeddings, 2048))
    max_tokens = BPB_MAX_TOKENS if limit is None else limit * seq_len
    shards = None if bpb_text else find_val_shards(Path(model_dir), meta, tokenizer)
    if bpb_text:
        stream, n_bytes = bpb_stream_from_text(bpb_text, tokenizer, max_tokens)
        source = str(bpb_text)
    elif shards is not None:
        stream, n_bytes = bpb_stream_from_shards(shards, tokenizer, max_tokens)
        source = f"{shards} (val split)"
    else:
        corpus = Path(world_dir) / "corpus"
        stream, n_bytes = bpb_stream_from_text(corpus, tokenizer, max_tokens, BPB_FALLBACK_DOCS)
        source = f"{corpus} (first {BPB_FALLBACK_DOCS} documents: pretrain's default val split)"
    res = bpb_of_stream(model, stream, n_bytes, seq_len, batch_size, progress)
    return {"metrics": {"bpb": res["bpb"]}, "counts": {"bpb": res["tokens"]},
            "source": source, "seq_len": seq_len, **res}
