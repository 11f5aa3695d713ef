"""Prefix caching: a prompt that starts with a finished sequence reuses its keys/values and
still produces exactly the reply a full prompt pass gives; the cache keeps the longest
sequences within its byte budget; the API reports the reuse as OpenAI's cached_tokens."""

from __future__ import annotations

import time

import httpx
import openai
import pytest
import torch

from gptlab.engine import Engine
from gptlab.model import GPT, preset
from gptlab.serve.prefix_cache import MIN_TOKENS, PrefixCache
from gptlab.serve.worker import Job, Worker
from gptlab.tokenizer import Tokenizer
from serve_fixtures import start_server
from test_serve_worker import Sink


def _kv(n: int, fill: float = 0.0):
    """Keys/values shaped (layers=2, kv_heads=1, n, head_dim=4), 32 bytes per token each."""
    return torch.full((2, 1, n, 4), fill), torch.full((2, 1, n, 4), fill)


def test_lookup_returns_the_longest_prefix_and_leaves_a_token_to_compute():
    cache = PrefixCache(max_bytes=10**6)
    cache.put(list(range(20)), *_kv(20, 1.0))
    cache.put(list(range(10)) + [99] * 20, *_kv(30, 2.0))
    n, k, v = cache.lookup(list(range(25)))
    assert n == 20 and k.shape == (2, 1, 20, 4) and float(k[0, 0, 0, 0]) == 1.0
    n, k, _ = cache.lookup(list(range(10)) + [99] * 5)   # the second entry matches longer
    assert n == 14 and float(k[0, 0, 0, 0]) == 2.0       # 15 tokens, the last one is recomputed
    assert cache.lookup([5] * 30) is None
    assert cache.lookup(list(range(MIN_TOKENS - 1)) + [7]) is None  # too short to be worth it
    assert cache.stats()["hits"] == 2


def test_longer_sequences_supersede_their_prefixes_and_eviction_is_lru():
    cache = PrefixCache(max_bytes=64 * 30)  # room for 30 tokens (64 bytes each: keys + values)
    cache.put(list(range(10)), *_kv(10))
    cache.put(list(range(15)), *_kv(15))      # extends the first: replaces it
    cache.put(list(range(12)), *_kv(12))      # already covered by the 15-token entry
    assert [len(ids) for _, ids in cache.entries] == [15] and cache.bytes == 64 * 15
    cache.put([50 + i for i in range(10)], *_kv(10))
    cache.lookup(list(range(15)) + [1])       # touch the first entry
    cache.put([80 + i for i in range(10)], *_kv(10))  # over budget: evicts the least recently used
    assert sorted(len(ids) for _, ids in cache.entries) == [10, 15]
    assert next(reversed(cache.entries))[1][:1] == (80,)
    assert cache.bytes <= cache.max_bytes


@pytest.fixture(scope="module")
def setup(tiny_tokenizer):
    tok = Tokenizer.load(tiny_tokenizer)
    torch.manual_seed(0)
    return GPT(preset(2, tok.vocab_size, max_seq_len=256)).eval(), tok


def _greedy_alone(model, tok, prompt, max_tokens):
    ids = Engine(model, tok).generate([prompt], max_new_tokens=max_tokens, temperature=0.0, stop_token_ids=[])[0]
    return tok.decode(ids, skip_special_tokens=True)


def _run(worker, prompt, max_tokens):
    sink = Sink()
    job = Job(prompt_ids=prompt, max_tokens=max_tokens, emit=sink, temperature=0.0)
    worker.submit(job)
    assert sink.done.wait(30) and not sink.errors
    deadline = time.time() + 10  # the row is stored when it is retired, just after its last event
    while worker.load()["active_rows"] and time.time() < deadline:
        time.sleep(0.001)
    return job, sink.texts[0]


def test_a_follow_up_prompt_reuses_the_finished_turn_and_replies_exactly(setup):
    model, tok = setup
    worker = Worker(model, tok, [], max_batch=4, threads=1).start()
    try:
        first = tok.encode("alice lives in lima. every day she walks to the market and")
        job, _ = _run(worker, first, 12)
        assert job.cached_tokens == 0
        # what the model was fed: the prompt and all but the last of its 12 tokens
        fed = first + Engine(model, tok).generate([first], max_new_tokens=12, temperature=0.0,
                                                  stop_token_ids=[])[0][:11]
        follow_up = fed + tok.encode(" then omar says hello to kenji")
        # the logits of the prompt pass from the cached prefix equal those of a full pass
        probe = Job(prompt_ids=follow_up, max_tokens=1, emit=lambda events: None)
        with torch.inference_mode():
            _, cached = worker._prompt_pass_from(probe, *worker.prefix_cache.lookup(follow_up))
            _, full = worker._prompt_pass([probe])
        assert probe.cached_tokens == len(fed)
        torch.testing.assert_close(cached, full, rtol=0, atol=1e-5)
        job, text = _run(worker, follow_up, 10)
        assert job.cached_tokens == len(fed)
        assert text == _greedy_alone(model, tok, follow_up, 10)
        job, text = _run(worker, first, 12)  # the same prompt again: all but its last token
        assert job.cached_tokens == len(first) - 1
        assert worker.load()["prefix_cache"]["hits"] == 3
    finally:
        worker.stop()


