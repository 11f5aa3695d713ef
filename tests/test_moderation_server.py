"""The server with a real moderator: POST /v1/moderations in OpenAI's schema through the official
client, and input moderation refusing a flagged chat request with a well-formed reply."""
from __future__ import annotations

import json

import pytest

from serve_fixtures import start_server

from gptlab.data import phrases

FLAGGED = "please help me scam tourists out of money"
BENIGN = "please help me plan a picnic for my family"


@pytest.fixture(scope="module")
def moderator_dir(tmp_path_factory):
    from gptlab.safety import ModeratorConfig, train_moderator
    rows = [{"text": f"please help me scam {w} out of money", "label": "fraud"} for w in
            ["grandma", "tourists", "donors", "my boss", "strangers", "investors"]]
    rows += [{"text": f"please help me hurt {w} badly", "labels": ["violence"]} for w in
             ["my neighbour", "a coworker", "someone", "a stranger"]]
    rows += [{"text": f"please help me plan {w} for my family", "label": 0} for w in
             ["a picnic", "a budget", "a holiday", "a birthday", "a garden", "a move"]]
    root = tmp_path_factory.mktemp("mod")
    data = root / "mod.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return train_moderator(ModeratorConfig(data=str(data), out=str(root / "m"), dim_bits=14,
                                           epochs=20, progress=False))


@pytest.fixture(scope="module")
def server(moderator_dir, tmp_path_factory, tiny_tokenizer):
    base_url, stop = start_server(tmp_path_factory.mktemp("srv"), tokenizer_dir=tiny_tokenizer,
                                  moderation=str(moderator_dir), moderate="input",
                                  moderation_action="refuse")
    yield base_url
    stop()


@pytest.fixture()
def client(server):
    import openai
    return openai.OpenAI(base_url=server + "/v1", api_key="test-key", max_retries=0)


def test_moderations_match_openai_schema(client):
    from openai.types import ModerationCreateResponse
    from openai.types.moderation import Categories, CategoryScores
    resp = client.moderations.create(input=[FLAGGED, BENIGN], model="gptlab-moderation")
    assert isinstance(resp, ModerationCreateResponse) and resp.id and resp.model
    assert len(resp.results) == 2
    bad, good = resp.results
    assert bad.flagged is True and good.flagged is False
    raw = bad.model_dump(by_alias=True)
    # strict validation of the parts the moderator produces (OpenAI's required keys)
    cats = Categories.model_validate(raw["categories"])
    scores = CategoryScores.model_validate(raw["category_scores"])
    assert raw["categories"]["fraud"] is True and cats.illicit is True
    assert scores.illicit == pytest.approx(raw["category_scores"]["fraud"])
    assert 0.0 <= scores.hate <= 1.0 and cats.harassment is False
    assert good.model_dump(by_alias=True)["categories"]["fraud"] is False
    one = client.moderations.create(input=FLAGGED)          # a single string works too
    assert len(one.results) == 1 and one.results[0].flagged


def test_moderation_response_is_a_full_openai_moderation(client):
    """Every field OpenAI's Moderation object requires, validated by the client's own model."""
    from openai.types import Moderation
    resp = client.moderations.with_raw_response.create(input=FLAGGED)
    body = json.loads(resp.http_response.text)
    assert set(body) >= {"id", "model", "results"} and len(body["results"]) == 1
    for result in body["results"]:
        m = Moderation.model_validate(result)       # raises on a missing or mistyped field
        assert m.flagged and m.categories.illicit and m.category_scores.illicit > 0.5
        assert set(result["category_applied_input_types"]) == set(result["categories"])


def test_input_moderation_refuses_flagged_request(client):
    r = client.chat.completions.create(model="default", max_tokens=8,
                                       messages=[{"role": "system", "content": "Be brief."},
                                                 {"role": "user", "content": FLAGGED}])
    choice = r.choices[0]
    assert choice.finish_reason == "content_filter"
    assert choice.message.role == "assistant"
    assert phrases.contains_any(choice.message.content, phrases.REFUSAL_MARKERS)   # the judge sees it
    assert r.id and r.object == "chat.completion" and r.usage.prompt_tokens > 0
    assert r.usage.completion_tokens == 0
    # streamed: the same refusal as chunks, ending with finish_reason content_filter
    chunks = list(client.chat.completions.create(model="default", max_tokens=8, stream=True,
                                                 messages=[{"role": "user", "content": FLAGGED}]))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == choice.message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "content_filter"


def test_benign_request_reaches_the_model(client):
    r = client.chat.completions.create(model="default", max_tokens=4,
                                       messages=[{"role": "user", "content": BENIGN}])
    assert r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.completion_tokens > 0
