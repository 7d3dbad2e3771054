"""The server's lifecycle: :class:`ServerConfig` says what to run, :class:`Server` binds the
socket, starts the pipeline (:mod:`udpchat.pipeline`) with the relay room, the metrics endpoint
and the status line the config asks for, serves until stopped and stops with a bounded drain.
"""

from __future__ import annotations

import asyncio
import logging
import math
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TextIO

from udpchat.accounting import DEFAULT_MAX_SENDERS
from udpchat.admission import (
    DEFAULT_MAX_SOURCES,
    Admission,
    IPNetwork,
    RateLimiter,
    SourceFilter,
)
from udpchat.bus import DEFAULT_CONNECT_TIMEOUT_S, DEFAULT_ROOM, BusConfig, RoomBus
from udpchat.metrics import DEFAULT_METRICS_HOST, MetricsServer
from udpchat.output import LinePrinter, OutputFormat
from udpchat.pipeline import Dispatcher, Handler, Message, Receiver
from udpchat.relay import DEFAULT_MAX_PEERS, DEFAULT_PEER_TIMEOUT_S, CookieJar, Relay, Room
from udpchat.runtime import periodically
from udpchat.sockets import bind_udp_socket, kernel_drop_count, receive_buffer_size
from udpchat.stats import ServerCounters, StatsSnapshot, StatusLine

__all__ = ["Handler", "Message", "Server", "ServerConfig"]

logger = logging.getLogger("udpchat.server")
status_logger = logging.getLogger("udpchat.status")
"""The periodic status line, at INFO: an application shows it by enabling this logger."""

DEFAULT_HOST = "0.0.0.0"
DEFAULT_PORT = 5002
DEFAULT_WORKERS = 4
MAX_WORKERS = 1024
DEFAULT_MAX_DATAGRAM_SIZE = 1024
"""Bytes; the seed's ``recvfrom(1024)`` buffer."""
MAX_DATAGRAM_SIZE = 65507
"""The largest UDP payload over IPv4."""
DEFAULT_QUEUE_SIZE = 65536
"""Messages waiting for a worker, at most."""
DEFAULT_DRAIN_TIMEOUT_S = 5.0
DEFAULT_RCVBUF = 4 * 1024 * 1024
"""Bytes asked for the socket's receive buffer, so that bursts wait in the kernel, not drop."""
MAX_PEERS = 1024
MAX_READS_AT_STOP = 100_000
MAX_UDP_PAYLOAD = 65535
MAX_PORT = 65535

