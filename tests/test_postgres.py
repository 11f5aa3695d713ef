"""The feedback store, API keys and the model registry on a real PostgreSQL server.

A fixture runs Debian's `postgresql` (initdb into a temporary directory, pg_ctl on a free
loopback port; as the `postgres` user when the tests run as root, since postgres refuses
root). Each test gets its own database. Where PostgreSQL or the psycopg driver is not
installed the tests are skipped with a message saying how to get them
(`apt-get install postgresql`, `pip install -e .[dev]`; `.ci/run` does both).
"""

from __future__ import annotations

import glob
import itertools
import json
import multiprocessing as mp
import os
import shutil
import subprocess
import tempfile
import types
from pathlib import Path

import pytest
from serve_fixtures import free_port

from gptlab.cli import main
from gptlab.feedback import FeedbackStore

WRITERS, PER_WRITER = 8, 25

pytestmark = pytest.mark.xdist_group("postgres")  # one server per run under -n N --dist loadgroup


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name) or sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found if isinstance(found, str) else (found[-1] if found else None)


def _as_postgres_user() -> list[str]:
    """postgres will not run as root: run its commands as the `postgres` user then."""
    if os.geteuid() != 0:
        return []
    try:
        import pwd
        pwd.getpwnam("postgres")
    except KeyError:
        pytest.skip("running as root and there is no `postgres` user to run PostgreSQL as")
    return ["runuser", "-u", "postgres", "--"]


