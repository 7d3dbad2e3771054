"""The UDP server: an asyncio ``DatagramProtocol`` reads datagrams and hands them, in batches,
to a ``ThreadPoolExecutor`` whose workers call the per-message handler.

The event-loop thread does only the cheap work (size checks and appending to a batch), so it
can keep draining the socket; decoding, parsing and the handler run in the pool. The hand-off
is bounded by ``queue_size`` messages: what does not fit is dropped and counted, never buffered.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import math
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from udpchat.accounting import (
    DEFAULT_MAX_SENDERS,
    DeliveryAccounting,
    DeliveryTotals,
    SenderStats,
    Verdict,
)
from udpchat.admission import (
    DEFAULT_MAX_SOURCES,
    Admission,
    IPNetwork,
    RateLimiter,
    SourceFilter,
)
from udpchat.sockets import bind_udp_socket, kernel_drop_count, receive_buffer_size
from udpchat.stats import (
    LATENCY_BOUNDS_S,
    DropReason,
    ServerCounters,
    StatsSnapshot,
)
from udpchat.wire import TextProblem, decode, parse_text, split_seed_datagram

logger = logging.getLogger("udpchat.server")

DEFAULT_HOST = "0.0.0.0"
DEFAULT_PORT = 5002
DEFAULT_WORKERS = 4
DEFAULT_MAX_DATAGRAM_SIZE = 1024
"""Bytes; the seed's ``recvfrom(1024)`` buffer."""
DEFAULT_QUEUE_SIZE = 65536
"""Messages waiting for a worker, at most."""
DEFAULT_DRAIN_TIMEOUT_S = 5.0
DEFAULT_RCVBUF = 4 * 1024 * 1024
"""Bytes asked for the socket's receive buffer, so that bursts wait in the kernel, not drop."""
HANDLER_ERROR_LOG_INTERVAL_S = 10.0
MAX_READS_AT_STOP = 100_000
BACKLOG_BATCHES_PER_JOB = 8
"""Batches waiting per running job beyond which the dispatcher starts another job."""
MAX_UDP_PAYLOAD = 65535


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


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """Everything a server needs to know before it starts."""

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    workers: int = DEFAULT_WORKERS
    max_datagram_size: int = DEFAULT_MAX_DATAGRAM_SIZE
    queue_size: int = DEFAULT_QUEUE_SIZE
    drain_timeout_s: float = DEFAULT_DRAIN_TIMEOUT_S
    rcvbuf: int | None = DEFAULT_RCVBUF
    """Receive buffer to ask for, in bytes; None keeps the OS default."""
    allow: tuple[IPNetwork, ...] = ()
    """Accept only these source networks; empty accepts every source."""
    rate_limit_per_s: float | None = None
    """Messages a second per source address (token bucket); None for no limit."""
    rate_burst: float | None = None
    """Bucket size; defaults to one second's worth of ``rate_limit_per_s``."""
    max_sources: int = DEFAULT_MAX_SOURCES
    """Per-source table entries (rate limiter, allow-list cache), at most."""
    max_senders: int = DEFAULT_MAX_SENDERS
    """Senders (address + username) whose counters are tracked for loss, at most."""
    reuse_port: bool = False
    """Share the port with other sockets (``SO_REUSEPORT``): for one server per process."""

    def admission(self) -> Admission | None:
        """The allow-list and rate limiter this config asks for; None when it asks for neither."""
        if not self.allow and self.rate_limit_per_s is None:
            return None
        source_filter = SourceFilter(self.allow, self.max_sources) if self.allow else None
        limiter = None
        if self.rate_limit_per_s is not None:
            limiter = RateLimiter(self.rate_limit_per_s, self.rate_burst, self.max_sources)
        return Admission(source_filter, limiter, time.monotonic)


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


class _Dispatcher:
    """Hands batches of datagrams to the pool, within the queue bound.

    Batches wait in a deque and pool jobs take them in arrival order until it is empty. Another
    job starts only when none runs or a backlog shows the running ones are behind, up to
    ``workers``: a CPU-bound handler then runs on one thread instead of fighting the others
    for the GIL, and a handler that blocks still gets every worker.
    """

    def __init__(
        self,
        config: ServerConfig,
        handler: Handler | None,
        counters: ServerCounters,
        ipv6_socket: bool,
    ):
        self._handler = handler
        self._plain_sender = _ipv6_sender if ipv6_socket else None
        self._flush: Callable[[], None] | None = getattr(handler, "flush", None)
        self._counters = counters
        self._queue_size = config.queue_size
        self._max_jobs = config.workers
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=config.workers, thread_name_prefix="udpchat-worker"
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
        self._accounting = DeliveryAccounting(config.max_senders)

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


