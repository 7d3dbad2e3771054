"""The hot path: the ``DatagramProtocol`` that reads datagrams on the event loop, and the
dispatcher that hands them, in batches, to a ``ThreadPoolExecutor`` whose workers parse,
account and handle them.

The event-loop thread does only the cheap work (size checks and appending to a batch), so it
can keep draining the socket. A worker takes one batch at a time through four stages, each a
pass over the whole batch: parse (one regex match on the bytes for seed text), account (per
sender, in arrival order), handle (a batch handler such as the line printer writes the batch in
one call), count. The hand-off is bounded by ``queue_size`` datagrams: what does not fit is
dropped and counted, never buffered.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import logging
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from concurrent.futures.thread import _worker
from dataclasses import dataclass, field
from typing import Any, Protocol, cast, runtime_checkable

from udpchat.accounting import DeliveryAccounting, DeliveryTotals, SeedFields, SenderStats, Verdict
from udpchat.admission import Admission
from udpchat.fastpath import clean_seeds
from udpchat.stats import DropReason, ServerCounters
from udpchat.wire import TextProblem, decode, parse_text

logger = logging.getLogger("udpchat.server")

ERROR_LOG_INTERVAL_S = 10.0
STALL_S = 0.02
"""A running job that has not taken a batch for this long is blocked (in a handler that waits
on I/O, say): only then does the dispatcher start another one. A job that is merely busy keeps
the work to itself, because with the GIL a second thread on CPU-bound work only adds
switching."""
MAX_BATCH_BYTES = 128 * 1024
"""Datagram bytes in one batch, at most (a batch holds at least one datagram): what one worker
formats and writes at once, so pending output per worker stays bounded whatever the rate."""

BASE_RSS_BYTES = 48 * 2**20
"""A server process at rest: the interpreter, uvloop, typer, rich, prometheus-client (measured
44 MiB)."""
QUEUED_DATAGRAM_OVERHEAD_BYTES = 320
"""Beside its payload, what a waiting datagram costs: the bytes object's header, its address
tuple and the batch entry (measured 280)."""
SENDER_BYTES = 2048
"""One sender's delivery state with its 64 gaps open, key included (measured 1,620)."""
OUTPUT_EXPANSION = 20
"""Bytes held while one batch is formatted, per byte of the batch, at most: a control byte is
six in JSON (``\u0001``), and the lines, their join and its encoding are alive at once."""
SOURCE_BYTES = 256
"""One entry of the admission tables (rate limiter, allow-list cache)."""


def memory_bound_bytes(
    *, queue_size: int, max_datagram_size: int, max_senders: int, workers: int, max_sources: int
) -> int:
    """The most memory a server holds for traffic, whatever the traffic: what SECURITY.md
    states, and what the memory benchmark and the flood test measure against.

    Everything that grows with traffic is here: the queue (in datagrams of at most
    ``max_datagram_size``), the per-sender accounting, the output being formatted by each
    worker (and the batch the event loop is filling), and the admission tables.
    """
    batch_bytes = max(MAX_BATCH_BYTES, max_datagram_size)  # at least one datagram a batch
    return (
        BASE_RSS_BYTES
        + queue_size * (max_datagram_size + QUEUED_DATAGRAM_OVERHEAD_BYTES)
        + max_senders * SENDER_BYTES
        + (workers + 1) * OUTPUT_EXPANSION * batch_bytes
        + max_sources * SOURCE_BYTES
    )


Address = Any
"""A source address as the socket gives it: (ip, port), or IPv6's (ip, port, flow, scope)."""


@dataclass(slots=True)
class Message:
    """One received datagram, as a per-message handler sees it. Treat it as read-only.

    Not a frozen dataclass: one is built per datagram, and frozen ones cost four times as much.
    """

    sender: tuple[str, int]
    """The source (ip, port). Unauthenticated: anyone can forge it."""
    text: str
    """The decoded text, not yet sanitised for display. A datagram that is not valid UTF-8
    appears whole in Python's bytes notation (``\\xNN`` escapes)."""
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