_AT_LEAST_ONE = (
    "workers",
    "max_datagram_size",
    "queue_size",
    "max_sources",
    "max_senders",
    "max_peers",
)
_AT_MOST = {"workers": MAX_WORKERS, "max_datagram_size": MAX_DATAGRAM_SIZE, "max_peers": MAX_PEERS}
_POSITIVE_OR_NONE = (
    "rcvbuf",
    "rate_limit_per_s",
    "rate_burst",
    "stats_interval_s",
    "nats_connect_timeout_s",
)


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """Everything a server needs to know before it starts; checked when it is built, so that
    a wrong value fails here with the field's name and not later with a socket bound."""

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
    relay: bool = False
    """Run a chat room (:mod:`udpchat.relay`): members' texts go to the other members."""
    peer_timeout_s: float = DEFAULT_PEER_TIMEOUT_S
    """Seconds of silence after which a member leaves the room."""
    max_peers: int = DEFAULT_MAX_PEERS
    """Members in the room, at most; joins beyond it are refused and counted."""
    metrics_port: int | None = None
    """Serve Prometheus metrics over HTTP on this TCP port (0: any free port); None: no endpoint."""
    metrics_host: str = DEFAULT_METRICS_HOST
    stats_interval_s: float | None = None
    """Log a status line to the ``udpchat.status`` logger this often; None: never."""
    output_format: OutputFormat | None = None
    """Write one line per message to the server's output stream (stdout unless given), when
    no handler is given; None writes nothing."""
    nats: tuple[str, ...] = ()
    """NATS seed URLs (``nats://``, ``tls://``; credentials may ride in them): with ``relay``,
    one room spans every server attached to the same NATS cluster and ``room``."""
    room: str = DEFAULT_ROOM
    """The room's name on NATS (letters, digits, ``_``, ``-``): several rooms share a cluster."""
    nats_credentials: Path | None = None
    """A NATS ``.creds`` file (user JWT and NKey seed)."""
    nats_nkey_seed: Path | None = None
    """A NATS NKey seed file."""
    nats_ca_file: Path | None = None
    """CA certificates to verify the NATS servers' TLS certificates with."""
    nats_connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S
    """How long ``start()`` waits for NATS before it fails."""

    def __post_init__(self) -> None:
        for name in _AT_LEAST_ONE:
            value = getattr(self, name)
            if value < 1 or value > _AT_MOST.get(name, math.inf):
                limit = _AT_MOST.get(name)
                raise ValueError(
                    f"{name} must be at least 1"
                    + (f" and at most {limit}" if limit else "")
                    + f", not {value!r}"
                )
        for name in _POSITIVE_OR_NONE:
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be positive or None, not {value!r}")
        if not 0 <= self.port <= MAX_PORT:
            raise ValueError(f"port must be 0 to {MAX_PORT}, not {self.port!r}")
        if self.metrics_port is not None and not 0 <= self.metrics_port <= MAX_PORT:
            raise ValueError(
                f"metrics_port must be 0 to {MAX_PORT} or None, not {self.metrics_port!r}"
            )
        if not self.drain_timeout_s >= 0:
            raise ValueError(f"drain_timeout_s must be 0 or more, not {self.drain_timeout_s!r}")
        if not self.peer_timeout_s > 0:
            raise ValueError(f"peer_timeout_s must be positive, not {self.peer_timeout_s!r}")
        for name in ("host", "metrics_host"):
            if not getattr(self, name):
                raise ValueError(f"{name} must not be empty")
        if self.nats and not self.relay:
            raise ValueError("nats needs relay=True: only a room goes onto NATS")
        self.bus_config()  # checks the room's name and the URLs

    def bus_config(self) -> BusConfig | None:
        """The room's NATS attachment this config asks for; None without ``nats``."""
        if not self.nats:
            return None
        return BusConfig(
            self.nats,
            room=self.room,
            credentials_file=self.nats_credentials,
            nkey_seed_file=self.nats_nkey_seed,
            ca_file=self.nats_ca_file,
            max_text_bytes=self.max_datagram_size,
            connect_timeout_s=self.nats_connect_timeout_s,
        )

    def admission(self) -> Admission | None:
        """The allow-list and rate limiter this config asks for; None when it asks for neither."""
        if not self.allow and self.rate_limit_per_s is None:
            return None
        source_filter = SourceFilter(self.allow, self.max_sources) if self.allow else None
        limiter = None
        if self.rate_limit_per_s is not None:
            limiter = RateLimiter(self.rate_limit_per_s, self.rate_burst, self.max_sources)
        return Admission(source_filter, limiter, time.monotonic)


class MetricsStartError(OSError):
    """The metrics endpoint could not listen; the UDP socket was closed again."""


