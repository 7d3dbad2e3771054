"""The bounded queue between the event loop and the worker pool, and the pool's jobs.

The event loop hands each batch of datagrams to :meth:`Dispatcher.submit`, which keeps what
fits within ``queue_size`` and counts the rest as dropped, never buffered. A pool job takes one
batch at a time through four stages, each a pass over the whole batch: parse (one scan of the
bytes for seed text), account (per sender, in arrival order), handle (a batch handler such as
the line printer writes the batch in one call), count. Every batch ends counted as handled or
dropped, whatever fails, so that ``received == handled + dropped + queued`` at every moment.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import enum
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable

from udpchat.accounting import DeliveryAccounting
from udpchat.counters import DeliveryTotals, DropReason, SenderStats, ServerTally
from udpchat.fastpath import clean_seeds
from udpchat.handlers import Address, Batch, BatchHandler, Handler, as_batch_handler
from udpchat.logs import RateLimitedLog
from udpchat.pool import DaemonThreadPool
from udpchat.sockets import plain_sender
from udpchat.wire import SeedFields, TextProblem, decode, parse_text, text_kind

logger = logging.getLogger("udpchat.pipeline")

STALL_S = 0.02
"""A running job that has not taken a batch for this long is blocked (in a handler that waits
on I/O, say): only then does the dispatcher start another one. A job that is merely busy keeps
the work to itself, because with the GIL a second thread on CPU-bound work only adds
switching."""
MAX_BATCH_BYTES = 128 * 1024
"""Datagram bytes in one batch, at most (a batch holds at least one datagram): what one worker
formats and writes at once, so pending output per worker stays bounded whatever the rate."""
MAX_BATCH_DATAGRAMS = 1024
"""Datagrams in one batch, at most, however small ``--max-size`` is: the most one ``recvmmsg``
takes (the kernel's ``UIO_MAXIOV``), and the batch reader keeps about 200 bytes of headers per
datagram whatever its size, so at ``--max-size 1`` it allocates about 200 KiB, not 27 MiB."""
COALESCE_S = 0.0005
"""A job woken this soon after it went idle, for a batch of :data:`COALESCE_FROM` or more,
waits this long before it takes the batch, so that the datagrams read meanwhile join it rather
than each loop iteration's few making a batch of their own: at a high rate every batch costs a
wake-up, a lock and a write, and fewer, larger batches leave more of the GIL to the event loop
(a quarter less CPU a message at 170k/s, measured as ``make bench-cpu`` measures)."""
COALESCE_FROM = 8
"""Datagrams read in one loop iteration from which the rate is high enough for a pause to pay:
a slower stream (one datagram an iteration, a chat) is never held, so its latency stays the
loop's and the worker's alone."""
JOB_IDLE_S = 1.0
"""A job with nothing to take waits this long for the next batch before it ends: at a steady
rate the same job takes every batch, and the event loop only wakes it (cheap) instead of
submitting a new job to the pool for each burst (a Future, a work item, a queue each time)."""


class _NoBatch(enum.Enum):
    WAIT = "wait"
    """Nothing to take: the job is counted idle and waits for a wake-up."""
    STOP = "stop"
    """Nothing to take and the dispatcher is draining: the job ends."""


def coalesce_pause(idle_s: float, waiting: int) -> float:
    """How long a job woken after ``idle_s`` idle, for a batch of ``waiting`` datagrams, waits
    before it takes: :data:`COALESCE_S` when traffic comes that fast and that dense, else 0."""
    return COALESCE_S if idle_s < COALESCE_S and waiting >= COALESCE_FROM else 0.0


def batch_limit(max_datagram_size: int) -> int:
    """Datagrams in one batch, at most: :data:`MAX_BATCH_BYTES` worth, at least one and at most
    :data:`MAX_BATCH_DATAGRAMS`."""
    return max(1, min(MAX_BATCH_DATAGRAMS, MAX_BATCH_BYTES // max_datagram_size))


def parse(batch: Batch, ipv6_socket: bool) -> None:
    """Stage one: senders, seed fields, and the decoded text of what is not clean seed text."""
    datagrams = batch.datagrams
    if ipv6_socket:
        batch.senders = [plain_sender(address) for _, address in datagrams]
    else:
        batch.senders = [address for _, address in datagrams]
    seeds, others = clean_seeds(datagrams)
    batch.seeds = seeds
    for index in others:
        seeds[index] = _parse_other(batch, index, datagrams[index][0])


def _parse_other(batch: Batch, index: int, data: bytes) -> SeedFields | None:
    """The slow path: decode (escaping invalid UTF-8), then parse the text; count problems."""
    text, valid_utf8 = decode(data)
    batch.texts[index] = text
    problems = batch.problems
    if not valid_utf8:
        problems["invalid_utf8"] = problems.get("invalid_utf8", 0) + 1
    parsed = parse_text(text)
    kind = text_kind(text) if parsed is TextProblem.UNPARSED else None
    if kind is not None:
        batch.kinds[kind.value] = batch.kinds.get(kind.value, 0) + 1
        return None
    if isinstance(parsed, TextProblem):
        problems[parsed.value] = problems.get(parsed.value, 0) + 1
        return None
    return parsed.username.encode("utf-8"), parsed.counter


class Dispatcher:
    """Hands batches of datagrams to the pool, within the queue bound.

    Batches wait in a deque and pool jobs take them in arrival order until it is empty; a batch
    not yet taken grows with what arrives next, up to :func:`batch_limit`. Another
    job starts only when none runs or the running ones have taken nothing for
    :data:`STALL_S`, up to ``workers``: a CPU-bound handler then runs on one thread instead of
    fighting the others for the GIL, and a handler that blocks still gets every worker.
    """

    def __init__(
        self,
        handler: Handler | BatchHandler | None,
        tally: ServerTally,
        *,
        workers: int,
        queue_size: int,
        max_datagram_size: int,
        max_senders: int,
        ipv6_socket: bool,
        on_output_error: Callable[[OSError], None] | None = None,
    ):
        self.max_batch = batch_limit(max_datagram_size)
        self._error_log = RateLimitedLog(logger)
        self._output_error_log = RateLimitedLog(logger)
        self._handler = as_batch_handler(handler, self._error_log)
        self._ipv6_socket = ipv6_socket
        self._tally = tally
        self._queue_size = queue_size
        self._max_jobs = workers
        self._on_output_error = on_output_error
        self._executor = DaemonThreadPool(max_workers=workers, thread_name_prefix="udpchat-worker")
        self._lock = threading.Lock()
        """Guards the job counts and the deque's order of taking."""
        self._batches: deque[Batch] = deque()
        self._jobs = 0
        self._idle = 0
        """Jobs waiting for a wake-up that nobody has claimed yet."""
        self._wakeups: queue.SimpleQueue[None] = queue.SimpleQueue()
        """One token per claimed wake-up; any idle job takes it."""
        self._draining = False
        self._last_take = 0.0
        """``time.monotonic()`` when a job last took a batch (or was woken or started)."""
        self._job_futures: set[concurrent.futures.Future[None]] = set()
        self._order_lock = threading.Lock()
        """Held while a batch is taken and accounted; the event loop takes it only for a
        snapshot (stats), so a snapshot waits for the batch being accounted, at most."""
        self._accounting = DeliveryAccounting(max_senders)

    def submit(self, datagrams: list[tuple[bytes, Address]], received_at: float) -> None:
        """Called on the loop thread: count the batch in, keep what fits in the queue, drop
        and count the rest."""
        received = len(datagrams)
        room = max(self._queue_size - self._tally.queued, 0)
        if received > room:
            datagrams = datagrams[:room]
        if not datagrams:
            self._tally.take_in(received, 0, new_batch=False)
            return
        wake = start_job = False
        with self._lock:
            batches = self._batches
            merge = bool(batches) and len(batches[-1]) + len(datagrams) <= self.max_batch
            # Counted in before a job can take them, so the accounting adds up at every moment.
            self._tally.take_in(received, len(datagrams), new_batch=not merge)
            if merge:
                batches[-1].datagrams.extend(datagrams)  # not taken yet: one batch, one job
            else:
                batches.append(Batch(received_at, datagrams))
            now = time.monotonic()
            if self._jobs == self._idle or now - self._last_take > STALL_S:
                if self._idle:  # nobody is taking (or they stalled): a waiting job takes it
                    self._idle -= 1
                    wake = True
                elif self._jobs < self._max_jobs:
                    self._jobs += 1
                    start_job = True
                self._last_take = now
        if wake:
            self._wakeups.put(None)
        elif start_job:
            self._tally.add("jobs_started")
            future = self._executor.submit(self._run_job)
            self._job_futures.add(future)
            future.add_done_callback(self._job_futures.discard)

    @property
    def queued(self) -> int:
        return self._tally.queued

    @property
    def full(self) -> bool:
        return self._tally.queued >= self._queue_size

    def _take(self) -> Batch | _NoBatch:
        with self._lock:
            if self._batches:
                self._last_take = time.monotonic()
                return self._batches.popleft()
            if self._draining:
                self._jobs -= 1
                return _NoBatch.STOP
            self._idle += 1
            return _NoBatch.WAIT

    def _wait_for_work(self) -> bool:
        """An idle job's wait for a wake-up, outside the order lock; False to end the job:
        idle for :data:`JOB_IDLE_S` with nobody claiming it. Woken within :data:`COALESCE_S`,
        for a dense batch, it lets that long's datagrams join the batch before it takes it."""
        idle_since = time.monotonic()
        try:
            self._wakeups.get(timeout=JOB_IDLE_S)
            with self._lock:
                waiting = len(self._batches[0]) if self._batches else 0
            pause = coalesce_pause(time.monotonic() - idle_since, waiting)
            if pause:
                time.sleep(pause)
        except queue.Empty:
            with self._lock:
                if self._idle:  # unclaimed: leave
                    self._idle -= 1
                    self._jobs -= 1
                    return False
            self._wakeups.get()  # every idle job was claimed: a token is on its way
        return True

    def _run_job(self) -> None:
        while True:
            # Taken and accounted under one lock, so that batches are accounted in arrival
            # order even though several workers take them; the handlers then run in parallel.
            with self._order_lock:
                batch = self._take()
                if batch is _NoBatch.STOP:
                    return
                if batch is not _NoBatch.WAIT and not self._parse_and_account(batch):
                    continue
            if batch is _NoBatch.WAIT:
                if not self._wait_for_work():
                    return
                continue
            self._handle(batch)

    def _parse_and_account(self, batch: Batch) -> bool:
        """Stages one and two; False when they raised (a bug), the batch counted as dropped."""
        try:
            parse(batch, self._ipv6_socket)
            batch.verdicts = self._accounting.record_batch(
                batch.senders, batch.seeds, batch.received_at
            )
        except BaseException as error:
            self._error_log.record("parsing or accounting failed on a batch", error)
            self._tally.add_dropped(DropReason.INTERNAL_ERROR, len(batch))
            return False
        return True

    def _handle(self, batch: Batch) -> None:
        """Stages three and four: the handler, then the counts, whatever happened."""
        errors = 0
        if self._handler is not None:
            try:
                errors = self._handler.handle_batch(batch)
            except OSError as error:  # OutputError, or a batch handler's stream's own error
                self._tally.add_dropped(DropReason.OUTPUT_FAILED, len(batch))
                self._output_error_log.record(f"output failed, {len(batch)} messages lost: {error}")
                if self._on_output_error is not None:
                    self._on_output_error(error)
                return
            except BaseException as error:
                self._error_log.record("handler failed on a batch", error)
                errors = len(batch)
        latency_s = time.time() - batch.received_at
        self._tally.add_handled(len(batch), errors, batch.problems, latency_s, batch.kinds)

    def delivery(self, include_senders: bool) -> tuple[DeliveryTotals, tuple[SenderStats, ...]]:
        with self._order_lock:
            senders = self._accounting.senders() if include_senders else ()
            return self._accounting.totals(), senders

    async def drain(self, timeout_s: float) -> bool:
        """Wait for the queued batches; after the timeout, drop and count those not started.

        Returns False when a job is still running in a worker (a stuck handler or output).
        """
        with self._lock:  # each job ends once nothing is left to take; wake those waiting
            self._draining = True
            waiting, self._idle = self._idle, 0
        for _ in range(waiting):
            self._wakeups.put(None)
        jobs = [asyncio.wrap_future(future) for future in list(self._job_futures)]
        if jobs:
            await asyncio.wait(jobs, timeout=timeout_s)
        with self._lock:
            abandoned = sum(len(batch) for batch in self._batches)
            self._batches.clear()
        self._tally.add_dropped(DropReason.SHUTDOWN, abandoned)
        self._executor.shutdown(wait=False)
        return all(future.done() for future in list(self._job_futures))