class _Receiver(asyncio.DatagramProtocol):
    """The hot path on the event-loop thread: size-check and append to the next batch."""

    def __init__(self, config: ServerConfig, dispatcher: _Dispatcher, counters: ServerCounters):
        self._max_size = config.max_datagram_size
        self._admission = config.admission()
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


class Server:
    """A udpchat server for asyncio applications: ``async with Server(config, handler) as server``.

    ``start()`` binds and returns once datagrams are being received; ``stop()`` stops receiving,
    lets queued messages finish within ``drain_timeout_s`` and counts the rest as dropped.
    """

    def __init__(self, config: ServerConfig | None = None, handler: Handler | None = None) -> None:
        self.config = config or ServerConfig()
        self._handler = handler
        self._counters = ServerCounters()
        self._transport: asyncio.DatagramTransport | None = None
        self._receiver: _Receiver | None = None
        self._dispatcher: _Dispatcher | None = None
        self._socket: socket.socket | None = None
        self._kernel_drops_at_stop: int | None = None

    @property
    def address(self) -> tuple[str, int]:
        """The bound (host, port); with port 0 in the config, the port the OS chose."""
        if self._transport is None:
            raise RuntimeError("the server is not started")
        sockname = self._transport.get_extra_info("sockname")
        return sockname[0], sockname[1]

    async def start(self) -> None:
        if self._transport is not None:
            raise RuntimeError("the server is already started")
        sock = bind_udp_socket(
            self.config.host,
            self.config.port,
            rcvbuf=self.config.rcvbuf,
            reuse_port=self.config.reuse_port,
        )
        ipv6_socket = sock.family == socket.AF_INET6
        self._dispatcher = _Dispatcher(self.config, self._handler, self._counters, ipv6_socket)
        receiver = _Receiver(self.config, self._dispatcher, self._counters)
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(lambda: receiver, sock=sock)
        self._transport, self._receiver, self._socket = transport, receiver, sock
        logger.info("listening on %s port %d", *self.address)

    async def stop(self) -> bool:
        """Stop receiving, hand over the last batch, and drain the pool within the timeout.

        Returns False when a worker was still busy at the timeout (a stuck handler or output);
        messages it still holds stay in ``stats().queue_depth``, so that
        ``received == handled + dropped + queue_depth``.
        """
        if self._transport is None or self._receiver is None or self._dispatcher is None:
            return True
        self._read_what_the_kernel_holds()
        self._kernel_drops_at_stop = self.kernel_drops()
        self._transport.close()
        self._receiver.dispatch()
        idle = await self._dispatcher.drain(self.config.drain_timeout_s)
        self._transport = None
        return idle

    def _read_what_the_kernel_holds(self) -> None:
        """Take in the datagrams already in the socket's buffer, so that none vanish uncounted
        at close; bounded, because a flood may still be arriving."""
        assert self._socket is not None and self._receiver is not None
        for _ in range(MAX_READS_AT_STOP):
            try:
                data, address = self._socket.recvfrom(MAX_UDP_PAYLOAD)
            except OSError:
                return
            self._receiver.datagram_received(data, address)

    def send_datagram(self, data: bytes, address: tuple[str, int]) -> bool:
        """Send from the server's own socket (safe from pool threads); False when the socket's
        buffer is full or the address is unreachable: UDP gives no other guarantee anyway."""
        if self._socket is None:
            raise RuntimeError("the server is not started")
        host, port = address
        if self._socket.family == socket.AF_INET6 and "." in host and ":" not in host:
            host = f"::ffff:{host}"  # an IPv4 peer of a dual-stack socket
        try:
            self._socket.sendto(data, (host, port))
        except OSError:
            return False
        return True

    @property
    def receive_buffer_bytes(self) -> int:
        """The receive buffer the OS granted (Linux reports twice the asked size)."""
        if self._socket is None:
            raise RuntimeError("the server is not started")
        return receive_buffer_size(self._socket)

    def kernel_drops(self) -> int | None:
        """Datagrams the kernel dropped before we could read them; None where the OS cannot say."""
        if self._transport is None or self._socket is None:
            return self._kernel_drops_at_stop
        return kernel_drop_count(self._socket)

    def stats(self, include_senders: bool = True) -> StatsSnapshot:
        """The counters now; ``include_senders=False`` skips the per-sender table (cheaper)."""
        if self._dispatcher is None:
            return self._counters.snapshot()
        delivery, senders = self._dispatcher.delivery(include_senders)
        return self._counters.snapshot(
            queue_depth=self._dispatcher.queued,
            kernel_drops=self.kernel_drops(),
            delivery=delivery,
            senders=senders,
        )

    async def __aenter__(self) -> Server:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()
