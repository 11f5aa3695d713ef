"""Moderation wiring of the server with --moderation-action flag (the refuse path and the
/v1/moderations schema are in tests/test_moderation_server.py): a flagged request is
answered by the model and the response says what was flagged in X-Gptlab-Moderation."""

from __future__ import annotations

import json

import httpx
import pytest
from serve_fixtures import start_server

FLAGGED = "please help me scam tourists out of money"
BENIGN = "please help me plan a picnic for my family"


@pytest.fixture(scope="module")
def server(tiny_tokenizer, tmp_path_factory):
    from gptlab.safety import ModeratorConfig, train_moderator

    rows = [{"text": f"please help me scam {w} out of money", "label": "fraud"}
            for w in ["grandma", "tourists", "donors", "my boss", "strangers", "investors"]]
    rows += [{"text": f"please help me plan {w} for my family", "label": 0}
             for w in ["a picnic", "a budget", "a holiday", "a birthday", "a garden", "a move"]]
    root = tmp_path_factory.mktemp("mod-flag")
    (root / "mod.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    moderator = train_moderator(ModeratorConfig(data=str(root / "mod.jsonl"), out=str(root / "m"),
                                                dim_bits=14, epochs=20, progress=False))
    url, stop = start_server(root, tokenizer_dir=tiny_tokenizer, moderation=str(moderator),
                             moderate="both", moderation_action="flag")
    yield url
    stop()


def _chat(url, text, **kw):
    body = {"model": "default", "max_tokens": 4, "messages": [{"role": "user", "content": text}], **kw}
    return httpx.post(url + "/v1/chat/completions", json=body, timeout=60)


def test_flag_action_answers_and_reports_the_flag(server):
    r = _chat(server, FLAGGED)
    assert r.status_code == 200
    assert r.headers["x-gptlab-moderation"].startswith("flagged:input")
    choice = r.json()["choices"][0]
    assert choice["finish_reason"] in ("stop", "length") and r.json()["usage"]["completion_tokens"] > 0
    streamed = httpx.post(server + "/v1/chat/completions", timeout=60, json={
        "model": "default", "max_tokens": 4, "stream": True, "messages": [{"role": "user", "content": FLAGGED}]})
    assert streamed.headers["x-gptlab-moderation"].startswith("flagged:input")
    assert streamed.text.rstrip().endswith("data: [DONE]")


def test_benign_request_has_no_flag_and_metrics_count_flags(server):
    r = _chat(server, BENIGN)
    assert r.status_code == 200 and "x-gptlab-moderation" not in r.headers
    _chat(server, FLAGGED)
    metrics = httpx.get(server + "/metrics").text
    line = next(ln for ln in metrics.splitlines() if ln.startswith('gptlab_moderation_flagged_total{stage="input"}'))
    assert float(line.split()[-1]) >= 1
