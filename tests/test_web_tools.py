"""Tools in the web chat, and the operator's switch that allows them (`--enable-tools`).

Against a real server on loopback (a tiny random-weight chat model): tools are off unless the
operator names them (the run endpoint refuses, the page shows no toggle); an enabled tool
runs with valid arguments and returns its result; bad arguments, an unknown or disabled
tool and a bad Host come back as clear tool errors or refusals, never 500s. In Chromium:
a scripted model reply calls two tools; the page shows both calls, runs nothing until the
person answers, runs the one they Run on the server, tells the model the other was
skipped, and sends both results back; the real model's answer then streams. A model that
calls a tool in every reply is stopped after three rounds.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from gptlab.serve import ServeSettings, create_app
from gptlab.serve.web_tools import MAX_ARGUMENT_CHARS, load_server_tools
from test_web import CHROMIUM, CHROMIUM_ARGS, _sign_in

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny matmuls on one thread

USER = {"X-Gptlab-User": "tester"}
DECLINED = '{"error": "the user declined to run this call"}'   # static/app.js
KB = {"countries": [{"code": "FR", "name": "France", "name_zh": "法国", "aliases": ["French Republic"],
                     "capital": "Paris", "continent": "Europe", "population": 66987244, "area_km2": 547030,
                     "currency_name": "Euro", "currency_code": "EUR", "languages": ["French"],
                     "neighbours": [], "largest_city": "Paris"}],
      "cities": [{"name": "Paris", "country": "FR", "population": 2138551}]}


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """A miniworld directory holding only the kb.json the lookup reads."""
    out = tmp_path_factory.mktemp("world")
    (out / "kb.json").write_text(json.dumps(KB), encoding="utf-8")
    return out


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_tokenizer) -> Path:
    # a long context: the tools' definitions alone take hundreds of tokens of a 384-token BPE
    from serve_fixtures import save_tiny_chat_model
    return save_tiny_chat_model(tmp_path_factory.mktemp("tools-model") / "m", tiny_tokenizer,
                                max_seq_len=4096)


@pytest.fixture(scope="module")
def plain_server(tmp_path_factory, model_dir):
    """A server started without --enable-tools."""
    from serve_fixtures import start_server
    base_url, stop = start_server(tmp_path_factory.mktemp("plain"), models=[str(model_dir)])
    yield base_url
    stop()


@pytest.fixture(scope="module")
def tools_server(tmp_path_factory, model_dir, world):
    """A server whose operator enabled the lookup and the calculator (not python)."""
    from serve_fixtures import start_server
    base_url, stop = start_server(tmp_path_factory.mktemp("tools"), models=[str(model_dir)],
                                  enable_tools="lookup,calculator", world=str(world))
    yield base_url
    stop()


def _run(base_url, name, arguments, headers=USER) -> httpx.Response:
    return httpx.post(base_url + "/api/tools/run", json={"name": name, "arguments": arguments},
                      headers=headers, timeout=30)


# ----------------------------------------------------------------------------- the operator's switch


@pytest.mark.parametrize("tools, world, error", [
    ("lookup,weather", None, "unknown tool 'weather'; built-in tools: lookup, calculator, python"),
    ("lookup", None, "--enable-tools lookup needs --world DIR"),
    ("calculator", "somewhere", "--world is read only by the lookup tool"),
    (None, "somewhere", "--world is read only by the lookup tool"),
    (" , ", None, "names no tool"),
])
def test_bad_tool_settings_fail_at_start_up_with_a_clear_error(tmp_path, tools, world, error):
    settings = ServeSettings(models=[str(tmp_path / "no-such-model")], db=str(tmp_path / "db"),
                             enable_tools=tools, world=world)
    with pytest.raises(ValueError) as info:
        create_app(settings)   # fails on the tools, before it tries to load the (missing) model
    assert error in str(info.value)


def test_a_world_without_kb_json_fails_at_start_up(tmp_path):
    with pytest.raises(FileNotFoundError, match="no kb.json"):
        load_server_tools(ServeSettings(enable_tools="lookup", world=str(tmp_path)))


def test_tools_are_off_by_default(plain_server):
    assert ServeSettings().enable_tools is None
    listed = httpx.get(plain_server + "/api/tools", headers=USER)
    assert listed.status_code == 200 and listed.json() == {"tools": []}
    refused = _run(plain_server, "calculator", {"expression": "1 + 1"})
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "tools_disabled"
    assert "--enable-tools" in refused.json()["error"]["message"]


# ----------------------------------------------------------------------------- the run endpoint


def test_enabled_tools_are_listed_and_run(tools_server):
    listed = httpx.get(tools_server + "/api/tools", headers=USER).json()["tools"]
    assert [t["function"]["name"] for t in listed] == ["lookup", "calculator"]
    calc = _run(tools_server, "calculator", json.dumps({"expression": "(12 + 3) * 4"}))  # the API's JSON text
    assert calc.status_code == 200
    assert calc.json() == {"name": "calculator", "ok": True, "content": '{"result": "60"}'}
    fact = _run(tools_server, "lookup", {"entity": "french republic", "relation": "population"}).json()
    assert fact["ok"] and json.loads(fact["content"]) == {"entity": "France", "relation": "population",
                                                          "value": 66987244, "unit": "people"}


@pytest.mark.parametrize("name, arguments, error", [
    ("calculator", {"expr": "1 + 1"}, "missing argument(s) expression; unknown argument(s) expr"),
    ("calculator", "{not json", "arguments are not valid JSON"),
    ("calculator", {"expression": "__import__('os')"}, "only numbers, + - * / ** and parentheses"),
    ("lookup", {"entity": "Atlantis", "relation": "capital"}, "no country or city named 'Atlantis'"),
    ("lookup", {"entity": "France", "relation": "anthem"}, "relation must be one of"),
    ("weather", {"city": "Paris"}, "no tool named 'weather'"),
    ("python", {"code": "print(1)"}, "no tool named 'python'"),     # built in, but not enabled here
    ("calculator", {"expression": "1" * (MAX_ARGUMENT_CHARS + 1)}, "arguments are longer than"),
])
def test_bad_calls_are_tool_errors_not_http_errors(tools_server, name, arguments, error):
    r = _run(tools_server, name, arguments)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["ok"] is False
    assert error in json.loads(body["content"])["error"]


def test_the_python_tool_runs_in_the_sandbox_when_enabled():
    import asyncio

    from gptlab.serve.web_tools import ServerTools

    tools = ServerTools(["python"])

    async def calls():
        return await asyncio.gather(tools.run("python", {"code": "print(6 * 7)"}),
                                    tools.run("python", {"code": "import socket; socket.socket()"}))

    printed, refused = asyncio.run(calls())
    assert (printed.ok, printed.content) == (True, "42\n")
    assert not refused.ok and "socket" in json.loads(refused.content)["error"]   # the sandbox's audit hook


def test_the_run_endpoint_needs_the_user_and_an_address_as_host(tools_server):
    assert _run(tools_server, "calculator", {"expression": "1"}, headers={}).status_code == 400
    rebound = _run(tools_server, "calculator", {"expression": "1"},
                   headers={**USER, "Host": "evil.example"})   # a DNS-rebinding page's request
    assert rebound.status_code == 403 and rebound.json()["error"]["code"] == "tools_host_refused"
    assert _run(tools_server, "calculator", {"expression": "2 * 3"},
                headers={**USER, "Host": "localhost"}).json()["content"] == '{"result": "6"}'


def test_fit_counts_the_tool_definitions_and_keeps_tool_turns(tools_server):
    tools = httpx.get(tools_server + "/api/tools", headers=USER).json()["tools"]
    model = httpx.get(tools_server + "/v1/models").json()["data"][0]["id"]
    call = {"id": "call_1", "type": "function",
            "function": {"name": "calculator", "arguments": '{"expression": "2 + 2"}'}}
    messages = [{"role": "user", "content": "what is 2 + 2?"},
                {"role": "assistant", "content": "", "tool_calls": [call]},
                {"role": "tool", "tool_call_id": "call_1", "content": '{"result": "4"}'}]

    def fit(**extra):
        r = httpx.post(tools_server + "/api/fit", headers=USER,
                       json={"model": model, "messages": messages, "reply_tokens": 8, **extra})
        assert r.status_code == 200, r.text
        return r.json()

    plain, with_tools = fit(), fit(tools=tools)
    assert plain["dropped"] == with_tools["dropped"] == 0
    assert with_tools["prompt_tokens"] > plain["prompt_tokens"] + 50   # the definitions are in the prompt
    bad = httpx.post(tools_server + "/api/fit", headers=USER,
                     json={"model": model, "messages": messages, "tools": [{"type": "nope"}]})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "tools[0]"


def test_a_rating_after_tool_calls_stores_the_tool_turns(tools_server, tmp_path):
    call = {"id": "call_9", "type": "function",
            "function": {"name": "lookup", "arguments": '{"entity": "France", "relation": "capital"}'}}
    prompt = [{"role": "user", "content": "capital of France?"},
              {"role": "assistant", "content": "", "tool_calls": [call]},
              {"role": "tool", "tool_call_id": "call_9", "content": '{"value": "Paris"}'}]
    r = httpx.post(tools_server + "/api/rate", headers=USER,
                   json={"messages": prompt, "response": "Paris.", "value": 1})
    assert r.status_code == 200, r.text
    saved = httpx.post(tools_server + "/api/conversations", headers=USER,
                       json={"messages": prompt + [{"role": "assistant", "content": "Paris."}]})
    assert saved.status_code == 200, saved.text
    stored = httpx.get(tools_server + "/api/conversations/" + saved.json()["id"], headers=USER).json()
    assert [m["role"] for m in stored["messages"]] == ["user", "assistant", "tool", "assistant"]


# ----------------------------------------------------------------------------- the page


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


def _open(browser, base_url):
    context = browser.new_context(viewport={"width": 1280, "height": 820})
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(base_url + "/")
    _sign_in(page)
    return context, page, errors


def test_the_page_shows_no_tools_toggle_when_tools_are_off(browser, plain_server):
    context, page, errors = _open(browser, plain_server)
    try:
        assert page.evaluate("() => window.gptlab.state.tools") == []
        assert not page.is_visible("#tools-label")
        assert not errors
    finally:
        context.close()


def _sse(chunks) -> str:
    return "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"


CALLS = [{"id": "call_run", "type": "function",
          "function": {"name": "calculator", "arguments": '{"expression": "(12 + 3) * 4"}'}},
         {"id": "call_skip", "type": "function",
          "function": {"name": "lookup", "arguments": '{"entity": "France", "relation": "population"}'}}]
SCRIPTED = _sse([  # what a model that calls two tools streams (gptlab's shape: each call whole)
    {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]},
    {"choices": [{"index": 0, "delta": {"content": "Let me check."}, "finish_reason": None}]},
    *({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": k, **c}]}, "finish_reason": None}]}
      for k, c in enumerate(CALLS)),
    {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}])


def test_the_page_shows_each_call_and_runs_it_only_when_confirmed(browser, tools_server):
    context, page, errors = _open(browser, tools_server)
    chat_bodies, runs = [], []

    def chat_route(route):   # the first reply is scripted, the one after the tools is the model's
        chat_bodies.append(json.loads(route.request.post_data))
        if len(chat_bodies) == 1:
            route.fulfill(status=200, headers={"Content-Type": "text/event-stream"}, body=SCRIPTED)
        else:
            route.continue_()

    page.route("**/v1/chat/completions", chat_route)
    page.on("request", lambda r: runs.append(json.loads(r.post_data)) if r.url.endswith("/api/tools/run") else None)
    try:
        assert page.is_visible("#tools-label") and not page.is_checked("#tools-toggle")   # opt-in
        assert page.inner_text("#tools-names") == "(lookup, calculator)"
        page.check("#tools-toggle")
        page.fill("#max-tokens", "8")
        page.fill("#input", "What is (12 + 3) * 4, and how many people live in France?")
        page.press("#input", "Enter")

        # Both calls are shown; the first waits for the person and nothing has run.
        page.wait_for_selector(".tool-call[data-call-id='call_run'] .tool-run")
        assert [t["function"]["name"] for t in chat_bodies[0]["tools"]] == ["lookup", "calculator"]
        cards = page.locator(".tool-call")
        assert cards.count() == 2
        assert cards.nth(0).locator(".tool-head").text_content() == "Tool call: calculator"
        assert json.loads(cards.nth(0).locator(".tool-args").text_content()) == {"expression": "(12 + 3) * 4"}
        assert cards.nth(1).locator(".tool-head").text_content() == "Tool call: lookup"
        assert json.loads(cards.nth(1).locator(".tool-args").text_content()) == {"entity": "France",
                                                                               "relation": "population"}
        assert cards.nth(1).locator(".tool-run").count() == 0   # one call waits at a time
        assert page.inner_text("#hint") == "Run or skip the tool call to continue."
        page.wait_for_timeout(300)
        assert runs == [] and len(chat_bodies) == 1

        with page.expect_response(lambda r: r.url.endswith("/api/tools/run")):
            page.click(".tool-call[data-call-id='call_run'] .tool-run")
        page.wait_for_selector(".tool-call[data-call-id='call_skip'] .tool-skip")
        assert runs == [{"name": "calculator", "arguments": '{"expression": "(12 + 3) * 4"}'}]
        assert '{"result": "60"}' in page.inner_text(".tool-call[data-call-id='call_run'] .tool-result")
        page.click(".tool-call[data-call-id='call_skip'] .tool-skip")
        page.wait_for_function("() => !window.gptlab.state.busy")

        # The skipped call never reached the server; the model got both results back.
        assert len(runs) == 1 and len(chat_bodies) == 2
        assert "Skipped" in page.inner_text(".tool-call[data-call-id='call_skip'] .tool-result")
        sent = chat_bodies[1]["messages"]
        assert sent[-3] == {"role": "assistant", "content": "Let me check.", "tool_calls": CALLS}
        assert sent[-2:] == [{"role": "tool", "content": '{"result": "60"}', "tool_call_id": "call_run"},
                             {"role": "tool", "content": DECLINED, "tool_call_id": "call_skip"}]
        assert chat_bodies[1]["tools"] == chat_bodies[0]["tools"]

        # The model's own answer streamed in, and the chat (tool turns included) was saved.
        conv = page.evaluate("() => window.gptlab.state.conv.messages")
        assert [m["role"] for m in conv] == ["user", "assistant", "tool", "tool", "assistant"]
        assert conv[-1]["model"] and conv[-1]["finish"] in ("stop", "length") and "tool_calls" not in conv[-1]
        assert page.locator(".msg.assistant").last.locator(".actions").count() == 1   # thumbs on the answer
        assert not errors, errors
    finally:
        context.close()


def test_the_tool_loop_stops_after_three_rounds(browser, tools_server):
    """A model that calls a tool in every reply: three rounds run (here: skipped), the calls of
    a fourth reply are not offered, and the reply says why."""
    context, page, errors = _open(browser, tools_server)
    replies = []

    def chat_route(route):   # every reply calls the calculator again, with a fresh call id
        replies.append(json.loads(route.request.post_data))
        call = {**CALLS[0], "id": f"call_{len(replies)}"}
        route.fulfill(status=200, headers={"Content-Type": "text/event-stream"}, body=_sse([
            {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, **call}]}, "finish_reason": None}]},
            {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}]))

    page.route("**/v1/chat/completions", chat_route)
    try:
        page.check("#tools-toggle")
        page.fill("#input", "Keep calculating.")
        page.press("#input", "Enter")
        for k in (1, 2, 3):
            page.click(f".tool-call[data-call-id='call_{k}'] .tool-skip")
        page.wait_for_function("() => !window.gptlab.state.busy")
        assert len(replies) == 4 and page.locator(".tool-call").count() == 3
        conv = page.evaluate("() => window.gptlab.state.conv.messages")
        assert [m["role"] for m in conv] == ["user"] + ["assistant", "tool"] * 3 + ["assistant"]
        assert conv[-1]["finish"] == "tool_limit" and "tool_calls" not in conv[-1]
        assert "stopped after 3 rounds of tool calls" in page.locator(".msg.assistant .tag").last.text_content()
        assert not errors, errors
    finally:
        context.close()
