"""The continuous-batching worker against the plain engine: requests that join and leave a
running batch must produce exactly what each would produce alone (greedy), and the
cache surgery (join, retire, trim, regrow) must keep every row's keys where they belong."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from gptlab.engine import Engine
from gptlab.model import GPT, preset
from gptlab.serve.grammar import GrammarFactory
from gptlab.serve.worker import Job, Worker, embed
from gptlab.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def setup(tiny_tokenizer):
    tok = Tokenizer.load(tiny_tokenizer)
    torch.manual_seed(0)
    model = GPT(preset(2, tok.vocab_size, max_seq_len=256)).eval()
    return model, tok


class Sink:
    """Collects a job's events (called from the worker thread)."""

    def __init__(self, n=1):
        self.n, self.texts, self.reasons, self.tokens = n, [""] * n, [None] * n, [0] * n
        self.errors, self.done = [], threading.Event()
        self.deltas = 0

    def __call__(self, events):
        for ev in events:
            if ev[0] == "delta":
                self.texts[ev[1]] += ev[2]
                self.deltas += 1
            elif ev[0] == "finish":
                self.reasons[ev[1]], self.tokens[ev[1]] = ev[2], ev[3]
            else:
                self.errors.append(ev)
                self.done.set()
        if all(r is not None for r in self.reasons):
            self.done.set()


def _alone(model, tok, prompt, max_tokens, stops):
    eng = Engine(model, tok)
    ids = eng.generate([prompt], max_new_tokens=max_tokens, temperature=0.0, stop_token_ids=stops)[0]
    return tok.decode(ids, skip_special_tokens=True), eng.last_finish_reasons[0], len(ids)


@pytest.mark.parametrize("fuse", [False, True], ids=["forward", "fused"])
def test_joined_requests_match_unbatched_greedy(setup, fuse):
    model, tok = setup
    stops = [tok.eos_id, tok.im_end_id]
    worker = Worker(model, tok, stops, max_batch=8, threads=1, fuse=fuse).start()
    assert (worker.fused is not None) == fuse
    try:
        texts = ["alice lives in", "the red fox of bruno runs in lima. every day",
                 "omar", "in tokyo the weather is cold today, says kenji. kenji likes to eat"]
        budgets = [40, 25, 60, 10]
        sinks = []
        for text, budget in zip(texts, budgets):
            sink = Sink()
            worker.submit(Job(prompt_ids=tok.encode(text), max_tokens=budget, emit=sink, temperature=0.0))
            sinks.append(sink)
            deadline = time.time() + 10  # let the batch run a few steps so the next one joins mid-decode
            while sink.deltas < 3 and not sink.done.is_set() and time.time() < deadline:
                time.sleep(0.001)
        for s in sinks:
            assert s.done.wait(30)
        assert worker.steps > 0
        for text, budget, sink in zip(texts, budgets, sinks):
            want_text, want_reason, want_n = _alone(model, tok, tok.encode(text), budget, stops)
            assert not sink.errors, sink.errors
            assert sink.texts[0] == want_text
            assert (sink.reasons[0], sink.tokens[0]) == (want_reason, want_n)
        assert worker.load()["active_rows"] == 0
    finally:
        worker.stop()


def test_joins_into_spare_rows_and_retires_in_place_keep_every_rows_keys():
    """A join fills spare rows without copying the batch, a retire moves tail rows into the
    holes: each row must still see exactly its own keys/values, at the same slots."""
    from gptlab.model import KVCache, ModelConfig
    from gptlab.serve.batch_cache import drop_rows, join_rows, select_rows, spare_rows

    cfg = ModelConfig(vocab_size=16, hidden_size=8, intermediate_size=16, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64)
    torch.manual_seed(0)

    def cache(rows, length):
        c = KVCache(cfg, rows, length + 4)
        c.k.normal_(), c.v.normal_()
        c.pos = length
        return c

    def rows_of(c):   # each row's valid keys, right-aligned, as a list
        valid = c.valid if c.valid is not None else torch.ones(c.batch_size, c.max_len, dtype=torch.bool)
        return [c.k[:, i, :, :c.pos][:, :, valid[i, :c.pos]].clone() for i in range(c.batch_size)]

    batch = join_rows(select_rows(cache(2, 6), [0, 1]), cache(1, 3))   # a full copy, with spare rows
    assert spare_rows(batch) == 3
    want = rows_of(batch)
    store = batch.rows_alloc[0]
    newcomer = cache(2, 5)
    joined = join_rows(batch, newcomer)                             # into the spare rows
    assert joined.rows_alloc[0] is store and spare_rows(joined) == 1
    assert [torch.equal(a, b) for a, b in zip(rows_of(joined), want + rows_of(newcomer))] == [True] * 5
    want = rows_of(joined)
    kept, order = drop_rows(joined, [1, 3, 4])                      # row 4 moves into row 0's place
    assert kept.rows_alloc[0] is store and sorted(order) == [1, 3, 4]
    assert [torch.equal(a, want[i]) for a, i in zip(rows_of(kept), order)] == [True] * 3
    # a newcomer longer than the batch's position cannot fit right-aligned: a new cache
    longer = join_rows(kept, cache(1, 9))
    assert longer.rows_alloc[0] is not store and longer.pos == 9