class Server:
    """A udpchat server for asyncio applications: ``async with Server(config, handler) as server``.

    ``start()`` binds and returns once datagrams are being received; ``serve()`` runs until
    :meth:`request_stop`, a fatal error or cancellation, then stops; ``stop()`` stops receiving,
    lets queued messages finish within ``drain_timeout_s`` and counts the rest as dropped. An
    incomplete drain is logged as a warning on ``udpchat.server`` and reported by ``stop()``'s
    and ``serve()``'s result (False), never raised: the counts stay right either way.
    """

    def __init__(
        self,
        config: ServerConfig | None = None,
        handler: Handler | None = None,
        *,
        output: TextIO | None = None,
    ) -> None:
        self.config = config or ServerConfig()
        if handler is not None and self.config.output_format is not None:
            raise ValueError("give a handler or config.output_format, not both")
        if handler is None and self.config.output_format is not None:
            handler = LinePrinter(output or sys.stdout, self.config.output_format)
        self._relay: Relay | None = None
        self._bus: RoomBus | None = None
        if self.config.relay:
            room = Room(self.config.max_peers, self.config.peer_timeout_s)
            bus_config = self.config.bus_config()
            if bus_config is not None:
                self._bus = RoomBus(bus_config, self._relay_remote)
            publish = None if self._bus is None else self._bus.publish
            self._relay = Relay(room, CookieJar(), handler, self.send_datagram, publish)
            handler = self._relay
        self._handler = handler
        self._counters = ServerCounters()
        self._transport: asyncio.DatagramTransport | None = None
        self._receiver: Receiver | None = None
        self._dispatcher: Dispatcher | None = None
        self._socket: socket.socket | None = None
        self._kernel_drops_at_stop: int | None = None
        self._metrics: MetricsServer | None = None
        self._should_exit = asyncio.Event()
        self._abandoned = asyncio.Event()
        self._closed = asyncio.Event()
        self._drained: bool | None = None
        self._fatal_error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def address(self) -> tuple[str, int]:
        """The bound (host, port); with port 0 in the config, the port the OS chose."""
        if self._transport is None:
            raise RuntimeError("the server is not started")
        sockname = self._transport.get_extra_info("sockname")
        return sockname[0], sockname[1]

    @property
    def started(self) -> bool:
        """True from the end of :meth:`start` to the beginning of :meth:`stop`."""
        return self._transport is not None

    @property
    def relay(self) -> Relay | None:
        """The chat room's relay (its room, its counters) when the config asks for one."""
        return self._relay

    @property
    def metrics_address(self) -> tuple[str, int] | None:
        """The metrics endpoint's bound (host, port); None when the config asks for none."""
        return None if self._metrics is None else self._metrics.address

    async def start(self) -> None:
        if self._transport is not None:
            raise RuntimeError("the server is already started")
        config = self.config
        sock = bind_udp_socket(
            config.host, config.port, rcvbuf=config.rcvbuf, reuse_port=config.reuse_port
        )
        try:
            if self._bus is not None:
                await self._bus.start()
            if config.metrics_port is not None:
                self._metrics = await self._start_metrics(config.metrics_host, config.metrics_port)
            self._loop = asyncio.get_running_loop()
            self._dispatcher = Dispatcher(
                self._handler,
                self._counters,
                workers=config.workers,
                queue_size=config.queue_size,
                max_senders=config.max_senders,
                ipv6_socket=sock.family == socket.AF_INET6,
                on_output_error=self._output_failed_in_worker,
            )
            receiver = Receiver(
                self._dispatcher,
                self._counters,
                max_datagram_size=config.max_datagram_size,
                admission=config.admission(),
            )
            transport, _ = await self._loop.create_datagram_endpoint(lambda: receiver, sock=sock)
        except BaseException:
            sock.close()
            if self._metrics is not None:
                await self._metrics.close()
                self._metrics = None
            if self._bus is not None:
                await self._bus.stop()
            raise
        self._transport, self._receiver, self._socket = transport, receiver, sock
        host, port = self.address
        logger.info(
            "listening on %s port %d, receive buffer %d bytes",
            host,
            port,
            receive_buffer_size(sock),
        )
        if self._metrics is not None:
            logger.info("metrics on http://%s:%d/metrics", *self._metrics.address)

    async def _start_metrics(self, host: str, port: int) -> MetricsServer:
        try:
            return await MetricsServer.start(lambda: self.stats(include_senders=False), host, port)
        except OSError as error:
            raise MetricsStartError(
                error.errno, f"cannot serve metrics on {host} port {port}: {error.strerror}"
            ) from None

    async def serve(self) -> bool:
        """Start (unless started), serve until :meth:`request_stop`, a fatal error or
        cancellation, then stop; returns whether the drain finished (see :meth:`stop`).

        A fatal error (see :meth:`fail`) is raised after the stop, so that the counts are final.
        Cancellation also stops with a drain before it propagates.
        """
        if self._transport is None:
            await self.start()
        try:
            async with periodically(self.config.stats_interval_s, self._log_status()):
                await self._should_exit.wait()
        finally:
            drained = await self.stop()
        if self._fatal_error is not None:
            raise self._fatal_error
        return drained

    def _log_status(self) -> Callable[[], None]:
        status_line = StatusLine()

        def log() -> None:
            status_logger.info("%s", status_line(self.stats(include_senders=False)))

        return log

    def request_stop(self) -> None:
        """Ask :meth:`serve` to stop; call it on the server's loop (from a thread, through
        ``loop.call_soon_threadsafe``)."""
        self._should_exit.set()

    def fail(self, error: BaseException) -> None:
        """End :meth:`serve` with ``error`` (raised after the drain): for failures that make
        serving pointless, such as output that can no longer be written. Call it on the loop."""
        if self._fatal_error is None:
            self._fatal_error = error
        self._should_exit.set()

    def abandon(self) -> None:
        """Stop now, without waiting for the drain (an operator's second Ctrl-C): ``serve()``
        and ``stop()`` return False at once, and what is still queued stays counted as queued.
        Call it on the loop."""
        self._abandoned.set()
        self._should_exit.set()

    async def wait_closed(self) -> bool:
        """Wait until the server has stopped; returns whether the drain finished."""
        await self._closed.wait()
        assert self._drained is not None
        return self._drained

    async def stop(self) -> bool:
        """Stop receiving, hand over the last batch, and drain the pool within the timeout.

        Returns False when a worker was still busy at the timeout (a stuck handler or output),
        and logs a warning; messages it still holds stay in ``stats().queue_depth``, so that
        ``received == handled + dropped + queue_depth``.
        """
        if self._transport is None or self._receiver is None or self._dispatcher is None:
            return True if self._drained is None else self._drained
        self._should_exit.set()
        logger.info("stopping: finishing %d queued messages", self._dispatcher.queued)
        self._read_what_the_kernel_holds()
        self._kernel_drops_at_stop = self.kernel_drops()
        self._transport.close()
        self._transport = None
        self._receiver.dispatch()
        draining = asyncio.ensure_future(self._dispatcher.drain(self.config.drain_timeout_s))
        abandoning = asyncio.ensure_future(self._abandoned.wait())
        try:
            await asyncio.wait({draining, abandoning}, return_when=asyncio.FIRST_COMPLETED)
            idle = draining.done() and draining.result()
        finally:
            draining.cancel()
            abandoning.cancel()
            if self._bus is not None:  # after the drain: members' last texts go out too
                await self._bus.stop()
            if self._metrics is not None:
                await self._metrics.close()
                self._metrics = None
        if not idle:
            logger.warning(
                "a worker was still stuck in its handler or output after the drain timeout "
                "(%s s); %d messages were not finished",
                self.config.drain_timeout_s,
                self._dispatcher.queued,
            )
        self._drained = idle
        self._closed.set()
        return idle

    def _relay_remote(self, ip: str, text: str) -> None:
        """A member's text from another server on the bus, to this server's members."""
        assert self._relay is not None
        self._relay.relay_remote(ip, text)

    def _output_failed_in_worker(self, error: OSError) -> None:
        """Called from a pool thread when output can no longer be written (a broken pipe, a
        full disk): :meth:`serve` stops and raises it, as a Unix filter stops."""
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self.fail, error)

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
        relay = None if self._relay is None else self._relay.stats()
        bus = None if self._bus is None else self._bus.stats()
        if self._dispatcher is None:
            return self._counters.snapshot(relay=relay, bus=bus)
        delivery, senders = self._dispatcher.delivery(include_senders)
        return self._counters.snapshot(
            kernel_drops=self.kernel_drops(),
            delivery=delivery,
            senders=senders,
            relay=relay,
            bus=bus,
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