@dataclass(slots=True)
class Batch:
    """Datagrams read in one event-loop iteration, as they go through the stages.

    The lists run in parallel, one entry per datagram. Clean seed text (printable ASCII, the
    common case) is never decoded: ``texts`` holds the decoded text of the others only.
    """

    received_at: float
    datagrams: list[tuple[bytes, Address]]
    senders: list[tuple[str, int]] = field(default_factory=list)
    """(ip, port) per datagram; an IPv4 sender on a dual-stack socket shown as IPv4."""
    seeds: list[SeedFields | None] = field(default_factory=list)
    """(username as UTF-8, counter) where the datagram is seed text, else None."""
    texts: dict[int, str] = field(default_factory=dict)
    """Decoded text by position, for every datagram that is not clean seed text."""
    verdicts: list[Verdict | None] = field(default_factory=list)
    problems: dict[str, int] = field(default_factory=dict)
    """Datagrams that were not clean seed text, by :class:`TextProblem` value or
    ``invalid_utf8``."""

    def __len__(self) -> int:
        return len(self.datagrams)

    def text(self, index: int) -> str:
        """The text of the datagram at ``index`` (clean seed text is ASCII: decoded as such)."""
        text = self.texts.get(index)
        return self.datagrams[index][0].decode("ascii") if text is None else text

    def messages(self) -> list[Message]:
        """One :class:`Message` per datagram, built only for handlers that want them."""
        received_at = self.received_at
        messages = []
        for index, ((data, _), sender, seed, verdict) in enumerate(
            zip(self.datagrams, self.senders, self.seeds, self.verdicts, strict=True)
        ):
            username, counter = (None, None) if seed is None else (seed[0].decode(), seed[1])
            text = self.text(index)
            messages.append(
                Message(sender, text, username, counter, received_at, verdict, len(data))
            )
        return messages


def parse(batch: Batch, plain_sender: Callable[[Address], tuple[str, int]] | None) -> None:
    """Stage one: senders, seed fields, and the decoded text of what is not clean seed text."""
    datagrams = batch.datagrams
    if plain_sender is None:
        batch.senders = [address for _, address in datagrams]
    else:
        batch.senders = [plain_sender(address) for _, address in datagrams]
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
    if isinstance(parsed, TextProblem):
        problems[parsed.value] = problems.get(parsed.value, 0) + 1
        return None
    return parsed.username.encode("utf-8"), parsed.counter


@runtime_checkable
class BatchHandler(Protocol):
    """Handles a whole batch in a pool thread: the fast way, one call and one write per batch.

    Returns how many of the batch's messages it failed to handle (counted as handler errors);
    raises :class:`OutputError` when its output failed, so that none of them counts as handled.
    """

    def handle_batch(self, batch: Batch) -> int: ...


Handler = Callable[[Message], None]
"""Called once per message in a pool thread. If it also has a ``flush()`` method
(:class:`Flushable`), the worker calls it after each batch, and the batch's messages count as
handled only once it returned."""


@runtime_checkable
class Flushable(Protocol):
    """A handler that buffers output and writes it when flushed."""

    def flush(self) -> None: ...


class OutputError(OSError):
    """Writing a batch's output failed (a broken pipe, a full disk): nothing of it is handled."""


class PerMessage:
    """Runs a per-message :data:`Handler` as a :class:`BatchHandler`: a :class:`Message` per
    datagram, every exception counted (``BaseException`` included, so that a handler calling
    ``sys.exit`` cannot take a worker down), then the handler's ``flush``."""

    def __init__(self, handler: Handler, error_log: RateLimitedLog) -> None:
        self._handler = handler
        self._flush = handler.flush if isinstance(handler, Flushable) else None
        self._error_log = error_log

    def handle_batch(self, batch: Batch) -> int:
        handler = self._handler
        errors = 0
        for message in batch.messages():
            try:
                handler(message)
            except OutputError:
                raise
            except BaseException as error:
                errors += 1
                self._error_log.record(f"handler failed on a message from {message.ip}", error)
        if self._flush is not None:
            try:
                self._flush()
            except OutputError:
                raise
            except BaseException as error:
                raise OutputError(f"flush failed: {error!r}") from error
        return errors


class RateLimitedLog:
    """Logs a failure's first occurrence, then at most one line per interval with a count, so
    that something failing on every message of a flood cannot flood the log too."""

    def __init__(self, interval_s: float = ERROR_LOG_INTERVAL_S) -> None:
        self._interval_s = interval_s
        self._lock = threading.Lock()
        self._last_logged = -interval_s
        self._suppressed = 0

    def record(self, what: str, error: BaseException) -> None:
        with self._lock:
            now = time.monotonic()
            if now - self._last_logged < self._interval_s:
                self._suppressed += 1
                return
            suppressed, self._suppressed, self._last_logged = self._suppressed, 0, now
        more = f" ({suppressed} more since the last report)" if suppressed else ""
        logger.error("%s: %r%s", what, error, more)


_WORKER_TAKES_INITIALIZER = list(inspect.signature(_worker).parameters) == [
    "executor_reference",
    "work_queue",
    "initializer",
    "initargs",
]
"""The private worker function is the one this pool was written against (CPython 3.11-3.13);
elsewhere the pool falls back to the executor's own, joined, threads rather than break."""


