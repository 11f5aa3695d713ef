"""Keys, rate limits, the registry (aliases, the off switch), the queue bound, client
disconnects and timeouts: a live server with auth on, two model versions, the official
`openai` client and the `gptlab keys` / `gptlab models` commands."""

from __future__ import annotations

import threading
import time

import httpx
import openai
import pytest
from serve_fixtures import save_tiny_chat_model, start_server

from gptlab.cli import main as gptlab_main
from gptlab.feedback import FeedbackStore
from gptlab.serve.keys import KeyStore

USER = [{"role": "user", "content": "hello"}]


@pytest.fixture(scope="module")
def server(tiny_tokenizer, tmp_path_factory):
    root = tmp_path_factory.mktemp("serve-admin")
    a = save_tiny_chat_model(root / "v1", tiny_tokenizer, seed=0)
    b = save_tiny_chat_model(root / "v2", tiny_tokenizer, seed=1)
    long = save_tiny_chat_model(root / "long", tiny_tokenizer, seed=2, max_seq_len=8192,
                                mute_stop_tokens=True)
    db = root / "serve.db"
    keys = KeyStore(FeedbackStore(db))
    tokens = {"user": keys.create("user")[0], "admin": keys.create("ops", admin=True)[0],
              "limited": keys.create("limited", rpm=2)[0], "tpm": keys.create("tpm", tpm=60)[0]}
    url, stop = start_server(root, models=[str(a), f"v2={b}", str(long)], db=str(db), auth="on", max_batch=2,
                             max_queue=1, request_timeout_s=20)
    yield {"url": url, "db": db, "tokens": tokens}
    stop()


def client(server, who="user", **kw):
    return openai.OpenAI(base_url=server["url"] + "/v1", api_key=server["tokens"].get(who, who),
                         max_retries=0, timeout=60, **kw)


def chat(c, **kw):
    kw.setdefault("model", "default")
    return c.chat.completions.create(messages=USER, max_tokens=kw.pop("max_tokens", 4), **kw)


def test_auth_on_rejects_missing_wrong_and_revoked_keys(server, capsys):
    for bad in ("sk-gl-nope", "x"):
        with pytest.raises(openai.AuthenticationError) as e:
            chat(client(server, bad))
        assert e.value.code == "invalid_api_key"
    r = httpx.post(server["url"] + "/v1/chat/completions", json={"model": "default", "messages": USER})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert chat(client(server)).choices[0].message.content is not None

    assert gptlab_main(["keys", "create", "--db", str(server["db"]), "--name", "temp"]) in (0, None)
    token = capsys.readouterr().out.strip().splitlines()[-1]
    assert token.startswith("sk-gl-")
    chat(client(server, token))
    assert gptlab_main(["keys", "revoke", token[:12], "--db", str(server["db"])]) in (0, None)
    with pytest.raises(openai.AuthenticationError):
        chat(client(server, token))
    gptlab_main(["keys", "list", "--db", str(server["db"])])
    listing = capsys.readouterr().out
    assert token[:12] in listing and "revoked" in listing and token not in listing


def test_keys_are_stored_hashed(server):
    import sqlite3

    rows = sqlite3.connect(server["db"]).execute("select prefix, sha256 from api_keys").fetchall()
    stored = " ".join(p + h for p, h in rows)
    assert all(t not in stored for t in server["tokens"].values())


def test_requests_per_minute_limit_gives_429_with_retry_after(server):
    c = client(server, "limited")
    chat(c)
    chat(c)
    with pytest.raises(openai.RateLimitError) as e:
        chat(c)
    assert e.value.code == "rate_limit_exceeded"
    assert 1 <= int(e.value.response.headers["retry-after"]) <= 60


def test_tokens_per_minute_limit(server):
    c = client(server, "tpm")
    chat(c, max_tokens=30)  # ~ 10 prompt + up to 30 completion tokens
    with pytest.raises(openai.RateLimitError):
        for _ in range(4):
            chat(c, max_tokens=30)


def test_registry_aliases_promote_and_off_switch(server, capsys):
    user, admin = client(server), server["tokens"]["admin"]
    ids = {m.id: m.model_extra["aliases"] for m in user.models.list().data}
    assert ids == {"v1": ["default"], "v2": ["candidate"], "long": []}
    assert chat(user, model="candidate").model == "v2"
    # the admin API needs an admin key
    r = httpx.post(server["url"] + "/admin/models/v2/disable",
                   headers={"Authorization": f"Bearer {server['tokens']['user']}"})
    assert r.status_code == 403
    assert gptlab_main(["models", "disable", "v2", "--url", server["url"], "--key", admin]) in (0, None)
    with pytest.raises(openai.NotFoundError) as e:
        chat(user, model="v2")
    assert e.value.code == "model_disabled" and "disabled" in e.value.message
    with pytest.raises(openai.NotFoundError):
        chat(user, model="candidate")
    assert [m.id for m in user.models.list().data] == ["v1", "long"]
    gptlab_main(["models", "enable", "v2", "--url", server["url"], "--key", admin])
    gptlab_main(["models", "promote", "v2", "--alias", "default", "--url", server["url"], "--key", admin])
    assert chat(user).model == "v2"
    gptlab_main(["models", "list", "--url", server["url"], "--key", admin])
    out = capsys.readouterr().out
    assert "v2" in out and "candidate,default" in out
    gptlab_main(["models", "promote", "v1", "--alias", "default", "--url", server["url"], "--key", admin])
    assert gptlab_main(["models", "list", "--url", server["url"], "--key", "wrong"]) == 2