@pytest.fixture(scope="module")
def pg_server():
    """A throwaway PostgreSQL server: yields (host, port); stopped and deleted at the end."""
    pytest.importorskip("psycopg", reason="the psycopg driver is not installed (pip install -e .[dev])")
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if not (initdb and pg_ctl):
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql); .ci/run installs it")
    run_as = _as_postgres_user()
    # as root, under /tmp: the postgres user must reach it (a root-only TMPDIR would not do)
    root = Path(tempfile.mkdtemp(prefix="gptlab-pg-", dir="/tmp" if run_as else None))
    if run_as:
        shutil.chown(root, "postgres")
    data, port = root / "data", free_port()
    subprocess.run(run_as + [initdb, "-D", str(data), "-A", "trust", "-U", "gptlab", "-E", "UTF8",
                             "--no-sync"], check=True, capture_output=True)
    # fsync off: a test database need not survive a power cut, and it is much faster
    opts = (f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off "
            f"-c synchronous_commit=off -c full_page_writes=off")
    subprocess.run(run_as + [pg_ctl, "-D", str(data), "-o", opts, "-l", str(root / "log"), "-w",
                             "start"], check=True, capture_output=True)
    try:
        yield "127.0.0.1", port
    finally:
        subprocess.run(run_as + [pg_ctl, "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


_db_numbers = itertools.count()


@pytest.fixture
def pg_url(pg_server) -> str:
    """A fresh, empty database on the server, as an SQLAlchemy URL."""
    import psycopg

    host, port = pg_server
    name = f"t{os.getpid()}_{next(_db_numbers)}"
    with psycopg.connect(host=host, port=port, user="gptlab", dbname="postgres", autocommit=True) as c:
        c.execute(f"CREATE DATABASE {name}")
    return f"postgresql+psycopg://gptlab@{host}:{port}/{name}"


def _ranked_writer(args):
    url, w = args
    store = FeedbackStore(url)
    for i in range(PER_WRITER):
        store.add_ranked([{"role": "user", "content": f"w{w} q{i}"}],
                         [f"w{w} q{i} a", f"w{w} q{i} b", f"w{w} q{i} c"], [2, 0, 1],
                         source=f"writer{w}")
        store.add_rating(store.add_response(1, f"w{w} r{i}"), 1.0, rater=f"w{w}")
    store.engine.dispose()
    return w


def test_8_concurrent_writers_lose_no_row(pg_url):
    store = FeedbackStore(pg_url)
    store.add_prompt([{"role": "user", "content": "shared"}])
    with mp.get_context("fork").Pool(WRITERS) as pool:
        assert sorted(pool.map(_ranked_writer, [(pg_url, w) for w in range(WRITERS)])) == list(range(WRITERS))
    n = WRITERS * PER_WRITER
    assert store.counts() == {"prompts": n + 1, "responses": 4 * n, "rankings": n,
                              "comparisons": 0, "ratings": n}
    rankings = store.rankings()
    assert {r["prompt"][0]["content"] for r in rankings} == \
        {f"w{w} q{i}" for w in range(WRITERS) for i in range(PER_WRITER)}
    assert all(r["responses"] == [f"{r['prompt'][0]['content']} {x}" for x in "cab"] for r in rankings)


def _importer(args):
    url, path = args
    n = FeedbackStore(url).import_file(path)
    return int(n)


def _pairs_file(path: Path, n: int) -> Path:
    path.write_text("".join(json.dumps({"prompt": [{"role": "user", "content": f"q{i}?"}],
                                        "chosen": f"good {i}", "rejected": f"bad {i}"}) + "\n"
                            for i in range(n)))
    return path


def test_8_concurrent_imports_of_one_file_store_each_pair_once(pg_url, tmp_path):
    """Idempotent under a race too: the unique content hash makes all but one import
    roll back and retry, and the retries find every pair already there."""
    src = _pairs_file(tmp_path / "prefs.jsonl", 30)
    FeedbackStore(pg_url)
    with mp.get_context("fork").Pool(WRITERS) as pool:
        added = pool.map(_importer, [(pg_url, str(src))] * WRITERS)
    assert sum(added) == 30 and sorted(added)[-1] == 30
    assert FeedbackStore(pg_url).counts()["comparisons"] == 30


def test_cli_import_is_all_or_nothing_on_postgres(pg_url, tmp_path, capsys):
    src = _pairs_file(tmp_path / "prefs.jsonl", 4)
    with open(src, "a") as f:
        f.write('{"prompt": "q", "chosen": 3}\n')
    assert main(["feedback", "import", str(src), "--db", pg_url]) == 2
    assert "prefs.jsonl: line 5" in capsys.readouterr().err
    assert FeedbackStore(pg_url).counts()["prompts"] == 0
    _pairs_file(src, 4)
    for expected in (4, 0):
        assert main(["feedback", "import", str(src), "--db", pg_url]) == 0
        assert f"imported {expected} pairs" in capsys.readouterr().out
    assert main(["feedback", "stats", "--db", pg_url]) == 0


def test_an_older_store_gets_its_content_hash_column_on_postgres(pg_url, tmp_path):
    from sqlalchemy import text

    src = _pairs_file(tmp_path / "prefs.jsonl", 3)
    store = FeedbackStore(pg_url)
    store.import_file(src)
    with store.engine.begin() as c:   # what an older gptlab wrote: no content_hash
        c.execute(text("ALTER TABLE comparisons DROP COLUMN content_hash"))
    store.engine.dispose()
    store = FeedbackStore(pg_url)
    assert store.import_file(src) == 0 and store.counts()["comparisons"] == 3


def _key_writer(args):
    from gptlab.serve.keys import KeyStore

    url, w = args
    keys = KeyStore(FeedbackStore(url))
    tokens = [keys.create(f"w{w}-{i}", rpm=10)[0] for i in range(PER_WRITER)]
    keys.store.engine.dispose()
    return tokens


def test_api_keys_on_postgres(pg_url, capsys):
    from gptlab.serve.keys import KeyStore

    FeedbackStore(pg_url)
    with mp.get_context("fork").Pool(WRITERS) as pool:
        tokens = [t for ts in pool.map(_key_writer, [(pg_url, w) for w in range(WRITERS)]) for t in ts]
    keys = KeyStore(FeedbackStore(pg_url))
    assert len(set(tokens)) == len(keys.list()) == WRITERS * PER_WRITER
    assert keys.verify(tokens[7])["rpm"] == 10
    keys.revoke(str(keys.verify(tokens[7])["id"]))
    assert keys.verify(tokens[7]) is None and keys.verify(tokens[8]) is not None
    assert main(["keys", "create", "--db", pg_url, "--name", "cli", "--admin"]) in (0, None)
    token = capsys.readouterr().out.strip().splitlines()[-1]
    assert keys.verify(token)["admin"] is True


def _entry(name: str):
    from gptlab.serve.registry import Entry

    # the registry's database side is under test; the worker only needs its flag
    worker = types.SimpleNamespace(disabled=False, load=dict)
    return Entry(name=name, path=Path(f"/models/{name}"), model=None, tokenizer=None,
                 worker=worker, grammar=None, context=64, stop_ids=[])


def test_model_registry_on_postgres_survives_a_restart(pg_url):
    from gptlab.serve.registry import Registry

    def registry():
        r = Registry(FeedbackStore(pg_url))
        for name in ("v1", "v2", "v3"):
            r.add(_entry(name))
        r.restore()
        return r

    r = registry()
    assert r.aliases == {"default": "v1", "candidate": "v2"}
    r.set_enabled("v2", False)
    r.promote("v3", "default")
    r = registry()   # a restart reads the same database
    assert r.aliases == {"default": "v3", "candidate": "v2"}
    assert [e.enabled for e in r.entries.values()] == [True, False, True]
    assert r.entries["v2"].worker.disabled


def test_server_runs_on_postgres(pg_url, tiny_tokenizer, tmp_path):
    """`gptlab serve --db postgresql+psycopg://...`: keys checked and the registry kept in
    PostgreSQL, with the official openai client."""
    import openai
    from serve_fixtures import save_tiny_chat_model, start_server
    from sqlalchemy import text

    from gptlab.serve.keys import KeyStore

    token = KeyStore(FeedbackStore(pg_url)).create("client")[0]
    model = save_tiny_chat_model(tmp_path / "tiny", tiny_tokenizer)
    url, stop = start_server(tmp_path, models=[f"tiny={model}"], db=pg_url, auth="on")
    try:
        c = openai.OpenAI(base_url=url + "/v1", api_key=token, max_retries=0, timeout=60)
        r = c.chat.completions.create(model="default", max_tokens=3,
                                      messages=[{"role": "user", "content": "hi"}])
        assert r.usage.completion_tokens == 3
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=url + "/v1", api_key="sk-gl-wrong", max_retries=0).models.list()
    finally:
        stop()
    with FeedbackStore(pg_url).engine.connect() as conn:
        assert conn.execute(text("SELECT name, enabled FROM serve_models")).all() == [("tiny", True)]