class _DaemonThreadPool(concurrent.futures.ThreadPoolExecutor):
    """A ``ThreadPoolExecutor`` whose threads do not keep the interpreter alive.

    The standard one joins its threads at exit, so one handler stuck forever would hang the
    process after the server stopped. Here, what the drain timeout gave up on is abandoned.
    """

    def _adjust_thread_count(self) -> None:
        if not _WORKER_TAKES_INITIALIZER:  # another CPython's internals: the standard threads
            super()._adjust_thread_count()
            return
        if self._idle_semaphore.acquire(timeout=0):
            return
        threads = cast(set[threading.Thread], self._threads)
        if len(threads) >= self._max_workers:
            return
        work_queue = self._work_queue

        def wake_on_collect(_: object, queue: Any = work_queue) -> None:
            queue.put(None)

        thread = threading.Thread(
            name=f"{self._thread_name_prefix}_{len(threads)}",
            target=_worker,
            args=(
                weakref.ref(self, wake_on_collect),
                work_queue,
                self._initializer,
                self._initargs,
            ),
            daemon=True,
        )
        thread.start()
        threads.add(thread)


class Dispatcher:
    """Hands batches of datagrams to the pool, within the queue bound.

    Batches wait in a deque and pool jobs take them in arrival order until it is empty. Another
    job starts only when none runs or the running ones have taken nothing for
    :data:`STALL_S`, up to ``workers``: a CPU-bound handler then runs on one thread instead of
    fighting the others for the GIL, and a handler that blocks still gets every worker.
    """

    def __init__(
        self,
        handler: Handler | BatchHandler | None,
        counters: ServerCounters,
        *,
        workers: int,
        queue_size: int,
        max_senders: int,
        ipv6_socket: bool,
        on_output_error: Callable[[OSError], None] | None = None,
    ):
        self._error_log = RateLimitedLog()
        self._output_error_log = RateLimitedLog()
        self._handler: BatchHandler | None
        if handler is None or isinstance(handler, BatchHandler):
            self._handler = handler
        else:
            self._handler = PerMessage(handler, self._error_log)
        self._plain_sender = _ipv6_sender if ipv6_socket else None
        self._counters = counters
        self._queue_size = queue_size
        self._max_jobs = workers
        self._on_output_error = on_output_error
        self._executor = _DaemonThreadPool(max_workers=workers, thread_name_prefix="udpchat-worker")
        self._lock = threading.Lock()
        """Guards the job count and the deque's order of taking."""
        self._batches: deque[Batch] = deque()
        self._jobs = 0
        self._last_take = 0.0
        """``time.monotonic()`` when a job last took a batch."""
        self._job_futures: set[concurrent.futures.Future[None]] = set()
        self._order_lock = threading.Lock()
        """Held while a batch is taken and accounted; the event loop takes it only for a
        snapshot (stats), so a snapshot waits for the batch being accounted, at most."""
        self._accounting = DeliveryAccounting(max_senders)

    def submit(self, datagrams: list[tuple[bytes, Address]], received_at: float) -> None:
        """Called on the loop thread: count the batch in, keep what fits in the queue, drop
        and count the rest."""
        received = len(datagrams)
        room = max(self._queue_size - self._counters.queued, 0)
        if received > room:
            datagrams = datagrams[:room]
        self._counters.take_in(received, len(datagrams))
        if not datagrams:
            return
        with self._lock:
            self._batches.append(Batch(received_at, datagrams))
            start_job = self._jobs < self._max_jobs and (
                self._jobs == 0 or time.monotonic() - self._last_take > STALL_S
            )
            if start_job:
                self._jobs += 1
                self._last_take = time.monotonic()
        if start_job:
            future = self._executor.submit(self._run_job)
            self._job_futures.add(future)
            future.add_done_callback(self._job_futures.discard)

    @property
    def queued(self) -> int:
        return self._counters.queued

    @property
    def full(self) -> bool:
        return self._counters.queued >= self._queue_size

    def _take(self) -> Batch | None:
        with self._lock:
            if self._batches:
                self._last_take = time.monotonic()
                return self._batches.popleft()
            self._jobs -= 1
            return None

    def _run_job(self) -> None:
        while True:
            # Taken and accounted under one lock, so that batches are accounted in arrival
            # order even though several workers take them; the handlers then run in parallel.
            with self._order_lock:
                batch = self._take()
                if batch is None:
                    return
                try:
                    parse(batch, self._plain_sender)
                    batch.verdicts = self._accounting.record_batch(
                        batch.senders, batch.seeds, batch.received_at
                    )
                except BaseException as error:
                    self._error_log.record("parsing or accounting failed on a batch", error)
                    self._finish(batch, 0, DropReason.INTERNAL_ERROR)
                    continue
            self._handle(batch)

    def _handle(self, batch: Batch) -> None:
        """Stage three and four: the handler, then the counts, whatever happened."""
        if self._handler is None:
            self._finish(batch, 0, None)
            return
        try:
            errors = self._handler.handle_batch(batch)
        except OSError as error:  # OutputError, or the stream's own error from a batch handler
            self._finish(batch, 0, DropReason.OUTPUT_FAILED)
            self._output_error_log.record(f"output failed, {len(batch)} messages lost", error)
            if self._on_output_error is not None:
                self._on_output_error(error)
            return
        except BaseException as error:
            self._error_log.record("handler failed on a batch", error)
            errors = len(batch)
        self._finish(batch, errors, None)

    def _finish(self, batch: Batch, handler_errors: int, dropped: DropReason | None) -> None:
        """Count the batch as handled (errors included) or dropped, then take it off the queue,
        so that ``received == handled + dropped + queued`` at every moment."""
        latency_s = time.time() - batch.received_at
        if dropped is None:
            self._counters.add_handled(len(batch), handler_errors, batch.problems, latency_s)
        else:
            self._counters.add_dropped(dropped, len(batch))

    def delivery(self, include_senders: bool) -> tuple[DeliveryTotals, tuple[SenderStats, ...]]:
        with self._order_lock:
            senders = self._accounting.senders() if include_senders else ()
            return self._accounting.totals(), senders

    async def drain(self, timeout_s: float) -> bool:
        """Wait for the queued batches; after the timeout, drop and count those not started.

        Returns False when a job is still running in a worker (a stuck handler or output).
        """
        jobs = [asyncio.wrap_future(future) for future in list(self._job_futures)]
        if jobs:
            await asyncio.wait(jobs, timeout=timeout_s)
        with self._lock:
            abandoned = sum(len(batch) for batch in self._batches)
            self._batches.clear()
        self._counters.add_dropped(DropReason.SHUTDOWN, abandoned)
        self._executor.shutdown(wait=False)
        return all(future.done() for future in list(self._job_futures))