def _active(server) -> int:
    h = httpx.get(server["url"] + "/health").json()
    return sum(m["active_rows"] + m["queued"] for m in h["models"].values())


def test_disable_ends_requests_in_flight(server):
    admin = {"Authorization": f"Bearer {server['tokens']['admin']}"}
    result = {}

    def long_request():
        try:
            chat(client(server), model="long", max_tokens=8000, temperature=0)
        except openai.APIStatusError as exc:
            result["status"] = exc.status_code

    t = threading.Thread(target=long_request)
    t.start()
    deadline = time.time() + 20
    while _active(server) == 0 and time.time() < deadline:
        time.sleep(0.005)
    httpx.post(server["url"] + "/admin/models/long/disable", headers=admin)
    t.join(30)
    httpx.post(server["url"] + "/admin/models/long/enable", headers=admin)
    assert result == {"status": 404}


def test_full_queue_is_429_with_retry_after(server):
    """max_batch=2, max_queue=1: of 10 simultaneous long requests at most 4 fit (2 decoding,
    1 at the head of the queue, 1 queued); the others are refused at once."""
    c = client(server)
    results = []

    def one():
        try:
            results.append(chat(c, model="v1", max_tokens=400, temperature=0).usage.completion_tokens)
        except openai.RateLimitError as exc:
            results.append(exc)

    threads = [threading.Thread(target=one) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    refused = [r for r in results if isinstance(r, Exception)]
    assert len(results) == 10 and 6 <= len(refused) <= 8
    assert all(e.code == "queue_full" and int(e.response.headers["retry-after"]) >= 1 for e in refused)
    assert _active(server) == 0


def test_client_disconnect_drops_the_sequence(server):
    """A stream of 8000 tokens is closed after its first chunk; the worker must drop it long
    before it could have finished (its decode-step counter tells)."""
    c = client(server)
    steps0 = httpx.get(server["url"] + "/health").json()["models"]["long"]["steps"]
    stream = chat(c, model="long", max_tokens=8000, temperature=0, stream=True)
    next(iter(stream))
    stream.close()
    deadline = time.time() + 20
    while _active(server) and time.time() < deadline:
        time.sleep(0.005)
    steps = httpx.get(server["url"] + "/health").json()["models"]["long"]["steps"] - steps0
    assert _active(server) == 0 and steps < 4000


def test_request_timeout_is_an_openai_error(tiny_tokenizer, tmp_path):
    url, stop = start_server(tmp_path, tokenizer_dir=tiny_tokenizer, request_timeout_s=0.0)
    try:
        c = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
        with pytest.raises(openai.APIStatusError) as e:
            chat(c, max_tokens=50)
        assert e.value.status_code == 408 and e.value.code == "timeout"
    finally:
        stop()


def test_auth_defaults_on_off_the_loopback():
    from gptlab.serve import ServeSettings

    assert not ServeSettings(host="127.0.0.1").auth_enabled()
    assert not ServeSettings(host="localhost").auth_enabled()
    assert ServeSettings(host="0.0.0.0").auth_enabled()
    assert ServeSettings(host="192.168.1.5").auth_enabled()
    assert not ServeSettings(host="0.0.0.0", auth="off").auth_enabled()
    with pytest.raises(ValueError):
        ServeSettings(moderate="input").moderate_mode()  # needs --moderation DIR


def test_serve_command_reports_a_missing_model_in_one_line(tmp_path, capsys):
    rc = gptlab_main(["serve", "--model", str(tmp_path / "nope"), "--db", str(tmp_path / "s.db")])
    err = capsys.readouterr().err
    assert rc == 2 and "nope" in err and "Traceback" not in err


def test_a_key_check_does_not_wait_for_a_writer(tmp_path):
    """Every request checks its key: with SQLite that read must not queue behind the write
    lock (a feedback import, a vote), as a BEGIN IMMEDIATE transaction would."""
    import sqlite3

    db = tmp_path / "serve.db"
    keys = KeyStore(FeedbackStore(db))
    token = keys.create("reader")[0]
    writer = sqlite3.connect(db, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")   # another process holds the write lock
    try:
        result = {}
        t = threading.Thread(target=lambda: result.update(record=keys.verify(token)), daemon=True)
        t.start()
        t.join(10)   # a check that waited for the lock would sit out the 60 s busy timeout
        assert not t.is_alive() and result["record"]["name"] == "reader"
    finally:
        writer.execute("ROLLBACK")
        writer.close()
