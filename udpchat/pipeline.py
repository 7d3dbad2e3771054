"""The hot path: the ``DatagramProtocol`` that reads datagrams on the event loop and the
dispatcher that hands them, in batches, to a ``ThreadPoolExecutor`` whose workers decode,
account and handle them.

The event-loop thread does only the cheap work (size checks and appending to a batch), so it
can keep draining the socket; decoding, parsing and the handler run in the pool. The hand-off
is bounded by ``queue_size`` messages: what does not fit is dropped and counted, never buffered.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from udpchat.accounting import DeliveryAccounting, DeliveryTotals, SenderStats, Verdict
from udpchat.admission import Admission
from udpchat.stats import LATENCY_BOUNDS_S, DropReason, ServerCounters
from udpchat.wire import TextProblem, decode, parse_text, split_seed_datagram

logger = logging.getLogger("udpchat.server")

HANDLER_ERROR_LOG_INTERVAL_S = 10.0
BACKLOG_BATCHES_PER_JOB = 8
"""Batches waiting per running job beyond which the dispatcher starts another job."""


@dataclass(slots=True)
class Message:
    """One received datagram, as the handler sees it. Treat it as read-only.

    Not a frozen dataclass: one is built per datagram, and frozen ones cost four times as much.
    """

    sender: tuple[str, int]
    """The source (ip, port). Unauthenticated: anyone can forge it."""
    text: str
    """The decoded text; invalid UTF-8 bytes appear as ``\\xNN``. Not yet sanitised for display."""
    username: str | None
    """The username where the text is in the seed's format, else None."""
    counter: int | None
    """The counter where the text is in the seed's format, else None."""
    received_at: float
    """``time.time()`` when the event loop read the datagram's batch."""
    verdict: Verdict | None = None
    """Where the counter stands in its sender's sequence (new, duplicate, reordered, late);
    None where the text is not in the seed's format."""
    size: int = 0
    """The datagram's size in bytes."""

    @property
    def ip(self) -> str:
        return self.sender[0]


Handler = Callable[[Message], None]
"""Called once per message in a pool thread. May also have a ``flush()`` method, which a worker
calls when it runs out of queued messages, so that output can be written in few system calls."""


def _plain_ip(ip: str) -> str:
    """``::ffff:1.2.3.4`` (an IPv4 sender on a dual-stack socket) shown as ``1.2.3.4``."""
    return ip[7:] if ip.startswith("::ffff:") and "." in ip else ip


def _ipv6_sender(address: tuple[str, int, int, int]) -> tuple[str, int]:
    """(ip, port) from an IPv6 socket's 4-tuple; IPv4 sockets give (ip, port) already."""
    return _plain_ip(address[0]), address[1]


_Batch = list[tuple[bytes, Any]]


class _HandlerErrorLog:
    """Logs a failing handler's first error, then at most one line per interval with a count,
    so that a handler failing on every message of a flood cannot flood the log too."""

    def __init__(self, interval_s: float = HANDLER_ERROR_LOG_INTERVAL_S) -> None:
        self._interval_s = interval_s
        self._lock = threading.Lock()
        self._last_logged = -interval_s
        self._suppressed = 0

    def record(self, ip: str, error: Exception) -> None:
        with self._lock:
            now = time.monotonic()
            if now - self._last_logged < self._interval_s:
                self._suppressed += 1
                return
            suppressed, self._suppressed, self._last_logged = self._suppressed, 0, now
        more = f" ({suppressed} more failures since the last report)" if suppressed else ""
        logger.error("handler failed on a message from %s: %r%s", ip, error, more)


