"""The web chat, driven in a real browser (Debian's Chromium through Playwright) against a
real server on loopback with a tiny random-weight chat model and an SQLite feedback store.

The model's replies are gibberish but deterministic at temperature 0, so every reply the
page shows must equal the reply the official ``openai`` client gets for the conversation the
page should have sent (with the system message and custom instructions folded in). The
A/B vote and the thumbs must land in the feedback store as a human comparison and a rating.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
STATIC = Path(__file__).resolve().parents[1] / "gptlab" / "serve" / "static"


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny matmuls on one thread


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_tokenizer):
    """(base_url, db_path) of a live server with the web routes."""
    from serve_fixtures import start_server
    tmp = tmp_path_factory.mktemp("web")
    base_url, stop = start_server(tmp, tokenizer_dir=tiny_tokenizer)
    yield base_url, tmp / "serve.db"
    stop()


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():   # only the browser tests need it
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture
def page(browser, server):
    context = browser.new_context(viewport={"width": 1280, "height": 820})
    pg = context.new_page()
    errors = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.goto(server[0] + "/")
    yield pg
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def _client(base_url):
    import openai
    return openai.OpenAI(base_url=base_url + "/v1", api_key="unused", max_retries=0)


def _model_id(base_url) -> str:
    return _client(base_url).models.list().data[0].id


def _reference(base_url, messages, max_tokens) -> str:
    """The greedy reply to `messages` through the official client, not streamed."""
    out = _client(base_url).chat.completions.create(model=_model_id(base_url), messages=messages,
                                                    temperature=0, max_tokens=max_tokens)
    return out.choices[0].message.content


def _sign_in(page, name="tester"):
    page.wait_for_selector("#login[open]")
    page.fill("#user-name", name)
    page.click("#login-go")
    page.wait_for_selector("body[data-ready='1']")


def _set_sampling(page, temperature: float, max_tokens: int):
    page.eval_on_selector("#temperature", "(el, t) => { el.value = t; el.dispatchEvent(new Event('input')); }",
                          str(temperature))
    page.fill("#max-tokens", str(max_tokens))


def _send(page, text: str) -> dict:
    """Type `text`, press Enter, wait for the streamed reply; returns the request body the page
    sent and the SSE chunks it received."""
    with page.expect_response(lambda r: r.url.endswith("/v1/chat/completions")) as resp_info:
        page.fill("#input", text)
        page.press("#input", "Enter")
    resp = resp_info.value
    page.wait_for_function("() => !window.gptlab.state.busy")
    events = [line[5:].strip() for line in resp.text().splitlines() if line.startswith("data:")]
    return {"request": json.loads(resp.request.post_data), "events": events,
            "content_type": resp.headers.get("content-type", "")}


def _rated_prompt(db) -> list[dict]:
    """The prompt of the response the last rating is on."""
    from gptlab.feedback import FeedbackStore, Prompt, Response
    store = FeedbackStore(db)
    response_id = store.ratings()[-1]["response_id"]
    with store.Session() as s:   # (no other store call inside: SQLite has one writer)
        response = s.get(Response, response_id)
        return s.get(Prompt, response.prompt_id).messages


def _conversation(page) -> dict:
    return page.evaluate("""async () => {
        const s = window.gptlab.state;
        const r = await fetch('api/conversations/' + s.conv.id, {headers: {'X-Gptlab-User': s.user}});
        return r.json();
    }""")


def test_chat_streams_keeps_history_and_applies_system_and_custom_instructions(page, server):
    base_url, _ = server
    _sign_in(page)
    _set_sampling(page, 0, 16)

    first = _send(page, "where does alice live?")
    assert first["content_type"].startswith("text/event-stream")
    assert first["events"][-1] == "[DONE]"
    deltas = [c["choices"][0]["delta"].get("content") or "" for c in map(json.loads, first["events"][:-1])
              if c.get("choices")]
    # (how many pieces depends on timing: the server merges deltas a busy reader has not taken
    # yet, see gptlab.serve.jobs.events, so a loaded machine may get the 16 tokens in one)
    assert any(deltas), f"the stream carried no text: {first['events']}"
    reply = "".join(deltas)
    assert first["request"]["stream"] is True and first["request"]["messages"] == [
        {"role": "user", "content": "where does alice live?"}]
    assert reply == _reference(base_url, first["request"]["messages"], 16)
    bubble = page.locator(".msg.assistant .body").last
    assert bubble.inner_text().strip(), "the reply is not shown"

    # a system message for this chat + saved custom instructions -> one system turn, first
    page.fill("#system", "Answer in one word.")
    page.fill("#custom", "I am a geography student.")
    with page.expect_response(lambda r: "/api/settings" in r.url and r.request.method == "PUT"):
        page.click("#save-custom")
    second = _send(page, "and bruno?")
    sent = second["request"]["messages"]
    assert sent[0] == {"role": "system", "content": "Answer in one word.\n\nI am a geography student."}
    assert [m["role"] for m in sent] == ["system", "user", "assistant", "user"]
    assert sent[2]["content"] == reply                       # history goes back to the model
    reply2 = "".join((json.loads(e)["choices"] or [{}])[0].get("delta", {}).get("content") or ""
                     for e in second["events"][:-1])
    assert reply2 == _reference(base_url, sent, 16)

    # thumbs up on the first reply: its prompt is what the model saw then (no system message yet)
    page.click(".msg.assistant >> nth=0 >> button[title='Good answer']")
    page.wait_for_selector(".msg.assistant >> nth=0 >> button[title='Good answer'].active")
    rated = _rated_prompt(server[1])
    assert rated == [{"role": "user", "content": "where does alice live?"}]

    saved = _conversation(page)
    assert saved["system"] == "Answer in one word."
    assert [m["content"] for m in saved["messages"]] == ["where does alice live?", reply, "and bruno?", reply2]
    assert saved["title"].startswith("where does alice live")

    # regenerate replaces the last reply (greedy: the same text again) without a new user turn
    with page.expect_response(lambda r: r.url.endswith("/v1/chat/completions")):
        page.click(".msg.assistant >> nth=-1 >> button[title=Regenerate]")
    page.wait_for_function("() => !window.gptlab.state.busy && window.gptlab.state.conv.messages.length === 4")
    assert page.evaluate("window.gptlab.state.conv.messages[3].content") == reply2

    # a reload keeps the user (localStorage) and the history (database)
    page.reload()
    page.wait_for_selector("body[data-ready='1']")
    assert page.input_value("#custom") == "I am a geography student."
    page.click(".conv-open >> text=where does alice live")
    page.wait_for_selector(".msg.assistant >> nth=1")
    assert page.locator(".msg.user").count() == 2
    assert page.input_value("#system") == "Answer in one word."


def test_ab_vote_and_thumbs_land_in_the_feedback_store(page, server):
    from gptlab.feedback import FeedbackStore

    base_url, db = server
    _sign_in(page, "rater-ab")
    _set_sampling(page, 0, 12)
    page.fill("#system", "Be brief.")
    page.check("#ab-toggle")
    turn = _send(page, "what does chen eat?")
    assert turn["request"]["n"] == 2 and turn["request"]["temperature"] > 0   # two different samples
    page.wait_for_selector(".ab-pair.pending .ab-vote button")
    assert page.locator("#input").is_disabled()            # vote first
    answers = page.evaluate("window.gptlab.state.pending.answers.map(a => a.text)")
    assert len(answers) == 2 and all(answers) and answers[0] != answers[1], answers
    before = len(FeedbackStore(db).comparisons())
    page.click(".ab-vote button[data-winner=b]")
    page.wait_for_selector(".ab-pair.voted")

    votes = FeedbackStore(db).comparisons()
    assert len(votes) == before + 1
    vote = votes[-1]
    assert (vote["chosen"], vote["rejected"]) == (answers[1], answers[0])
    assert vote["rater"] == "addr:127.0.0.1" and vote["kind"] == "human"   # who sent it, not the typed name
    assert vote["prompt"] == [{"role": "system", "content": "Be brief."},
                              {"role": "user", "content": "what does chen eat?"}]
    # the chosen answer continues the chat
    assert page.evaluate("window.gptlab.state.conv.messages.at(-1).content") == answers[1]
    assert not page.locator("#input").is_disabled()

    # thumbs down on the voted reply: a rating of -1 on the response the vote stored
    prompts = FeedbackStore(db).counts()["prompts"]
    page.click(".ab-pair.voted button[title='Bad answer']")
    page.wait_for_selector(".ab-pair.voted button[title='Bad answer'].active")
    ratings = FeedbackStore(db).ratings()
    assert ratings[-1]["value"] == -1 and ratings[-1]["rater"] == "addr:127.0.0.1"
    with FeedbackStore(db).Session() as s:
        from gptlab.feedback import Response
        assert s.get(Response, ratings[-1]["response_id"]).text == answers[1]
    assert FeedbackStore(db).counts()["prompts"] == prompts     # no second copy of the prompt


def test_markdown_is_rendered_highlighted_and_sanitized(page):
    _sign_in(page, "李 md")                                   # any script: the header is %-encoded
    assert page.inner_text("#who-name") == "李 md"
    html = page.evaluate("""() => window.gptlab.renderMarkdown(
        "**bold** <img src=x onerror=\\"window.pwned=1\\"> <script>window.pwned=2</script>\\n\\n" +
        "[x](javascript:window.pwned=3)\\n\\n```python\\ndef f(x):\\n    return x\\n```").innerHTML""")
    assert "<strong>bold</strong>" in html
    assert "<img" not in html and "<script" not in html and "javascript:" not in html
    assert "&lt;img" in html                                  # raw HTML is shown as text
    assert 'class="hljs-keyword"' in html                      # code is highlighted
    assert page.evaluate("window.pwned === undefined")

    # Shift+Enter is a new line, not a send
    page.fill("#input", "line one")
    page.press("#input", "Shift+Enter")
    page.type("#input", "line two")
    assert page.input_value("#input") == "line one\nline two"
    assert page.evaluate("window.gptlab.state.conv.messages.length") == 0


def test_api_errors_are_shown_and_retry_recovers(page):
    _sign_in(page, "err")
    _set_sampling(page, 0, 8)
    good = page.input_value("#model")
    page.eval_on_selector("#model", "el => { el.append(new Option('no-such-model')); el.value = 'no-such-model'; }")
    page.fill("#input", "hello?")
    page.press("#input", "Enter")
    page.wait_for_selector("#error:not([hidden])")
    assert "no-such-model" in page.inner_text("#error")       # the server's OpenAI-shaped message
    assert page.locator(".msg.assistant").count() == 0
    page.select_option("#model", good)
    page.click("button[title=Retry]")
    page.wait_for_selector(".msg.assistant .actions")
    assert [m["role"] for m in page.evaluate("window.gptlab.state.conv.messages")] == ["user", "assistant"]


def test_web_api_validates_and_scopes_by_user(server):
    import httpx

    base_url, _ = server
    with httpx.Client(base_url=base_url) as http:
        r = http.get("/api/conversations")
        assert r.status_code == 400 and "X-Gptlab-User" in r.json()["error"]["message"]
        saved = http.post("/api/conversations", headers={"X-Gptlab-User": "ann"},
                          json={"messages": [{"role": "user", "content": "hi"}]}).json()
        assert saved["title"] == "hi"
        other = http.get(f"/api/conversations/{saved['id']}", headers={"X-Gptlab-User": "bob"})
        assert other.status_code == 404 and other.json()["error"]["param"] == "id"
        assert http.get("/api/conversations", headers={"X-Gptlab-User": "bob"}).json()["data"] == []
        bad = http.post("/api/compare", headers={"X-Gptlab-User": "ann"}, json={
            "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
            "a": {"text": "x"}, "b": {"text": "y"}, "winner": "a"})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "messages"
        tie = http.post("/api/compare", headers={"X-Gptlab-User": "ann"}, json={
            "messages": [{"role": "user", "content": "q"}], "a": {"text": "x"}, "b": {"text": "y"},
            "winner": "tie"}).json()
        assert tie["comparison_id"] is None and len(tie["response_ids"]) == 2
        for raw, param in [('{"messages": [{"role": "user", "content": "\\ud800"}]}', "messages[0].content"),
                           ('{"messages": [], "settings": {"temperature": NaN}}', "settings.temperature")]:
            r = http.post("/api/conversations", content=raw, headers={"X-Gptlab-User": "ann",
                                                                      "content-type": "application/json"})
            assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text
        page = http.get("/")
        assert page.status_code == 200 and "app.js" in page.text
        assert http.get("/static/vendor/marked.umd.js").status_code == 200


def test_vendored_assets_are_local_and_licensed():
    html = (STATIC / "index.html").read_text()
    assert "http://" not in html and "https://" not in html    # no CDN: works offline
    vendor = {p.name for p in (STATIC / "vendor").iterdir()}
    for lib in ("marked", "dompurify", "highlightjs"):
        assert f"LICENSE.{lib}" in vendor


def test_auth_on_the_page_api_needs_a_key_and_history_is_per_key(tmp_path, tiny_tokenizer):
    import httpx

    from gptlab.feedback import FeedbackStore
    from gptlab.serve.keys import KeyStore
    from serve_fixtures import start_server

    base_url, stop = start_server(tmp_path, tokenizer_dir=tiny_tokenizer, auth="on")
    try:
        keys = KeyStore(FeedbackStore(tmp_path / "serve.db"))
        (k1, _), (k2, _) = keys.create(name="one"), keys.create(name="two")
        with httpx.Client(base_url=base_url) as http:
            same_name = {"X-Gptlab-User": "sam"}
            r = http.get("/api/conversations", headers=same_name)
            assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
            assert http.get("/").status_code == 200               # the page itself is public
            saved = http.post("/api/conversations", json={"messages": []},
                              headers={**same_name, "Authorization": f"Bearer {k1}"})
            assert saved.status_code == 200
            mine = http.get("/api/conversations", headers={**same_name, "Authorization": f"Bearer {k1}"})
            theirs = http.get("/api/conversations", headers={**same_name, "Authorization": f"Bearer {k2}"})
            assert [c["id"] for c in mine.json()["data"]] == [saved.json()["id"]]
            assert theirs.json()["data"] == []
    finally:
        stop()
