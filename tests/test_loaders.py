"""Data loaders: sources -> documents, shards, and deterministic/resumable/sharded batches."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from gptlab.data.loaders import DataError, TokenBatchLoader, build_shards, iter_texts, shard_dtype
from gptlab.tokenizer import train_tokenizer

DOCS = [f"Document {i}: the capital of country {i} is city {i * 7}. " * (1 + i % 5) for i in range(60)]


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(DOCS, vocab_size=400)


@pytest.fixture(scope="module")
def shards(tok, tmp_path_factory):
    d = tmp_path_factory.mktemp("shards")
    src = d / "src.jsonl"
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in DOCS))
    build_shards(src, tok, d / "out", val_docs=5, shard_size=1000)
    return d / "out"


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    return path


# ---- iter_texts ------------------------------------------------------------------------

def test_txt_blank_line_separated(tmp_path):
    p = tmp_path / "a.txt"
    p.write_bytes("first doc\nline two\n\n\n  \nsecond 你好\r\nstill second\r\n\r\nthird".encode())
    assert list(iter_texts(p)) == ["first doc\nline two", "second 你好\r\nstill second", "third"]


def test_jsonl_and_custom_field(tmp_path):
    records = [{"text": "a", "body": "x"}, {"text": "", "body": "y"}, {"text": "b", "body": "z"}]
    p = write_jsonl(tmp_path / "a.jsonl", records)
    assert list(iter_texts(p)) == ["a", "b"]  # empty documents are skipped
    assert list(iter_texts(p, text_field="body")) == ["x", "y", "z"]


def test_parquet(tmp_path):
    p = tmp_path / "a.parquet"
    pq.write_table(pa.table({"text": ["p1", "p2", "p3"], "n": [1, 2, 3]}), p, row_group_size=2)
    assert list(iter_texts(p)) == ["p1", "p2", "p3"]


def test_directory_sorted_recursive(tmp_path):
    (tmp_path / "b").mkdir()
    write_jsonl(tmp_path / "b" / "2.jsonl", [{"text": "b2"}])
    (tmp_path / "a.txt").write_text("a1\n\na2\n")
    pq.write_table(pa.table({"text": ["c1"]}), tmp_path / "c.parquet")
    (tmp_path / ".hidden.txt").write_text("no")
    (tmp_path / "notes.md").write_text("ignored")
    assert list(iter_texts(tmp_path)) == ["a1", "a2", "b2", "c1"]


def test_datasets_local(tmp_path):
    import datasets

    ds = datasets.Dataset.from_dict({"text": ["d1", "d2"], "other": [1, 2]})
    ds.save_to_disk(str(tmp_path / "saved"))
    assert list(iter_texts(tmp_path / "saved")) == ["d1", "d2"]
    (tmp_path / "repo").mkdir()
    write_jsonl(tmp_path / "repo" / "train.jsonl", [{"text": "h1"}, {"text": "h2"}])
    assert list(iter_texts(f"hf:{tmp_path / 'repo'}")) == ["h1", "h2"]
    assert list(iter_texts(f"hf:{tmp_path / 'repo'}:train")) == ["h1", "h2"]


def test_malformed_jsonl_names_file_and_line(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"text": "ok"}\n\n{"text": "ok"}\n{"text": oops}\n')
    with pytest.raises(DataError, match=r"bad\.jsonl:4: malformed JSON"):
        list(iter_texts(p))


@pytest.mark.parametrize("record, msg", [
    ({"body": "x"}, r"bad\.jsonl:2: missing field 'text'"),
    ({"text": 3}, r"bad\.jsonl:2: field 'text' must be a string"),
    ([1, 2], r"bad\.jsonl:2: expected a JSON object"),
])
def test_bad_jsonl_records(tmp_path, record, msg):
    p = write_jsonl(tmp_path / "bad.jsonl", [{"text": "fine"}, record])
    with pytest.raises(DataError, match=msg):
        list(iter_texts(p))


def test_invalid_utf8_names_line(tmp_path):
    p = tmp_path / "bad.txt"
    p.write_bytes(b"ok\n\nfine\n\xff\xfe broken\n")
    with pytest.raises(DataError, match=r"bad\.txt:4: not valid UTF-8"):
        list(iter_texts(p))


def test_bad_parquet(tmp_path):
    p = tmp_path / "broken.parquet"
    p.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(DataError, match="broken.parquet: unreadable parquet"):
        list(iter_texts(p))
    q = tmp_path / "nocol.parquet"
    pq.write_table(pa.table({"body": ["x"]}), q)
    with pytest.raises(DataError, match="nocol.parquet: missing column 'text'"):
        list(iter_texts(q))
    r = tmp_path / "null.parquet"
    pq.write_table(pa.table({"text": ["x", None]}), r)
    with pytest.raises(DataError, match="null.parquet: row 1"):
        list(iter_texts(r))


def test_missing_and_unsupported(tmp_path):
    with pytest.raises(FileNotFoundError):
        iter_texts(tmp_path / "nope.jsonl")  # raised at the call, not at first next()
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(DataError, match="unsupported"):
        iter_texts(tmp_path / "x.csv")
    (tmp_path / "d").mkdir()
    with pytest.raises(DataError, match="no .* files found"):
        iter_texts(tmp_path / "d")


# ---- build_shards ----------------------------------------------------------------------

def test_shards_content_and_metadata(tok, shards):
    meta = json.loads((shards / "shards.json").read_text())
    assert meta["dtype"] == "uint16" and meta["eos_id"] == tok.eos_id
    expected = {s: [] for s in ("train", "val")}
    for i, doc in enumerate(DOCS):
        expected["val" if i < 5 else "train"] += tok.encode(doc) + [tok.eos_id]
    for split, toks in expected.items():
        info = meta["splits"][split]
        data = np.concatenate([np.fromfile(shards / f, dtype=np.uint16) for f in info["files"]])
        assert data.tolist() == toks
        assert info["tokens"] == len(toks) and info["docs"] == (5 if split == "val" else 55)
        sizes = [(shards / f).stat().st_size // 2 for f in info["files"]]
        assert all(s == 1000 for s in sizes[:-1]) and 0 < sizes[-1] <= 1000
    assert len(meta["splits"]["train"]["files"]) > 1
    assert len(meta["source_sha256"]) == 64


def test_shard_dtype_choice():
    assert shard_dtype(4096) == np.uint16 and shard_dtype(65536) == np.uint16
    assert shard_dtype(65537) == np.uint32 and shard_dtype(128256) == np.uint32


class BigVocab:
    """A stand-in tokenizer with a vocabulary too large for uint16."""
    vocab_size, eos_id = 100_000, 99_999

    def encode_batch(self, texts):
        return [[70_000 + len(t), 5] for t in texts]

    def to_json(self):
        return "{}"


def test_uint32_shards_for_big_vocab(tmp_path):
    src = write_jsonl(tmp_path / "s.jsonl", [{"text": "abc"}, {"text": "de"}])
    meta = build_shards(src, BigVocab(), tmp_path / "out", val_docs=0)
    assert meta["dtype"] == "uint32"
    data = np.fromfile(tmp_path / "out" / "train_000.bin", dtype=np.uint32)
    assert data.tolist() == [70_003, 5, 99_999, 70_002, 5, 99_999]


def test_hash_split_is_deterministic_and_order_free(tok, tmp_path):
    src = write_jsonl(tmp_path / "s.jsonl", [{"text": t} for t in DOCS])
    rev = write_jsonl(tmp_path / "r.jsonl", [{"text": t} for t in reversed(DOCS)])
    a = build_shards(src, tok, tmp_path / "a", val_fraction=0.2)
    b = build_shards(rev, tok, tmp_path / "b", val_fraction=0.2)
    assert a["splits"]["val"]["docs"] == b["splits"]["val"]["docs"]
    assert 0 < a["splits"]["val"]["docs"] < 30
    assert a["splits"]["val"]["bytes"] == b["splits"]["val"]["bytes"]


def test_failed_build_leaves_previous_shards(tok, tmp_path, monkeypatch):
    src = write_jsonl(tmp_path / "s.jsonl", [{"text": t} for t in DOCS])
    out = tmp_path / "out"
    before = build_shards(src, tok, out, val_docs=2)
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"text": "ok"}] * 3 + [{"nope": 1}])
    with pytest.raises(DataError):
        build_shards(bad, tok, out, val_docs=2)
    assert json.loads((out / "shards.json").read_text()) == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # temp dir cleaned


# ---- TokenBatchLoader ------------------------------------------------------------------

def batches(loader, n):
    return [loader.next_batch() for _ in range(n)]


def test_batch_shapes_and_shift(shards):
    x, y = TokenBatchLoader(shards, "train", 4, 16).next_batch()
    assert x.shape == y.shape == (4, 16) and x.dtype == y.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])


def test_rows_are_stream_slices_and_epoch_covers_all(shards):
    meta = json.loads((shards / "shards.json").read_text())["splits"]["train"]
    stream = np.concatenate([np.fromfile(shards / f, dtype=np.uint16) for f in meta["files"]]).astype(np.int64)
    T = 32
    loader = TokenBatchLoader(shards, "train", 1, T, shuffle=True, seed=3)
    n = loader.num_rows
    assert n == (len(stream) - 1) // T
    starts = []
    for _ in range(n):  # one epoch, rows that straddle shard files included
        x, y = loader.next_batch()
        row = x[0].numpy()
        matches = [i for i in range(n) if np.array_equal(stream[i * T:i * T + T], row)
                   and stream[i * T + T] == y[0, -1].item()]
        starts.append(matches[0])
    assert sorted(starts) == list(range(n)) and starts != list(range(n))
    assert loader.epoch == 1


def test_determinism_given_seed(shards):
    a = batches(TokenBatchLoader(shards, "train", 3, 16, seed=7), 20)
    b = batches(TokenBatchLoader(shards, "train", 3, 16, seed=7), 20)
    c = batches(TokenBatchLoader(shards, "train", 3, 16, seed=8), 20)
    assert all(torch.equal(p[0], q[0]) for p, q in zip(a, b))
    assert not all(torch.equal(p[0], q[0]) for p, q in zip(a, c))


def test_epochs_reshuffle(shards):
    loader = TokenBatchLoader(shards, "val", 1, 8, seed=0)
    n = loader.num_rows
    first = [loader.next_batch()[0] for _ in range(n)]
    second = [loader.next_batch()[0] for _ in range(n)]
    assert not all(torch.equal(a, b) for a, b in zip(first, second))


def test_resume_from_state_dict(shards):
    loader = TokenBatchLoader(shards, "train", 4, 16, seed=1)
    batches(loader, 37)  # crosses an epoch boundary
    state = json.loads(json.dumps(loader.state_dict()))  # survives serialization
    expected = batches(loader, 10)
    resumed = TokenBatchLoader(shards, "train", 4, 16, seed=1)
    resumed.load_state_dict(state)
    for (x1, y1), (x2, y2) in zip(expected, batches(resumed, 10)):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    with pytest.raises(ValueError, match="seed"):
        TokenBatchLoader(shards, "train", 4, 16, seed=2).load_state_dict(state)


def test_rank_split_equals_single_process(shards):
    B, steps = 3, 25  # enough steps to wrap into a second epoch
    single = TokenBatchLoader(shards, "train", 2 * B, 16, seed=5)
    ranks = [TokenBatchLoader(shards, "train", B, 16, seed=5, rank=r, world_size=2) for r in range(2)]
    for _ in range(steps):
        x, y = single.next_batch()
        (x0, y0), (x1, y1) = ranks[0].next_batch(), ranks[1].next_batch()
        assert torch.equal(torch.cat([x0, x1]), x) and torch.equal(torch.cat([y0, y1]), y)
    assert ranks[0].state_dict() == single.state_dict()


def test_loader_errors(shards):
    with pytest.raises(ValueError, match="rank"):
        TokenBatchLoader(shards, "train", 2, 16, rank=2, world_size=2)
    with pytest.raises(DataError, match="fewer than"):
        TokenBatchLoader(shards, "val", 1, 100_000)
    with pytest.raises(FileNotFoundError, match="shards.json"):
        TokenBatchLoader(shards.parent, "train", 1, 8)


def test_build_refuses_unrelated_dir(tok, tmp_path):
    src = write_jsonl(tmp_path / "s.jsonl", [{"text": t} for t in DOCS])
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(FileExistsError):
        build_shards(src, tok, tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"


def test_hf_spec_parsing():
    from gptlab.data.loaders import parse_hf_spec

    assert parse_hf_spec("org/name") == ("org/name", None, "train")
    assert parse_hf_spec("org/name:validation") == ("org/name", None, "validation")
    assert parse_hf_spec("org/name:sample-10BT:train") == ("org/name", "sample-10BT", "train")
    with pytest.raises(DataError):
        parse_hf_spec("a:b:c:d")


def test_max_tokens_stops_reading_early(tok, tmp_path):
    src = write_jsonl(tmp_path / "s.jsonl", [{"text": t} for t in DOCS])
    full = build_shards(src, tok, tmp_path / "full", val_docs=2)
    capped = build_shards(src, tok, tmp_path / "cap", val_docs=2, max_tokens=300)
    train = capped["splits"]["train"]
    # stops at the first document that reaches the cap: >= cap, and short of the full set
    assert 300 <= train["tokens"] < full["splits"]["train"]["tokens"]
    assert train["docs"] < full["splits"]["train"]["docs"]
    assert capped["max_tokens"] == 300 and full["max_tokens"] is None
