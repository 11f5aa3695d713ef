"""gptlab.serve.fairqueue: round-robin across keys, FIFO within a key, bounded, thread-safe."""
from __future__ import annotations

import queue
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gptlab.serve.fairqueue import FairQueue


def _q(maxsize: int = 0) -> FairQueue:
    return FairQueue(maxsize, key=lambda item: item[0])


def _drain(q: FairQueue) -> list:
    """Every item, across as many rounds as it takes."""
    out = []
    while not q.empty():
        try:
            out.append(q.get_nowait())
        except queue.Empty:          # the end of a round
            pass
    return out


def _round(q: FairQueue) -> list:
    out = []
    try:
        while True:
            out.append(q.get_nowait())
    except queue.Empty:
        return out


def test_a_flood_does_not_go_first():
    q = _q()
    for i in range(8):
        q.put_nowait(("flood", i))
    q.put_nowait(("innocent", 0))
    # FIFO would serve the innocent item 9th; round-robin serves it 2nd
    assert _drain(q) == [("flood", 0), ("innocent", 0)] + [("flood", i) for i in range(1, 8)]


def test_one_item_per_key_per_round_while_keys_compete():
    q = _q()
    for i in range(8):
        q.put_nowait(("flood", i))
    q.put_nowait(("innocent", 0))
    assert _round(q) == [("flood", 0), ("innocent", 0)]
    # the innocent key has nothing left: the flood, alone now, gives the rest at once
    assert _round(q) == [("flood", i) for i in range(1, 8)]
    assert _round(q) == []
    q.put_nowait(("a", 0))
    assert q.get(timeout=1) == ("a", 0)      # a blocking get (an idle worker) starts a round


def test_a_key_with_requests_running_counts_as_competing():
    q = _q()
    for i in range(4):
        q.put_nowait(("flood", i))

    def one_round(busy):
        out = []
        try:
            while True:
                out.append(q.get_nowait(busy=busy))
        except queue.Empty:
            return out
    # the innocent key's request is decoding: the flood gives one per round
    assert one_round({"innocent", "flood"}) == [("flood", 0)]
    assert one_round({"innocent"}) == [("flood", 1)]
    assert one_round({"flood"}) == [("flood", 2), ("flood", 3)]    # alone again: all at once


def test_keys_take_turns_fifo_within_each_key():
    q = _q()
    for k, i in [("a", 0), ("a", 1), ("a", 2), ("b", 0), ("b", 1), ("c", 0)]:
        q.put_nowait((k, i))
    assert _drain(q) == [("a", 0), ("b", 0), ("c", 0), ("a", 1), ("b", 1), ("a", 2)]


def test_a_key_that_emptied_rejoins_at_the_back():
    q = _q()
    q.put_nowait(("a", 0))
    q.put_nowait(("b", 0))
    q.put_nowait(("b", 1))
    assert q.get_nowait() == ("a", 0)
    q.put_nowait(("a", 1))            # a's lane was empty: it queues behind b
    assert q.lanes() == {"b": 2, "a": 1}
    assert _drain(q) == [("b", 0), ("a", 1), ("b", 1)]


def test_bounded_across_keys_with_queue_exceptions():
    q = _q(maxsize=3)
    for item in [("a", 0), ("a", 1), ("b", 0)]:
        q.put_nowait(item)
    with pytest.raises(queue.Full):
        q.put_nowait(("c", 0))
    assert q.qsize() == 3
    _drain(q)
    with pytest.raises(queue.Empty):
        q.get_nowait()
    t0 = time.monotonic()
    with pytest.raises(queue.Empty):
        q.get(timeout=0.05)
    assert time.monotonic() - t0 >= 0.04


def test_get_waits_for_a_put_from_another_thread():
    q = _q()
    threading.Timer(0.05, q.put_nowait, args=[("a", 0)]).start()
    assert q.get(timeout=10) == ("a", 0)
    threading.Timer(0.05, q.put_nowait, args=[("b", 0)]).start()
    assert q.get() == ("b", 0)


def test_concurrent_producers_lose_nothing():
    q, got = _q(), []
    producers = [threading.Thread(target=lambda k=k: [q.put_nowait((k, i)) for i in range(500)])
                 for k in "abcd"]
    consumer = threading.Thread(target=lambda: got.extend(q.get(timeout=10) for _ in range(2000)))
    consumer.start()
    for t in producers:
        t.start()
    for t in producers + [consumer]:
        t.join()
    assert sorted(got) == sorted((k, i) for k in "abcd" for i in range(500))
    for k in "abcd":                  # FIFO within each key
        assert [i for kk, i in got if kk == k] == list(range(500))


@settings(max_examples=200, deadline=None, derandomize=True)
@given(ops=st.lists(st.one_of(st.sampled_from("abcd"), st.just(None)), max_size=80))
def test_no_key_gets_more_than_its_turns_ahead_of_a_waiting_item(ops):
    """The fairness bound: while an item waits behind j items of its own key, each other key
    is served at most j + 1 items. `ops`: a key puts an item, None takes one; then drain."""
    q = _q()
    ahead, put_at, take_at = {}, {}, {}
    for t, op in enumerate(ops + [None] * (2 * len(ops) + 1)):
        if op is None:
            try:
                take_at[q.get_nowait()] = t
            except queue.Empty:      # nothing queued, or the end of a round
                pass
        else:
            item = (op, t)
            ahead[item], put_at[item] = q.lanes().get(op, 0), t
            q.put_nowait(item)
    assert q.empty() and set(take_at) == set(put_at)
    for item, j in ahead.items():
        others: dict = {}
        for other, taken in take_at.items():
            if other[0] != item[0] and put_at[item] < taken < take_at[item]:
                others[other[0]] = others.get(other[0], 0) + 1
        assert all(n <= j + 1 for n in others.values()), (item, j, others)