def test_long_generation_regrows_the_cache_and_n_choices_share_a_prompt(setup):
    model, tok = setup
    worker = Worker(model, tok, [], max_batch=4, threads=1).start()  # no stop tokens: run to max_tokens
    try:
        prompt = tok.encode("dara likes to eat")
        sink = Sink(n=3)
        worker.submit(Job(prompt_ids=prompt, max_tokens=150, emit=sink, n=3, temperature=0.0))
        assert sink.done.wait(60)
        want, _, _ = _alone(model, tok, prompt, 150, [])
        assert sink.texts == [want] * 3 and sink.tokens == [150] * 3
        assert sink.reasons == ["length"] * 3
    finally:
        worker.stop()


def test_seeded_sampling_does_not_depend_on_the_batch(setup):
    model, tok = setup
    worker = Worker(model, tok, [], max_batch=8, threads=1).start()
    try:
        prompt = tok.encode("hana lives in")
        alone = Sink()
        worker.submit(Job(prompt_ids=prompt, max_tokens=20, emit=alone, temperature=1.0, seed=7))
        assert alone.done.wait(30)
        crowd = [Sink() for _ in range(3)]
        for i, s in enumerate(crowd):  # the same seeded request, now batched with others
            seed = 7 if i == 1 else 100 + i
            worker.submit(Job(prompt_ids=prompt, max_tokens=20, emit=s, temperature=1.0, seed=seed))
        for s in crowd:
            assert s.done.wait(30)
        assert crowd[1].texts == alone.texts
        assert crowd[0].texts != alone.texts or crowd[2].texts != alone.texts
    finally:
        worker.stop()


def test_cancel_and_timeout_free_the_batch(setup):
    model, tok = setup
    worker = Worker(model, tok, [], max_batch=2, threads=1).start()
    try:
        slow = Sink()
        job = Job(prompt_ids=tok.encode("ivan"), max_tokens=200, emit=slow, temperature=0.0)
        worker.submit(job)
        while slow.deltas < 2:
            time.sleep(0.001)
        job.cancelled = True
        timed = Sink()
        worker.submit(Job(prompt_ids=tok.encode("lena"), max_tokens=200, emit=timed, timeout_s=0.0))
        assert timed.done.wait(30)
        assert timed.errors and timed.errors[0][1] == 408
        deadline = time.time() + 10
        while worker.load()["active_rows"] and time.time() < deadline:
            time.sleep(0.01)
        assert worker.load()["active_rows"] == 0 and slow.reasons == [None]
    finally:
        worker.stop()


def test_grammar_forces_a_complete_document_within_max_tokens(setup):
    import json

    model, tok = setup
    stops = [tok.eos_id, tok.im_end_id]
    factory = GrammarFactory(tok, model.config.vocab_size, stops)
    schema = type("RF", (), {"type": "json_object"})()
    compiled = factory.compile(schema)
    assert factory.constraint(compiled).closing_length() == 2  # "{" "}"
    worker = Worker(model, tok, stops, max_batch=8, grammar_factory=factory, threads=1).start()
    try:
        sinks = []
        for seed in range(6):
            s = Sink()
            worker.submit(Job(prompt_ids=tok.encode("alice"), max_tokens=2 + 3 * seed, emit=s,
                              temperature=1.5, seed=seed, grammar=compiled))
            sinks.append(s)
        for s in sinks:
            assert s.done.wait(30)
            assert isinstance(json.loads(s.texts[0]), dict)
    finally:
        worker.stop()


def test_embeddings_match_transformers_mean_pooled_hidden_state(setup, tmp_path):
    from transformers import AutoModel

    from gptlab.checkpoint import save_checkpoint

    model, tok = setup
    save_checkpoint(tmp_path / "m", model, tok)
    hf = AutoModel.from_pretrained(tmp_path / "m").eval()
    prompts = [tok.encode("alice lives in paris."), tok.encode("fox")]
    ours = embed(model, prompts)
    for p, v in zip(prompts, ours):
        with torch.no_grad():
            h = hf(torch.tensor([p])).last_hidden_state[0].mean(0)
        assert torch.allclose(v, torch.nn.functional.normalize(h, dim=0), atol=1e-4)
    assert torch.allclose(ours.norm(dim=-1), torch.ones(2), atol=1e-5)


def test_the_worker_fuses_bf16_models_and_leaves_large_float32_ones_unfused(monkeypatch):
    """Fused, a step runs scripted (no GIL between ops) and in bf16 costs about the same at 1
    and 8 rows; a large float32 model's fused step scaled badly with the batch, so it is not."""
    import gptlab.serve.worker as worker_module

    monkeypatch.setattr(worker_module, "ONE_THREAD_MAX_BYTES", 0)   # every model counts as large
    torch.manual_seed(0)
    model = GPT(preset(1, 384, max_seq_len=64))
    assert Worker.plan(model)[0] is False
    assert Worker.plan(model, dtype=torch.bfloat16)[0] is True      # what --dtype auto times
    assert Worker.plan(model.to(torch.bfloat16))[0] is True
    assert Worker.plan(model, fuse=False)[0] is False
