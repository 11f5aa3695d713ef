"""Shared test fixtures: a tiny seeded corpus, a tokenizer trained on it, its token shards.

The corpus is templated English about made-up people and places. Some slots are fixed
facts (each person lives in one city and likes one food), others are drawn at random, so
a model can learn far more than the unigram statistics in a few hundred CPU steps.
Everything is session-scoped and built once (a couple of seconds).
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

NAMES = ["alice", "bruno", "chen", "dara", "emil", "fatou", "goran", "hana", "ivan",
         "julia", "kenji", "lena", "mateo", "nadia", "omar", "priya"]
CITIES = ["paris", "lima", "oslo", "cairo", "delhi", "quito", "tokyo", "rome"]
FOODS = ["rice", "bread", "soup", "fish", "beans", "apples", "cheese", "noodles"]
COLORS = ["red", "blue", "green", "black", "white", "yellow"]
ANIMALS = ["cat", "dog", "horse", "bird", "goat", "fox"]
VERBS = ["runs", "sleeps", "waits", "sings", "plays"]
WEATHER = ["sunny", "rainy", "cold", "warm", "windy"]


def make_corpus_docs(n_docs: int, seed: int = 0) -> list[str]:
    """`n_docs` documents of 3-6 templated sentences; the facts are fixed by `seed`."""
    rng = random.Random(seed)
    home = {n: rng.choice(CITIES) for n in NAMES}
    food = {n: rng.choice(FOODS) for n in NAMES}
    templates = [
        lambda n: f"{n} lives in {home[n]}.",
        lambda n: f"{n} likes to eat {food[n]}.",
        lambda n: f"the {rng.choice(COLORS)} {rng.choice(ANIMALS)} of {n} {rng.choice(VERBS)} in {home[n]}.",
        lambda n: f"in {home[n]} the weather is {rng.choice(WEATHER)} today, says {n}.",
        lambda n: f"every day {n} cooks {food[n]} at home in {home[n]}.",
    ]
    docs = []
    for _ in range(n_docs):
        name = rng.choice(NAMES)
        k = rng.randint(3, 6)
        docs.append(" ".join(rng.choice(templates)(name) for _ in range(k)))
    return docs


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> Path:
    """A .txt corpus (documents separated by blank lines): 3000 documents, ~480 k chars."""
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text("\n\n".join(make_corpus_docs(3000)) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_corpus, tmp_path_factory) -> Path:
    """Directory of a 384-token byte-level BPE trained on `tiny_corpus`."""
    from gptlab.tokenizer import train_tokenizer_from_source

    out = tmp_path_factory.mktemp("tokenizer")
    train_tokenizer_from_source(tiny_corpus, out, vocab_size=384)
    return out


@pytest.fixture(scope="session")
def tiny_shards(tiny_corpus, tiny_tokenizer, tmp_path_factory) -> Path:
    """Token shards of `tiny_corpus` (the first 200 documents are the val split)."""
    from gptlab.data.loaders import build_shards
    from gptlab.tokenizer import Tokenizer

    out = tmp_path_factory.mktemp("shards") / "shards"
    build_shards(tiny_corpus, Tokenizer.load(tiny_tokenizer), out, val_docs=200, progress=False)
    return out


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory) -> Path:
    """miniworld at scale tiny, seed 0 (read-only: tests that change it make their own)."""
    from gptlab.data.world import generate_world

    out = tmp_path_factory.mktemp("tiny_world") / "world"
    generate_world(out, seed=0, scale="tiny")
    return out


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread: tiny matmuls run ~10x faster on one thread when `pytest -n 2`
    (or anything else) shares the 2 cores. Use with `pytestmark = usefixtures(...)`."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tiny_chat_ckpt(tiny_tokenizer, tmp_path_factory) -> Path:
    """A random-weight depth-1 chat model saved as a gptlab checkpoint (stage sft)."""
    import torch

    from gptlab.checkpoint import save_checkpoint
    from gptlab.model import GPT, preset
    from gptlab.tokenizer import Tokenizer

    tok = Tokenizer.load(tiny_tokenizer)
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("chat") / "sft"
    save_checkpoint(out, GPT(preset(1, tok.vocab_size, 64)), tok, meta={"stage": "sft"})
    return out


# The groups that take longest (CPU seconds of the test process and its children, on a
# busy 2-core box: smollm2 ~115, test_train ~95, test_speedrun ~37, the rest 10-26 each),
# handed out first: longest first keeps the last groups short, so no worker idles while
# the other finishes a long one. A slow group missing here is only handed out later.
SLOWEST_GROUPS = ["smollm2", "test_train.py", "test_speedrun.py", "test_scaling.py", "test_sft.py",
                  "test_web.py", "test_safety.py", "compile", "test_serve_hardening.py",
                  "test_web_tools.py", "test_world.py", "postgres"]


def pytest_configure(config):
    # xdist would hand out the groups with the most tests first; hand them out in collection
    # order instead, which pytest_collection_modifyitems below sorts slowest first
    if getattr(config.option, "dist", None) == "loadgroup":
        config.option.loadscopereorder = False


def _xdist_group(item) -> str:
    """The worker-sharing group of a test: its `xdist_group` marks, else its module."""
    names = sorted({str(m.args[0] if m.args else m.kwargs.get("name", "default"))
                    for m in item.iter_markers("xdist_group")})
    return "_".join(names) or item.path.name


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items):
    """Under `-n N --dist loadgroup` (make test), run each module's tests on one worker,
    unless `xdist_group` marks join tests across modules.

    One worker per module: a module-scoped fixture (a trained model, a live server, a
    speedrun) is built once, not once on each worker as when tests are dealt out one by one.
    The groups are handed out in the order of the items: SLOWEST_GROUPS first, then the
    others in file order, each worker taking the next group when it is nearly done.

    The group travels as an "@group" suffix of the node id, which pytest-xdist (3.8) writes
    into `item._nodeid`; pytest 9.2 keeps the id in `item._id`, so xdist's own suffix is
    lost and every `xdist_group` mark silently ignored (pytest-dev/pytest-xdist#1386):
    write it where pytest reads it."""
    if not getattr(config.option, "loadgroup", False):
        return
    for item in items:
        suffix = "@" + _xdist_group(item)
        if item.nodeid.endswith(suffix):
            continue  # xdist's own hook worked (pytest < 9.2 and an xdist_group mark)
        if hasattr(item, "_id"):
            item._id = type(item._id).parse(item.nodeid + suffix)
        else:  # pytest < 9.2
            item._nodeid = item.nodeid + suffix
    rank = {name: i for i, name in enumerate(SLOWEST_GROUPS)}
    items.sort(key=lambda item: rank.get(_xdist_group(item), len(rank)))  # stable: file order kept
