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
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TextIO

from udpchat.admission import (
    DEFAULT_MAX_SOURCES,
    Admission,
    IPNetwork,
    RateLimiter,
    SourceFilter,
)
from udpchat.sockets import bind_udp_socket, kernel_drop_count, receive_buffer_size
from udpchat.stats import DropReason, ServerCounters, StatsSnapshot
from udpchat.wire import ParsedText, decode, format_line, parse_text

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
MAX_UDP_PAYLOAD = 65535


@dataclass(frozen=True, slots=True)
class Message:
    """One received datagram, as the handler sees it."""

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

    @property
    def ip(self) -> str:
        return self.sender[0]


Handler = Callable[[Message], None]
"""Called once per message in a pool thread. May also have a ``flush()`` method, which the
worker calls after each batch, so that output can be written in one system call."""


class LinePrinter:
    """The seed's handler: one ``[ip] text`` line per message; whole lines, whatever the workers."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._lock = threading.Lock()

    def __call__(self, message: Message) -> None:
        line = format_line(message.sender[0], message.text) + "\n"
        with self._lock:
            self._stream.write(line)

    def flush(self) -> None:
        with self._lock:
            self._stream.flush()


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
    """Runs batches of datagrams through the handler in the pool, within the queue bound."""

    def __init__(self, config: ServerConfig, handler: Handler | None, counters: ServerCounters):
        self._handler = handler
        self._flush: Callable[[], None] | None = getattr(handler, "flush", None)
        self._counters = counters
        self._queue_size = config.queue_size
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=config.workers, thread_name_prefix="udpchat-worker"
        )
        self._queued_lock = threading.Lock()
        self.queued = 0
        self._in_flight: dict[concurrent.futures.Future[None], int] = {}
        self._error_log = _HandlerErrorLog()

    def submit(self, batch: _Batch, received_at: float) -> None:
        """Called on the loop thread: keep what fits in the queue, drop and count the rest."""
        room = self._queue_size - self.queued
        if len(batch) > room:
            self._counters.dropped[DropReason.QUEUE_FULL] += len(batch) - max(room, 0)
            batch = batch[: max(room, 0)]
            if not batch:
                return
        with self._queued_lock:
            self.queued += len(batch)
        future = self._executor.submit(self._run_batch, batch, received_at)
        self._in_flight[future] = len(batch)
        future.add_done_callback(self._forget)

    def _forget(self, future: concurrent.futures.Future[None]) -> None:
        self._in_flight.pop(future, None)

    def _run_batch(self, batch: _Batch, received_at: float) -> None:
        handler = self._handler
        handler_errors = 0
        problems: dict[str, int] = {}
        for data, address in batch:
            text, valid_utf8 = decode(data)
            if not valid_utf8:
                problems["invalid_utf8"] = problems.get("invalid_utf8", 0) + 1
            parsed = parse_text(text)
            username: str | None = None
            counter: int | None = None
            if isinstance(parsed, ParsedText):
                username, counter = parsed.username, parsed.counter
            else:
                problems[parsed.value] = problems.get(parsed.value, 0) + 1
            message = Message(
                (_plain_ip(address[0]), address[1]),
                text,
                username,
                counter,
                received_at,
            )
            if handler is None:
                continue
            try:
                handler(message)
            except Exception as error:
                handler_errors += 1
                self._error_log.record(message.ip, error)
        if self._flush is not None:
            self._flush()
        with self._queued_lock:
            self.queued -= len(batch)
        self._counters.add_handled(len(batch), handler_errors, problems)

    async def drain(self, timeout_s: float) -> bool:
        """Wait for queued batches; after the timeout, cancel those not started and count them.

        Returns False when some batch is still running in a worker (a stuck handler).
        """
        pending = list(self._in_flight.items())
        if pending:
            await asyncio.wait([asyncio.wrap_future(f) for f, _ in pending], timeout=timeout_s)
        for future, size in pending:
            if future.cancel():
                self._counters.dropped[DropReason.SHUTDOWN] += size
                with self._queued_lock:
                    self.queued -= size
        self._executor.shutdown(wait=False)
        return self.queued == 0


class _Receiver(asyncio.DatagramProtocol):
    """The hot path on the event-loop thread: count, size-check, append to the next batch."""

    def __init__(self, config: ServerConfig, dispatcher: _Dispatcher, counters: ServerCounters):
        self._max_size = config.max_datagram_size
        self._admission = config.admission()
        self._dispatcher = dispatcher
        self._counters = counters
        self._batch: _Batch = []
        self._loop = asyncio.get_running_loop()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        counters = self._counters
        counters.received += 1
        size = len(data)
        if size == 0:
            counters.dropped[DropReason.EMPTY] += 1
        elif size > self._max_size:
            counters.dropped[DropReason.OVERSIZE] += 1
        elif self._admission is not None and (
            refusal := self._admission.refusal(_plain_ip(addr[0]))
        ):
            counters.dropped[refusal] += 1
        else:
            self._batch.append((data, addr))
            if len(self._batch) == 1:
                self._loop.call_soon(self.dispatch)

    def dispatch(self) -> None:
        batch, self._batch = self._batch, []
        if batch:
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
        sock = bind_udp_socket(self.config.host, self.config.port, rcvbuf=self.config.rcvbuf)
        self._dispatcher = _Dispatcher(self.config, self._handler, self._counters)
        receiver = _Receiver(self.config, self._dispatcher, self._counters)
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(lambda: receiver, sock=sock)
        self._transport, self._receiver, self._socket = transport, receiver, sock
        logger.info("listening on %s port %d", *self.address)

    async def stop(self) -> bool:
        """Stop receiving, hand over the last batch, and drain the pool within the timeout.

        Returns False when a handler was still running at the timeout; its messages stay in
        ``stats().queue_depth``, so that ``received == handled + dropped + queue_depth``.
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

    def stats(self) -> StatsSnapshot:
        queued = self._dispatcher.queued if self._dispatcher else 0
        return self._counters.snapshot(queue_depth=queued, kernel_drops=self.kernel_drops())

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
