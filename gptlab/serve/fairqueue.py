"""A bounded queue that hands out its items round-robin across keys (issue 17).

The serving worker takes the requests waiting for a decode slot from here. With one FIFO
queue, a key that queues 8 requests puts every other key's request behind all 8; here each
key has its own FIFO lane and the lanes take turns: one item from the key whose turn it is,
then that key goes to the back of the turn order. A new key joins at the back. So a
request waits for at most one item of every other key that has something queued, however
many each of them queued: a flood delays other keys by its number of keys, not by its
number of requests.

Rounds: the worker takes jobs with ``get_nowait`` until ``queue.Empty`` (or a full batch),
prefills them, and decodes one step. Every job it takes costs a prompt pass before the
running rows' next token, so a key that re-queues 8 requests per step would add 8 prompt
passes to every token of everyone else. So while other keys compete (they wait here, or
have requests running: the worker names them in ``busy``), each key gives at most one item
per round: when the key whose turn it is already gave one this round, ``get_nowait`` ends
the round with ``queue.Empty``, and the next call starts a new one. A key alone gives
everything it has at once, as a plain FIFO would (one client's batch of requests is still
prefilled together).

The interface is the part of ``queue.Queue`` the worker uses (``put_nowait``, ``get``,
``get_nowait``, ``qsize``), with the same exceptions (``queue.Full``, ``queue.Empty``).
``maxsize`` bounds all lanes together, like the FIFO queue it replaces; a key's share of it
is bounded by the server's per-key concurrency limit (auth on), not here.
"""
from __future__ import annotations

import queue
import threading
import time
from collections import OrderedDict, deque
from typing import Callable, Generic, Hashable, TypeVar

T = TypeVar("T")


class FairQueue(Generic[T]):
    """Round-robin across ``key(item)``; FIFO within a key. Thread-safe."""

    def __init__(self, maxsize: int = 0, key: Callable[[T], Hashable] = lambda item: None):
        self.maxsize = maxsize          # <= 0: unbounded
        self._key = key
        # keys that have queued items, in turn order (the first one is next); each a FIFO lane
        self._lanes: OrderedDict[Hashable, deque] = OrderedDict()
        self._size = 0
        self._served: set = set()       # keys that gave an item in this round
        self._ready = threading.Condition(threading.Lock())

    def qsize(self) -> int:
        return self._size

    def empty(self) -> bool:
        return self._size == 0

    def lanes(self) -> dict:
        """{key: items queued}, in turn order (for /health and tests)."""
        with self._ready:
            return {k: len(lane) for k, lane in self._lanes.items()}

    def put_nowait(self, item: T) -> None:
        """Queue ``item`` at the end of its key's lane; ``queue.Full`` when the queue is full."""
        k = self._key(item)
        with self._ready:
            if 0 < self.maxsize <= self._size:
                raise queue.Full
            lane = self._lanes.get(k)
            if lane is None:
                self._lanes[k] = lane = deque()
            lane.append(item)
            self._size += 1
            self._ready.notify()

    def get(self, block: bool = True, timeout: float | None = None, busy: frozenset | set = frozenset()) -> T:
        """The next item in turn; ``queue.Empty`` when there is none (now, or within ``timeout``),
        or, without ``block``, when the round is over. ``busy``: keys with requests running."""
        with self._ready:
            if block and timeout is None:
                self._ready.wait_for(lambda: self._size > 0)
            elif block:
                deadline = time.monotonic() + max(timeout, 0.0)
                while self._size == 0:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._ready.wait(left)
            if self._size == 0:
                self._served.clear()
                raise queue.Empty
            k, lane = next(iter(self._lanes.items()))
            if not block and k in self._served and (len(self._lanes) > 1 or len(self._served | busy) > 1):
                self._served.clear()         # every waiting key had its turn: the round is over
                raise queue.Empty
            if block:
                self._served.clear()         # the worker was idle: a new round
            self._served.add(k)
            item = lane.popleft()
            self._size -= 1
            if lane:
                self._lanes.move_to_end(k)   # its turn is over: to the back
            else:
                del self._lanes[k]           # nothing left: it rejoins at the back when it queues again
            return item

    def get_nowait(self, busy: frozenset | set = frozenset()) -> T:
        """The next item in turn; ``queue.Empty`` when there is none or the round is over."""
        return self.get(block=False, busy=busy)
