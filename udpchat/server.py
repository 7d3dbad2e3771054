"""The server's lifecycle: :class:`ServerConfig` says what to run, :class:`Server` binds the
socket, starts the pipeline (:mod:`udpchat.pipeline`) and stops it with a bounded drain.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from dataclasses import dataclass
from types import TracebackType

from udpchat.accounting import DEFAULT_MAX_SENDERS
from udpchat.admission import (
    DEFAULT_MAX_SOURCES,
    Admission,
    IPNetwork,
    RateLimiter,
    SourceFilter,
)
from udpchat.pipeline import Dispatcher, Handler, Message, Receiver
from udpchat.sockets import bind_udp_socket, kernel_drop_count, receive_buffer_size
from udpchat.stats import ServerCounters, StatsSnapshot

__all__ = ["Handler", "Message", "Server", "ServerConfig"]

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
MAX_READS_AT_STOP = 100_000
MAX_UDP_PAYLOAD = 65535


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
        self._receiver: Receiver | None = None
        self._dispatcher: Dispatcher | None = None
        self._socket: socket.socket | None = None
        self._kernel_drops_at_stop: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.output_error: OSError | None = None
        """Why writing messages failed, once it has: the server stops taking work then."""
        self.failed = asyncio.Event()
        """Set when output failed for good (a broken pipe, a full disk): a caller serving until
        a signal should stop, as a Unix filter does when its reader goes away."""

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
        self._loop = asyncio.get_running_loop()
        self._dispatcher = Dispatcher(
            self._handler,
            self._counters,
            workers=self.config.workers,
            queue_size=self.config.queue_size,
            max_senders=self.config.max_senders,
            ipv6_socket=ipv6_socket,
            on_output_error=self._output_failed_in_worker,
        )
        receiver = Receiver(
            self._dispatcher,
            self._counters,
            max_datagram_size=self.config.max_datagram_size,
            admission=self.config.admission(),
        )
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

    def _output_failed_in_worker(self, error: OSError) -> None:
        """Called from a pool thread: note the first output failure on the loop."""
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._note_output_error, error)

    def _note_output_error(self, error: OSError) -> None:
        if self.output_error is None:
            self.output_error = error
            self.failed.set()

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
