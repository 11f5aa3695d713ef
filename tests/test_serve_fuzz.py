"""Fuzzing the live server from its own OpenAPI schema (schemathesis + hypothesis): no input
may cause a 5xx, and every client error has OpenAI's error body. The model has a 64-token
context, so any request the schema allows stays small; examples are bounded per operation."""

from __future__ import annotations

import json

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from serve_fixtures import save_tiny_chat_model, start_server


@pytest.fixture(scope="module")
def live(tiny_tokenizer, tmp_path_factory):
    root = tmp_path_factory.mktemp("serve-fuzz")
    model = save_tiny_chat_model(root / "tiny", tiny_tokenizer, max_seq_len=64)
    url, stop = start_server(root, models=[str(model)], max_batch=4, max_body_bytes=200_000)
    yield url
    stop()


def _check(response) -> None:
    assert response.status_code < 500, response.text[:500]
    if response.status_code >= 400:
        err = response.json()["error"]
        assert {"message", "type", "param", "code"} <= set(err)


@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_no_server_errors_from_schema_cases(live, mode):
    """Cases drawn from /openapi.json over every operation: valid ones (positive) and ones
    that break the schema (negative)."""
    schema = schemathesis.openapi.from_url(live + "/openapi.json")
    # this server's API (the web UI's /api routes have their own tests); no admin writes,
    # which could switch the only model off
    schema = schema.include(path_regex=r"^/(v1/|health$|metrics$|admin/models$)")
    seen = []

    @given(case=schema.as_strategy(generation_mode=schemathesis.GenerationMode(mode)))
    @settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
    def run(case):
        if mode == "positive" and isinstance(case.body, dict) and isinstance(case.body.get("model"), str):
            case.body["model"] = "default"  # a real model, so that valid cases reach the engine
        response = case.call(base_url=live, timeout=30)
        seen.append((case.operation.label, response.status_code))
        _check(response)

    run()
    assert len({op for op, _ in seen}) >= 4  # the cases covered the generating operations
    if mode == "negative":
        assert any(400 <= code < 500 for _, code in seen)


@given(body=st.binary(max_size=300))
@settings(max_examples=20, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
def test_random_bytes_are_400(live, body):
    r = httpx.post(live + "/v1/chat/completions", content=body, headers={"content-type": "application/json"})
    _check(r)
    assert r.status_code == 400


@given(max_tokens=st.one_of(st.integers(), st.floats(allow_nan=True), st.text(max_size=5), st.none()),
       messages=st.one_of(st.just([]), st.lists(st.fixed_dictionaries(
           {"role": st.sampled_from(["user", "system", "assistant", "tool", ""]),
            "content": st.one_of(st.text(max_size=30), st.none(), st.integers())}), max_size=3)))
@settings(max_examples=30, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
def test_hostile_chat_fields_never_5xx(live, max_tokens, messages):
    body = {"model": "default", "messages": messages, "max_tokens": max_tokens}
    try:
        raw = json.dumps(body, allow_nan=True)
    except ValueError:
        return
    r = httpx.post(live + "/v1/chat/completions", content=raw, headers={"content-type": "application/json"},
                   timeout=30)
    _check(r)
    if not messages or (isinstance(max_tokens, int) and not 1 <= max_tokens <= 64):
        assert r.status_code == 400