def test_a_repeated_prompt_joins_the_batch_without_a_pass_of_its_own(setup):
    """The whole prompt but its last token is cached: the job's first token comes from the
    next decode step, beside the running rows, and every reply is still the greedy one."""
    model, tok = setup
    worker = Worker(model, tok, [], max_batch=4, threads=1).start()
    try:
        repeated = tok.encode("alice lives in lima. every day she walks to the market and")
        _run(worker, repeated, 6)

        def no_pass(*args):
            raise AssertionError("a repeated prompt ran a prompt pass of its own")
        worker._prompt_pass_from = no_pass
        other = tok.encode("omar lives in oslo and kenji lives in")
        long_sink, again = Sink(), Sink(n=2)
        worker.submit(Job(prompt_ids=other, max_tokens=40, emit=long_sink, temperature=0.0))
        while not long_sink.deltas:   # the other row is decoding when the repeat arrives
            time.sleep(0.001)
        job = Job(prompt_ids=repeated, max_tokens=12, emit=again, n=2, temperature=0.0)
        worker.submit(job)
        assert again.done.wait(30) and long_sink.done.wait(30) and not again.errors + long_sink.errors
        assert job.cached_tokens == len(repeated) - 1
        assert again.texts == [_greedy_alone(model, tok, repeated, 12)] * 2
        assert long_sink.texts[0] == _greedy_alone(model, tok, other, 40)
    finally:
        worker.stop()


def test_a_repeat_reads_the_cached_keys_in_place_and_stores_no_copy(setup):
    """A repeat joining a running batch reads the stored keys/values without copying them
    first, must not write into them, and, since what it fed is already stored, is not copied
    back into the cache when it ends."""
    model, tok = setup
    worker = Worker(model, tok, [], max_batch=4, threads=1).start()
    try:
        repeated = tok.encode("alice lives in lima. every day she walks to the market and")
        _run(worker, repeated, 6)
        (key, (k, v)), = worker.prefix_cache.entries.items()
        k0, v0 = k.clone(), v.clone()
        stored = []
        put = worker.prefix_cache.put
        worker.prefix_cache.put = lambda ids, *a, **kw: (stored.append(ids), put(ids, *a, **kw))
        other = tok.encode("omar lives in oslo and kenji lives in")
        long_sink, again = Sink(), Sink()
        worker.submit(Job(prompt_ids=other, max_tokens=30, emit=long_sink, temperature=0.0))
        while not long_sink.deltas:   # the repeat joins a running batch
            time.sleep(0.001)
        job = Job(prompt_ids=repeated, max_tokens=4, emit=again, temperature=0.0)
        worker.submit(job)
        assert again.done.wait(30) and long_sink.done.wait(30) and not again.errors + long_sink.errors
        assert job.cached_tokens == len(repeated) - 1
        assert again.texts == [_greedy_alone(model, tok, repeated, 4)]
        assert long_sink.texts[0] == _greedy_alone(model, tok, other, 30)
        assert torch.equal(k, k0) and torch.equal(v, v0)   # read, never written
        assert worker.prefix_cache.entries[key][0] is k     # the same entry, not a copy
        deadline = time.time() + 10
        while worker.load()["active_rows"] and time.time() < deadline:
            time.sleep(0.001)
        assert stored and not any(ids[:len(repeated)] == repeated for ids in stored)  # only the other row
    finally:
        worker.stop()


def test_covers_tells_a_stored_sequence_or_its_prefix_per_tenant():
    cache = PrefixCache(max_bytes=10**6)
    cache.put(list(range(20)), *_kv(20), tenant="a")
    assert cache.covers(list(range(20)), "a") and cache.covers(list(range(12)), "a")
    assert not cache.covers(list(range(21)), "a")        # longer: put would store it
    assert not cache.covers([1] + list(range(1, 12)), "a")
    assert not cache.covers(list(range(12)), "b")        # another key's entry
    assert not PrefixCache(max_bytes=10**6).covers([1, 2, 3])


def test_api_reports_cached_tokens_on_the_next_turn(tmp_path, tiny_tokenizer):
    url, stop = start_server(tmp_path, tokenizer_dir=tiny_tokenizer)
    try:
        client = openai.OpenAI(base_url=url + "/v1", api_key="x")
        turns = [{"role": "system", "content": "you answer in one short line about the city."},
                 {"role": "user", "content": "where does alice live?"}]
        first = client.chat.completions.create(model="default", messages=turns, max_tokens=8, temperature=0)
        assert first.usage.prompt_tokens_details.cached_tokens == 0
        turns += [{"role": "assistant", "content": first.choices[0].message.content},
                  {"role": "user", "content": "and omar?"}]
        second = client.chat.completions.create(model="default", messages=turns, max_tokens=8, temperature=0)
        # at least the system message and the first question came from the cache
        assert second.usage.prompt_tokens_details.cached_tokens >= first.usage.prompt_tokens - 1
        assert second.usage.prompt_tokens_details.cached_tokens < second.usage.prompt_tokens
        saved = second.usage.prompt_tokens_details.cached_tokens
        assert httpx.get(url + "/health").json()["models"]["tiny-chat"]["prefix_cache"]["tokens_saved"] == saved
        assert f'gptlab_prefix_cache_tokens_saved{{model="tiny-chat"}} {float(saved)}' in httpx.get(url + "/metrics").text
    finally:
        stop()


def test_a_zero_budget_turns_the_cache_off(setup):
    model, tok = setup
    worker = Worker(model, tok, [], max_batch=2, threads=1, prefix_cache_bytes=0).start()
    try:
        prompt = tok.encode("alice lives in lima. every day she walks to the market and")
        _run(worker, prompt, 4)
        job, _ = _run(worker, prompt, 4)
        assert job.cached_tokens == 0 and "prefix_cache" not in worker.load()
    finally:
        worker.stop()