class Dispatcher:
    """Hands batches of datagrams to the pool, within the queue bound.

    Batches wait in a deque and pool jobs take them in arrival order until it is empty. Another
    job starts only when none runs or a backlog shows the running ones are behind, up to
    ``workers``: a CPU-bound handler then runs on one thread instead of fighting the others
    for the GIL, and a handler that blocks still gets every worker.
    """

    def __init__(
        self,
        handler: Handler | None,
        counters: ServerCounters,
        *,
        workers: int,
        queue_size: int,
        max_senders: int,
        ipv6_socket: bool,
    ):
        self._handler = handler
        self._plain_sender = _ipv6_sender if ipv6_socket else None
        self._flush: Callable[[], None] | None = getattr(handler, "flush", None)
        self._counters = counters
        self._queue_size = queue_size
        self._max_jobs = workers
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=workers, thread_name_prefix="udpchat-worker"
        )
        self._lock = threading.Lock()
        """Guards ``queued``, the job count and the deque's order of taking."""
        self._batches: deque[tuple[_Batch, float]] = deque()
        self._jobs = 0
        self._job_futures: set[concurrent.futures.Future[None]] = set()
        self.queued = 0
        self._error_log = _HandlerErrorLog()
        self._order_lock = threading.Lock()
        """Held while a batch is taken and accounted; never taken by the event-loop thread."""
        self._accounting = DeliveryAccounting(max_senders)

    def submit(self, batch: _Batch, received_at: float) -> None:
        """Called on the loop thread: keep what fits in the queue, drop and count the rest."""
        room = self._queue_size - self.queued
        if len(batch) > room:
            self._counters.dropped[DropReason.QUEUE_FULL] += len(batch) - max(room, 0)
            batch = batch[: max(room, 0)]
            if not batch:
                return
        with self._lock:
            self.queued += len(batch)
            self._batches.append((batch, received_at))
            start_job = self._jobs < self._max_jobs and (
                self._jobs == 0 or len(self._batches) > BACKLOG_BATCHES_PER_JOB * self._jobs
            )
            if start_job:
                self._jobs += 1
        if start_job:
            future = self._executor.submit(self._run_job)
            self._job_futures.add(future)
            future.add_done_callback(self._job_futures.discard)

    def _take(self) -> tuple[_Batch, float] | None:
        with self._lock:
            if self._batches:
                return self._batches.popleft()
            self._jobs -= 1
            return None

    def _run_job(self) -> None:
        while True:
            # Taken and accounted under one lock, so that batches are accounted in arrival
            # order even though several workers take them; the handlers then run in parallel.
            with self._order_lock:
                item = self._take()
                if item is None:
                    break
                batch, received_at = item
                messages, problems = self._prepare(batch, received_at)
            self._handle(messages, problems, received_at)
        if self._flush is not None:
            self._flush()

    def _prepare(self, batch: _Batch, received_at: float) -> tuple[list[Message], dict[str, int]]:
        """Decode, parse and account a batch: the messages and the problems counted."""
        problems: dict[str, int] = {}
        plain_sender = self._plain_sender
        record = self._accounting.record
        messages: list[Message] = []
        append = messages.append
        for data, address in batch:
            sender = address if plain_sender is None else plain_sender(address)
            seed_fields = split_seed_datagram(data)
            if seed_fields is not None:
                text, username, counter = seed_fields
            else:
                text, valid_utf8 = decode(data)
                if not valid_utf8:
                    problems["invalid_utf8"] = problems.get("invalid_utf8", 0) + 1
                parsed = parse_text(text)
                if isinstance(parsed, TextProblem):
                    problems[parsed.value] = problems.get(parsed.value, 0) + 1
                    append(Message(sender, text, None, None, received_at, None, len(data)))
                    continue
                username, counter = parsed
            verdict = record((sender, username), counter, received_at)
            append(Message(sender, text, username, counter, received_at, verdict, len(data)))
        return messages, problems

    def _handle(
        self, messages: list[Message], problems: dict[str, int], received_at: float
    ) -> None:
        """Run the handler once per message and time each one from the batch's receipt."""
        handler = self._handler
        handler_errors = 0
        latency_counts = [0] * (len(LATENCY_BOUNDS_S) + 1)
        latency_sum_s = 0.0
        # The batch shares one receipt time and the clock only moves on, so each message's
        # bucket is the previous one's or a later one: no search per message.
        deadlines = [received_at + bound for bound in LATENCY_BOUNDS_S] + [math.inf]
        bucket, deadline = 0, deadlines[0]
        clock = time.time
        for message in messages:
            if handler is not None:
                try:
                    handler(message)
                except Exception as error:
                    handler_errors += 1
                    self._error_log.record(message.ip, error)
            done = clock()
            while done > deadline:
                bucket += 1
                deadline = deadlines[bucket]
            latency_counts[bucket] += 1
            latency_sum_s += done - received_at
        with self._lock:
            self.queued -= len(messages)
        self._counters.add_handled(
            len(messages), handler_errors, problems, latency_counts, latency_sum_s
        )

    def delivery(self, include_senders: bool) -> tuple[DeliveryTotals, tuple[SenderStats, ...]]:
        with self._order_lock:
            senders = self._accounting.senders() if include_senders else ()
            return self._accounting.totals(), senders

    async def drain(self, timeout_s: float) -> bool:
        """Wait for the queued batches; after the timeout, drop and count those not started.

        Returns False when a job is still running in a worker (a stuck handler or flush).
        """
        jobs = [asyncio.wrap_future(future) for future in list(self._job_futures)]
        if jobs:
            await asyncio.wait(jobs, timeout=timeout_s)
        with self._lock:
            abandoned = sum(len(batch) for batch, _ in self._batches)
            self._batches.clear()
            self.queued -= abandoned
        self._counters.dropped[DropReason.SHUTDOWN] += abandoned
        self._executor.shutdown(wait=False)
        return all(future.done() for future in list(self._job_futures))


class Receiver(asyncio.DatagramProtocol):
    """The hot path on the event-loop thread: size-check and append to the next batch."""

    def __init__(
        self,
        dispatcher: Dispatcher,
        counters: ServerCounters,
        *,
        max_datagram_size: int,
        admission: Admission | None,
    ):
        self._max_size = max_datagram_size
        self._admission = admission
        self._dispatcher = dispatcher
        self._counters = counters
        self._batch: _Batch = []
        self._loop = asyncio.get_running_loop()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if self._admission is not None or not 0 < len(data) <= self._max_size:
            refusal = self._refusal(data, addr)
            if refusal is not None:
                self._counters.received += 1
                self._counters.dropped[refusal] += 1
                return
        batch = self._batch
        batch.append((data, addr))
        if len(batch) == 1:
            self._loop.call_soon(self.dispatch)

    def _refusal(self, data: bytes, addr: Any) -> DropReason | None:
        """Why a datagram that failed the fast checks is dropped; None to take it after all."""
        if not data:
            return DropReason.EMPTY
        if len(data) > self._max_size:
            return DropReason.OVERSIZE
        if self._admission is not None:
            return self._admission.refusal(_plain_ip(addr[0]))
        return None

    def dispatch(self) -> None:
        """Hand the datagrams read in this loop iteration to the pool; they count as received
        from here, so that ``received == handled + dropped + queue_depth`` at every moment."""
        batch, self._batch = self._batch, []
        if batch:
            self._counters.received += len(batch)
            self._dispatcher.submit(batch, time.time())

    def error_received(self, exc: Exception) -> None:
        logger.warning("socket error: %s", exc)