def plain_ip(ip: str) -> str:
    """``::ffff:1.2.3.4`` (an IPv4 sender on a dual-stack socket) shown as ``1.2.3.4``."""
    return ip[7:] if ip.startswith("::ffff:") and "." in ip else ip


def _ipv6_sender(address: tuple[str, int, int, int]) -> tuple[str, int]:
    """(ip, port) from an IPv6 socket's 4-tuple; IPv4 sockets give (ip, port) already."""
    return plain_ip(address[0]), address[1]


class Receiver(asyncio.DatagramProtocol):
    """The hot path on the event-loop thread: size-check and append to the next batch.

    When the queue is full it sheds load at once: each datagram is counted as ``queue_full``
    before anything is built for it, until the workers have made room. (uvloop's datagram
    transport cannot pause reading; this is the cheapest point left.)
    """

    def __init__(
        self,
        dispatcher: Dispatcher,
        counters: ServerCounters,
        *,
        max_datagram_size: int,
        admission: Admission | None,
    ):
        self._max_size = max_datagram_size
        self._max_batch = max(1, MAX_BATCH_BYTES // max_datagram_size)
        self._admission = admission
        self._dispatcher = dispatcher
        self._counters = counters
        self._batch: list[tuple[bytes, Address]] = []
        self._loop = asyncio.get_running_loop()
        self._shedding = False
        self._slow_checks = admission is not None
        """Admission or shedding: every datagram takes :meth:`_refusal`."""

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if self._slow_checks or not 0 < len(data) <= self._max_size:
            refusal = self._refusal(data, addr)
            if refusal is not None:
                self._counters.refuse(refusal)
                return
        batch = self._batch
        batch.append((data, addr))
        if len(batch) == 1:
            self._loop.call_soon(self.dispatch)
        elif len(batch) >= self._max_batch:
            self.dispatch()

    def _refusal(self, data: bytes, addr: Any) -> DropReason | None:
        """Why a datagram that failed the fast checks is dropped; None to take it after all."""
        if not data:
            return DropReason.EMPTY
        if len(data) > self._max_size:
            return DropReason.OVERSIZE
        if self._shedding:
            if self._dispatcher.full:
                return DropReason.QUEUE_FULL
            self._shedding = False
            self._slow_checks = self._admission is not None
        if self._admission is not None:
            return self._admission.refusal(plain_ip(addr[0]))
        return None

    def dispatch(self) -> None:
        """Hand the datagrams read in this loop iteration to the pool; they count as received
        from here, so that ``received == handled + dropped + queue_depth`` at every moment."""
        batch, self._batch = self._batch, []
        if batch:
            self._dispatcher.submit(batch, time.time())
            if self._dispatcher.full:
                self._shedding = self._slow_checks = True

    def error_received(self, exc: Exception) -> None:
        logger.warning("socket error: %s", exc)
