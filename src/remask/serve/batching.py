"""Batching across requests: a queue of jobs and one worker thread that generates them a batch at a time.

A request becomes a ``Ticket`` in the queue. While the model is busy, requests wait; when it is
free the worker takes the oldest waiting ticket and, in arrival order, every other one that may
share its batch (``batch_key``), up to ``max_batch_size`` rows, and generates them together
(``Engine.run``). The oldest request always goes first, so none waits forever behind others.
A free model may wait a few milliseconds (``batch_wait``) for a batch as large as its last one.

Rows generated together share one sampler config and one random generator, so they must agree on
every setting the sampler reads: the same config, but for the seed of one that draws no noise
(temperature 0 and a confidence measure other than ``random``). Each row then gets exactly what
it gets alone (at temperature 0 without a cache: token for token; a cache attends over the padded
batch, equal up to float rounding). A request that draws noise runs in a batch of its own rows,
so its seed still reproduces its answer.

The worker thread talks to each request's event loop through the ticket's inbox (thread-safe
``call_soon_threadsafe``), so the loop keeps answering while the model works, and a ticket whose
client has left (``release``) is simply no longer fed: its rows finish with the batch, unseen.
The thread exists only while there is work: it starts with the first request and ends when the
queue is empty.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from remask.errors import RemaskError
from remask.serve.engine import Engine, Result, draws_noise
from remask.serve.errors import ApiError
from remask.serve.requests import Job

log = logging.getLogger("remask.serve")


def batch_key(cfg: Any) -> Any | None:
    """What a job's rows must share with the rows batched with them: its sampler config, the seed
    left out when nothing is drawn at random (None: the job draws noise and runs alone)."""
    return None if draws_noise(cfg) else dataclasses.replace(cfg, seed=0)


class Ticket:
    """A job's place in the queue and its channel back to the request: the engine's ``Sink``."""

    def __init__(self, job: Job, loop: asyncio.AbstractEventLoop) -> None:
        self.job, self.loop, self.key = job, loop, batch_key(job.cfg)
        if self.key is not None and job.pins:  # rows share a canvas layout: only equal pins batch together
            self.key = (self.key, job.pins)
        self.inbox: asyncio.Queue[Any] = asyncio.Queue()  # (row, text), a step's dict, a Result or an exception
        self.arrived, self.first = time.perf_counter(), None  # perf_counter times: queued, first final text
        self.result: Result | None = None
        self.closed = False  # nobody is listening any more: the worker ignores its rows
        self.released = False  # its request has ended (``Scheduler.release``)

    @property
    def live(self) -> bool:
        return not self.closed

    def _post(self, item: Any) -> None:
        try:
            self.loop.call_soon_threadsafe(self.inbox.put_nowait, item)
        except RuntimeError:  # the request's event loop has closed: its client is gone
            self.closed = True

    def piece(self, row: int, text: str) -> None:
        if self.first is None:
            self.first = time.perf_counter()
        if self.job.stream:
            self._post((row, text))

    def step(self, payload: dict[str, Any]) -> None:
        self._post(payload)

    def done(self, result: Result) -> None:
        """Keep the result; the scheduler delivers it once the batch is in the metrics, so a client
        that has its answer finds it counted."""
        self.result = result

    def deliver(self) -> None:
        """Send the kept result to the waiting request."""
        if self.result is not None:
            self._post(self.result)

    def fail(self, exc: Exception) -> None:
        self._post(exc)

    async def next(self) -> Any:
        """The next thing the worker sent: (row, text), a step (dict), the Result or an exception."""
        return await self.inbox.get()


class Busy(ApiError):
    """429: the queue or the open streams are at their limit; ``Retry-After`` says when to try again."""

    def __init__(self, message: str, retry_after: float) -> None:
        seconds = max(1, math.ceil(retry_after))
        super().__init__(429, f"{message}; retry in {seconds} s", code="rate_limit_exceeded",
                         headers={"Retry-After": str(seconds)})


class Scheduler:
    """The queue of tickets and the worker thread that batches them; ``on_batch(tickets, n_forward)``
    hears of every batch once it is done (metrics)."""

    def __init__(self, engine: Engine, *, on_batch: Callable[[list[Ticket], int], None] | None = None) -> None:
        self.engine, self.limits, self.on_batch = engine, engine.limits, on_batch
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)  # notified by every submit
        self._last_rows = 1  # rows of the last batch: how full a batch the worker waits for (``batch_wait``)
        self._queue: deque[Ticket] = deque()
        self._running: list[Ticket] = []
        self._worker: threading.Thread | None = None
        self._streams = 0
        self._batch_seconds = 1.0  # how long the last batch took: the Retry-After hint

    # ------------------------------------------------------------------------- the requests' side

    def submit(self, job: Job) -> Ticket:
        """Queue ``job`` (from a request's event loop) -> its ticket; Busy (429) when a limit is reached."""
        ticket = Ticket(job, asyncio.get_running_loop())
        limits = self.limits
        with self._lock:
            if self._waiting() >= limits.max_queue:
                raise Busy(f"the server is busy: {limits.max_queue} requests are waiting (max_queue)",
                           self._batch_seconds)
            if job.stream and self._streams >= limits.max_streams:
                raise Busy(f"the server is busy: {limits.max_streams} streams are open (max_streams)",
                           self._batch_seconds)
            self._streams += job.stream
            self._queue.append(ticket)
            self._arrived.notify()
            if self._worker is None:
                self._worker = threading.Thread(target=self._work, name="remask-batches", daemon=True)
                self._worker.start()
        return ticket

    def release(self, ticket: Ticket) -> None:
        """The request has ended (answered, or its client left): its rows are no longer looked at."""
        with self._lock:
            if not ticket.released:
                ticket.released = ticket.closed = True
                self._streams -= ticket.job.stream

    def queue_length(self) -> int:
        """Requests waiting for the model (their clients still there)."""
        with self._lock:
            return self._waiting()

    def _waiting(self) -> int:
        return sum(t.live for t in self._queue)

    def open_streams(self) -> int:
        return self._streams

    @property
    def busy(self) -> bool:
        """A request still waiting for the model, or being generated for a client still there."""
        with self._lock:
            return any(t.live for t in self._running) or self._waiting() > 0

    # ------------------------------------------------------------------------- the worker's side

    def _work(self) -> None:
        try:
            while True:
                with self._lock:
                    self._gather()
                    batch = self._running = self._take()
                    if not batch:
                        self._worker = None
                        return
                self._run(batch)
        except BaseException:  # never leave a dead worker on record: the next request starts a new one
            with self._lock:
                self._worker = None
            raise

    def _gather(self) -> None:
        """Wait up to ``batch_wait`` seconds for as many rows as the last batch had: clients answered
        together come back a few milliseconds apart, and a batch started on the first of them would
        make the rest wait a whole generation. A lone client (last batch: 1 row) never waits."""
        want = min(self._last_rows, self.limits.max_batch_size)
        deadline = time.monotonic() + self.limits.batch_wait
        while 0 < sum(len(t.job.rows) for t in self._queue if t.live) < want:
            if (left := deadline - time.monotonic()) <= 0:
                return
            self._arrived.wait(left)

    def _take(self) -> list[Ticket]:
        """The oldest live ticket and, in arrival order, every waiting one that may share its batch,
        up to ``max_batch_size`` rows; the rest stay queued, in order."""
        waiting = [t for t in self._queue if t.live]
        if not waiting:
            self._queue.clear()
            return []
        first, room = waiting[0], self.limits.max_batch_size - len(waiting[0].job.rows)
        batch = [first]
        for t in waiting[1:]:
            if first.key is not None and t.key == first.key and len(t.job.rows) <= room:
                batch.append(t)
                room -= len(t.job.rows)
        taken = {id(t) for t in batch}
        self._queue = deque(t for t in waiting if id(t) not in taken)
        self._last_rows = self.limits.max_batch_size - room
        return batch

    def _run(self, batch: list[Ticket]) -> None:
        start, n_forward = time.perf_counter(), 0
        try:
            n_forward = self.engine.run(batch)
        except Exception as exc:  # the requests hear of it; the worker goes on with the next batch
            if not isinstance(exc, RemaskError):
                log.exception("generation failed")
            for t in batch:
                if t.result is None:
                    t.fail(exc)
        self._batch_seconds = time.perf_counter() - start
        if self.on_batch is not None:
            try:
                self.on_batch(batch, n_forward)
            except Exception:
                log.exception("recording a batch failed")
        for t in batch:
            t.deliver()
