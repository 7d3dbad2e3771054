"""The server's lifecycle: :class:`ServerConfig` says what to run, :class:`Server` binds the
socket, starts the pipeline (:mod:`udpchat.pipeline`) with the relay room, the metrics endpoint
and the status line the config asks for, serves until stopped and stops with a bounded drain.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TextIO

from udpchat.accounting import DEFAULT_MAX_SENDERS, SENDER_BYTES
from udpchat.admission import DEFAULT_MAX_SOURCES, SOURCE_BYTES, Admission, IPNetwork
from udpchat.bus import DEFAULT_CONNECT_TIMEOUT_S, DEFAULT_ROOM, BusConfig, room_subject
from udpchat.counters import ServerTally, StatsSnapshot
from udpchat.echo import ANSWERED_SENDER_BYTES, DEFAULT_ECHO_RATE_PER_S, Echo
from udpchat.eventloop import periodically
from udpchat.fanout import FanOut
from udpchat.handlers import BatchHandler, Handler
from udpchat.lifecycle import StartsAndStops
from udpchat.metrics import MetricsServer, start_metrics
from udpchat.output import LinePrinter, OutputFormat
from udpchat.pipeline import Dispatcher, batch_limit
from udpchat.protocol import DropNotices, Receiver
from udpchat.record import (
    DEFAULT_EVENTS,
    DEFAULT_SENDERS,
    MAX_EVENTS,
    MAX_SENDERS,
    RecordFormat,
    RecordOptions,
    RecordWriter,
    interval_setting,
    max_bytes_setting,
    setting_of,
    start_recorded,
)
from udpchat.relay import (
    ANSWER_SOURCE_BYTES,
    DEFAULT_ANSWER_RATE_PER_S,
    DEFAULT_ANSWER_RATE_TOTAL_PER_S,
    DEFAULT_MAX_PEERS,
    DEFAULT_PEER_TIMEOUT_S,
    DEFAULT_RELAY_BUDGET_PER_S,
    DEFAULT_TEXT_RATE_PER_S,
    AnswerLimit,
    CookieJar,
    FanOutBudget,
    Relay,
    Room,
)
from udpchat.report import StatusLine
from udpchat.settings import ConfigError, check_bounds, check_host, setting
from udpchat.sockets import (
    MAX_PORT,
    MAX_RCVBUF,
    MAX_READS_AT_STOP,
    MAX_UDP_PAYLOAD,
    bind_udp_socket,
    is_loopback,
    is_wildcard,
    kernel_drop_count,
    plain_ip,
    receive_buffer_size,
    sendto_address,
)
from udpchat.transport import batch_transport
from udpchat.web import start_web
from udpchat.web.config import WebConfig, member_target

if TYPE_CHECKING:  # aiohttp is imported only by a server that serves the web view
    from udpchat.web.server_view import ServerView

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
MAX_PROCESSES = 256
MAX_PEERS = 1024
DEFAULT_METRICS_HOST = "127.0.0.1"
"""Loopback by default: the metrics say who talks to the server, which is not for everyone."""
DEFAULT_METRICS_SENDERS = 20
MAX_METRICS_SENDERS = 1000

BASE_RSS_BYTES = 48 * 2**20
"""A server process at rest: the interpreter, uvloop, typer, rich, prometheus-client (measured
44 MiB)."""
QUEUED_DATAGRAM_OVERHEAD_BYTES = 320
"""Beside its payload, what a waiting datagram from an IPv4 socket costs: the bytes object's
header, its address, ``(ip, port)``, and the batch entry (measured 253 with ``tracemalloc`` by
``make bench-memory``; the longest IPv4 address adds 6: 259)."""
QUEUED_IPV6_DATAGRAM_OVERHEAD_BYTES = 448
"""The same from an IPv6 or dual-stack socket, whose address is ``(ip, port, flowinfo,
scope_id)`` with an ip of up to 45 characters (measured 269 for ``::ffff:127.0.0.1``; the
longest address adds 29 more, and a flow label and a scope id of 256 or more, which are not
cached small ints, 28 each: 354)."""
OUTPUT_EXPANSION = 20
"""Bytes held while one batch is formatted, per byte of the batch, at most: a control byte is
six in JSON (``\u0001``), and the lines, their join and its encoding are alive at once."""


def _is_ipv4_address(host: str) -> bool:
    """Whether the socket for ``host`` is IPv4 for sure: an IPv4 literal. A name is not
    resolved here; it may resolve to IPv6, so the memory bound counts the costlier family."""
    try:
        return ipaddress.ip_address(host).version == 4
    except ValueError:
        return False


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """Everything a server needs to know before it starts, checked when it is built (and only
    here), so that a wrong value fails with the field's name and not later with a socket bound.
    """

    host: str = DEFAULT_HOST
    port: int = setting(DEFAULT_PORT, minimum=0, maximum=MAX_PORT)
    workers: int = setting(DEFAULT_WORKERS, minimum=1, maximum=MAX_WORKERS)
    """Threads in the pool that handles messages."""
    max_datagram_size: int = setting(
        DEFAULT_MAX_DATAGRAM_SIZE, minimum=1, maximum=MAX_DATAGRAM_SIZE
    )
    queue_size: int = setting(DEFAULT_QUEUE_SIZE, minimum=1)
    drain_timeout_s: float = setting(DEFAULT_DRAIN_TIMEOUT_S, minimum=0)
    rcvbuf: int | None = setting(DEFAULT_RCVBUF, minimum=1, maximum=MAX_RCVBUF)
    """Receive buffer to ask for, in bytes; None keeps the OS default."""
    allow: tuple[IPNetwork, ...] = ()
    """Accept only these source networks; empty accepts every source."""
    rate_limit_per_s: float | None = setting(None, minimum=0.001)
    """Messages a second per source address (token bucket); None for no limit."""
    rate_burst: float | None = setting(None, minimum=1)
    """Bucket size; defaults to one second's worth of ``rate_limit_per_s``."""
    max_sources: int = setting(DEFAULT_MAX_SOURCES, minimum=1)
    """Per-source table entries (rate limiter, allow-list cache, the relay's answer limit), at
    most."""
    max_senders: int = setting(DEFAULT_MAX_SENDERS, minimum=1)
    """Senders (address + username) whose counters are tracked for loss, at most."""
    processes: int = setting(1, minimum=1, maximum=MAX_PROCESSES)
    """Server processes sharing the port (``SO_REUSEPORT``), each with its own loop and pool,
    under a supervisor (:func:`udpchat.run`)."""
    reuse_port: bool = False
    """Share the port with other sockets (``SO_REUSEPORT``): for one server per process."""
    relay: bool = False
    """Run a chat room (:mod:`udpchat.relay`): members' texts go to the other members."""
    peer_timeout_s: float = setting(DEFAULT_PEER_TIMEOUT_S, minimum=0.1)
    """Seconds of silence after which a member leaves the room."""
    max_peers: int = setting(DEFAULT_MAX_PEERS, minimum=1, maximum=MAX_PEERS)
    """Members in the room, at most; joins beyond it are refused and counted."""
    relay_rate_per_s: float = setting(DEFAULT_TEXT_RATE_PER_S, minimum=0.01)
    """Texts a second each member may have relayed (bursts of twice that); beyond it they are
    shown but not relayed, and counted: what one member can make the server send is bounded."""
    relay_budget_per_s: float = setting(DEFAULT_RELAY_BUDGET_PER_S, minimum=1)
    """Datagrams a second the room sends to its members in all, texts from members here and
    from the bus alike (bursts of a tenth of a second's worth); texts beyond it are shown but
    not relayed, and counted, and the bus's may use only half the burst."""
    answer_rate_per_s: float = setting(DEFAULT_ANSWER_RATE_PER_S, minimum=0.01)
    """Answers a second the room sends to each address that is not a member (``/cookie``,
    ``/expired``, ``/full``; bursts of twice that); beyond it they are counted, not sent."""
    answer_rate_total_per_s: float = setting(DEFAULT_ANSWER_RATE_TOTAL_PER_S, minimum=0.01)
    """Answers a second to all addresses that are not members together (bursts of twice that)."""
    metrics_port: int | None = setting(None, minimum=0, maximum=MAX_PORT)
    """Serve Prometheus metrics over HTTP on this TCP port (0: any free port); None: no endpoint."""
    metrics_host: str = DEFAULT_METRICS_HOST
    metrics_senders: int = setting(DEFAULT_METRICS_SENDERS, minimum=0, maximum=MAX_METRICS_SENDERS)
    """Senders with series of their own in /metrics (``udpchat_sender_*``), the busiest; the
    others are counted as left out."""
    stats_interval_s: float | None = setting(None, minimum=0.1)
    """Log a status line to the ``udpchat.status`` logger this often; None: never."""
    verbose: bool = False
    """Status lines (and the CLI's summary) with every counter; else what a person reads."""
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
    nats_connect_timeout_s: float = setting(DEFAULT_CONNECT_TIMEOUT_S, minimum=0.1, maximum=60)
    """How long ``start()`` waits for NATS before it fails."""
    echo: bool = False
    """Answer each message with itself, once (:mod:`udpchat.echo`), for round-trip times."""
    echo_rate_per_s: float = setting(DEFAULT_ECHO_RATE_PER_S, minimum=0.01)
    """Answers a second per source address (bursts of twice that); the rest are counted."""
    record: Path | None = None
    """Record the run's time series in this file (:mod:`udpchat.record`); None: no record."""
    record_format: RecordFormat = RecordFormat.JSONL
    record_interval_s: float = interval_setting()
    """Seconds per recorded interval."""
    record_senders: int = setting(DEFAULT_SENDERS, minimum=0, maximum=MAX_SENDERS)
    """Senders listed in each interval, the busiest; the others are summed."""
    record_events: int = setting(DEFAULT_EVENTS, minimum=0, maximum=MAX_EVENTS)
    """Events recorded per interval, at most; the others are counted."""
    record_max_bytes: int = max_bytes_setting()
    """The record file's bound: recording stops there (counted), serving goes on."""
    record_label: str = ""
    """What ``udpchat plot`` calls the run (default: the file's name)."""
    overwrite: bool = False
    """Overwrite an existing record file."""
    web: WebConfig | None = None
    """Serve the browser view (:mod:`udpchat.web`): the senders, charts and, with ``relay``,
    the room; None: no view. With ``processes`` above 1 the supervisor serves it."""

    def __post_init__(self) -> None:
        check_bounds(self)
        check_host(self)
        check_host(self, "metrics_host", "metrics_port")
        if self.processes > 1 and not hasattr(socket, "SO_REUSEPORT"):
            raise ConfigError("processes", "above 1 needs SO_REUSEPORT, which this OS lacks")
        if self.nats and not self.relay:
            raise ConfigError("nats", "needs {relay}: only a room goes onto NATS")
        if self.relay and self.processes > 1 and not self.nats:
            raise ConfigError(
                "relay", "with {processes} above 1 needs {nats}: the room spans them through it"
            )
        if self.echo and self.relay:
            raise ConfigError("echo", "cannot be used with {relay}: the room answers its members")
        self._check_web_members_allowed()
        self.record_options()
        try:
            room_subject(self.room)
        except ValueError as error:
            raise ConfigError("room", str(error)) from None
        try:
            self.bus_config()
        except ValueError as error:
            raise ConfigError("nats", str(error)) from None

    def _check_web_members_allowed(self) -> None:
        """The web view's members (its watch, each page's) join the room from this machine's
        address towards the server: an ``allow`` list without it would leave the page's room
        empty, with nothing to say why."""
        if self.web is None or not self.relay or not self.allow:
            return
        own = member_target((self.host, self.port))[0]
        try:
            address = ipaddress.ip_address(own)
        except ValueError:
            return  # a name, resolved when the view's members open their sockets
        if not any(address in network for network in self.allow):
            raise ConfigError(
                "allow",
                f"must hold {own}, the web view's address towards the server: the view's "
                "members join the room from there",
            )

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

    def record_options(self) -> RecordOptions | None:
        """What ``record`` asks for; None without it (its options checked all the same)."""
        try:
            options = RecordOptions(
                path=self.record,
                format=self.record_format,
                interval_s=self.record_interval_s,
                max_bytes=self.record_max_bytes,
                senders=self.record_senders,
                events=self.record_events,
                label=self.record_label,
                overwrite=self.overwrite,
            )
        except ConfigError as error:  # said in this config's names
            raise ConfigError(setting_of(error.setting), error.problem) from None
        return None if self.record is None else options

    def admission(self) -> Admission | None:
        """The allow-list and rate limiter this config asks for; None when it asks for neither."""
        if not self.allow and self.rate_limit_per_s is None:
            return None
        return Admission(
            self.allow, self.rate_limit_per_s, self.rate_burst, self.max_sources, time.monotonic
        )

    def memory_bound_bytes(self) -> int:
        """The most memory one server process holds for traffic, whatever the traffic: what
        SECURITY.md states, and what the memory benchmark and the flood test measure against.

        Everything that grows with traffic is here: the queue (in datagrams of at most
        ``max_datagram_size``, each with its sender's address, larger on an IPv6 or dual-stack
        socket), the per-sender accounting, the output being formatted by each worker (and the
        batch the event loop is filling), and the admission tables where the config asks for an
        allow-list or a rate limit, the relay's table of answered addresses, and ``--echo``'s
        rate table and answered senders. (The batch
        reader's buffers do not grow: at most a batch and a table of 256 addresses, in the base.)
        """
        overhead = (
            QUEUED_DATAGRAM_OVERHEAD_BYTES
            if _is_ipv4_address(self.host)
            else QUEUED_IPV6_DATAGRAM_OVERHEAD_BYTES
        )
        batch_bytes = batch_limit(self.max_datagram_size) * self.max_datagram_size
        return (
            BASE_RSS_BYTES
            + self.queue_size * (self.max_datagram_size + overhead)
            + self.max_senders * SENDER_BYTES
            + (self.workers + 1) * OUTPUT_EXPANSION * batch_bytes
            + (self.max_sources * SOURCE_BYTES if self.admission() is not None else 0)
            + (self.max_sources * ANSWER_SOURCE_BYTES if self.relay else 0)
            + (self.max_sources * (SOURCE_BYTES + ANSWERED_SENDER_BYTES) if self.echo else 0)
        )


@dataclass(frozen=True, slots=True)
class ServeResult:
    """How serving ended: each process's final counters and whether the drain finished."""

    per_process: tuple[StatsSnapshot, ...]
    drained: bool
    """Whether every process finished its drain within ``drain_timeout_s``."""
    error: BaseException | None = None
    """What ended serving on its own (output that can no longer be written), if anything."""
    died: tuple[str, ...] = ()
    """With several processes, how each child that died on its own ended."""
    forced: bool = False
    """A second stop signal cut the drain short."""
    signalled: bool = False
    """A stop signal (Ctrl-C, SIGTERM, SIGHUP) came while serving."""


class Service(Protocol):
    """What :func:`udpchat.run` serves, and a view watches: a :class:`Server`, or the
    :class:`~udpchat.supervisor.Supervisor` of several server processes."""

    config: ServerConfig

    @property
    def address(self) -> tuple[str, int]: ...

    async def start(self) -> None: ...

    async def serve_until_stopped(self) -> ServeResult: ...

    def request_stop(self) -> None: ...

    def fail(self, error: BaseException) -> None: ...

    def abandon(self) -> None: ...

    def per_process(self) -> tuple[StatsSnapshot, ...]: ...


class Server(StartsAndStops):
    """A udpchat server for asyncio applications: ``async with Server(config, handler) as server``.

    ``start()`` binds and returns once datagrams are being received; ``serve()`` runs until
    :meth:`request_stop`, a fatal error or cancellation, then stops; ``stop()`` stops receiving,
    lets queued messages finish within ``drain_timeout_s`` and counts the rest as dropped. An
    incomplete drain is logged as a warning on ``udpchat.server`` and reported by ``stop()``'s
    and ``serve()``'s result (False), never raised: the counts stay right either way.

    One process only: :func:`udpchat.run` serves a config with ``processes`` above 1.
    """

    def __init__(
        self,
        config: ServerConfig | None = None,
        handler: Handler | BatchHandler | None = None,
        *,
        output: TextIO | None = None,
    ) -> None:
        self.config = config or ServerConfig()
        if handler is not None and self.config.output_format is not None:
            raise ValueError("give a handler or config.output_format, not both")
        if handler is None and self.config.output_format is not None:
            handler = LinePrinter(output or sys.stdout, self.config.output_format)
        self._relay: Relay | None = None
        if self.config.relay:
            if handler is not None and not callable(handler):
                raise ValueError("the relay calls its handler per message: give a callable")
            room = Room(
                self.config.max_peers,
                self.config.peer_timeout_s,
                text_rate_per_s=self.config.relay_rate_per_s,
            )
            answers = AnswerLimit(
                self.config.answer_rate_per_s,
                self.config.answer_rate_total_per_s,
                self.config.max_sources,
                tally=room.tally,
            )
            budget = FanOutBudget(self.config.relay_budget_per_s, self.config.max_peers)
            inner: Handler | None = handler  # callable, checked above
            self._relay = Relay(
                room, CookieJar(), inner, self, self.config.bus_config(), answers, budget
            )
            handler = self._relay
        self._echo: Echo | None = None
        if self.config.echo:
            self._echo = Echo(
                handler, self.send_datagram, self.config.echo_rate_per_s, self.config.max_sources
            )
            handler = self._echo
        self._handler = handler
        self._tally = ServerTally()
        self._admission = self.config.admission()
        self._transport: asyncio.DatagramTransport | None = None
        self._receiver: Receiver | None = None
        self._dispatcher: Dispatcher | None = None
        self._socket: socket.socket | None = None
        self._family = socket.AF_INET
        self._fanout: FanOut | None = None
        self._own_address: tuple[str, int] | None = None
        """The socket's bound (host, port), kept after the stop for late questions."""
        self._kernel_drops_at_stop: int | None = None
        self._metrics: MetricsServer | None = None
        self._web: ServerView | None = None
        self._should_exit = asyncio.Event()
        self._abandoned = asyncio.Event()
        self._closed = asyncio.Event()
        self._drained: bool | None = None
        self._fatal_error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._recorder: RecordWriter | None = None

    @property
    def address(self) -> tuple[str, int]:
        """The bound (host, port); with port 0 in the config, the port the OS chose."""
        if self._transport is None:
            raise RuntimeError("the server is not started")
        sockname = self._transport.get_extra_info("sockname")
        return sockname[0], sockname[1]

    @property
    def protocol(self) -> Receiver:
        """The ``DatagramProtocol`` the server reads with: an app may also feed it datagrams it
        reads elsewhere (``datagram_received``); they are counted with the rest."""
        if self._receiver is None:
            raise RuntimeError("the server is not started")
        return self._receiver

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
        metrics = self._metrics
        return metrics.address if metrics is not None and metrics.serving else None

    async def start(self) -> None:
        """Open the record file (if asked), bind, start what the config asks for, receive."""
        if self._transport is not None:
            raise RuntimeError("the server is already started")
        self._recorder = await start_recorded(
            self._start_receiving, self.config.record_options(), self.config, self.stats
        )
        assert self._socket is not None
        sock = self._socket
        host, port = self.address
        logger.info(
            "listening on %s port %d, receive buffer %d bytes",
            host,
            port,
            receive_buffer_size(sock),
        )
        announce_views(self._metrics, self._web)
        if self._recorder is not None:
            logger.info("recording to %s", self._recorder.path)

    async def _start_receiving(self) -> None:
        config = self.config
        sock = bind_udp_socket(
            config.host, config.port, rcvbuf=config.rcvbuf, reuse_port=config.reuse_port
        )
        bus = None if self._relay is None else self._relay.bus
        try:
            if bus is not None:
                await bus.start()
            if config.metrics_port is not None:
                self._metrics = await start_metrics(
                    lambda: self.stats(include_senders=config.metrics_senders > 0),
                    config.metrics_host,
                    config.metrics_port,
                    config.metrics_senders,
                )
            self._loop = asyncio.get_running_loop()
            self._dispatcher = Dispatcher(
                self._handler,
                self._tally,
                workers=config.workers,
                queue_size=config.queue_size,
                max_datagram_size=config.max_datagram_size,
                max_senders=config.max_senders,
                ipv6_socket=sock.family == socket.AF_INET6,
                on_output_error=self._output_failed_in_worker,
            )
            receiver = Receiver(
                self._dispatcher,
                self._tally,
                max_datagram_size=config.max_datagram_size,
                admission=self._admission,
                notices=DropNotices(
                    max_datagram_size=config.max_datagram_size,
                    queue_size=config.queue_size,
                    rate_limit_per_s=config.rate_limit_per_s,
                ),
            )
            transport: asyncio.DatagramTransport | None = batch_transport(
                self._loop,
                sock,
                receiver,
                max_datagram_size=config.max_datagram_size,
                slots=self._dispatcher.max_batch,
            )
            if transport is None:  # no compiled reader here: the loop's own transport
                transport, _ = await self._loop.create_datagram_endpoint(
                    lambda: receiver, sock=sock
                )
            self._family, self._fanout = sock.family, FanOut(sock)
            self._transport = transport
            if config.web is not None:
                self._web = await start_web(config.web, self)
        except BaseException:
            if self._transport is not None:
                self._transport.close()
                self._transport = None
            sock.close()
            if self._metrics is not None:
                await self._metrics.close()
                self._metrics = None
            if bus is not None:
                await bus.stop()
            raise
        self._transport, self._receiver, self._socket = transport, receiver, sock
        self._own_address = self.address

    @property
    def web_url(self) -> str | None:
        """Where a browser opens the web view (with its token); None without one."""
        return None if self._web is None else self._web.url

    @property
    def web_address(self) -> tuple[str, int]:
        """The web view's bound (host, port)."""
        if self._web is None:
            raise RuntimeError("the server serves no web view")
        return self._web.address

    async def serve_until_stopped(self) -> ServeResult:
        """Start (unless started), serve until :meth:`request_stop`, a fatal error or
        cancellation, then stop with a drain; returns the final counters, whether the drain
        finished and what ended serving, never raising it."""
        if self._transport is None:
            await self.start()
        try:
            async with periodically(self.config.stats_interval_s, self._log_status()):
                await self._should_exit.wait()
        finally:
            drained = await self.stop()
        return ServeResult((self.stats(),), drained, self._fatal_error)

    async def serve(self) -> bool:
        """:meth:`serve_until_stopped`, returning whether the drain finished; a fatal error
        (see :meth:`fail`) is raised after the stop, so that the counts are final."""
        result = await self.serve_until_stopped()
        if result.error is not None:
            raise result.error
        return result.drained

    def _log_status(self) -> Callable[[], None]:
        status_line = StatusLine(verbose=self.config.verbose)

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
        if self._fanout is not None:
            self._fanout.close()  # before its file descriptor can be closed and reused
        self._transport.close()
        self._transport = None
        self._receiver.dispatch()
        try:
            idle = await self._drain_unless_abandoned(self._dispatcher)
        finally:
            await self._close_attachments()
        self._warn_unfinished(idle, self._dispatcher.queued)
        self._drained = idle
        self._closed.set()
        return idle

    async def _drain_unless_abandoned(self, dispatcher: Dispatcher) -> bool:
        """Whether the pool finished its queue within the drain timeout; False at once when
        :meth:`abandon` is called meanwhile."""
        draining = asyncio.ensure_future(dispatcher.drain(self.config.drain_timeout_s))
        abandoning = asyncio.ensure_future(self._abandoned.wait())
        try:
            await asyncio.wait({draining, abandoning}, return_when=asyncio.FIRST_COMPLETED)
            return draining.done() and draining.result()
        finally:
            draining.cancel()
            abandoning.cancel()

    async def _close_attachments(self) -> None:
        """The bus, the metrics endpoint, the recorder and the web view, after the drain:
        members' last texts go out too, and the record's last interval has the drain's counts."""
        if self._relay is not None and self._relay.bus is not None:
            await self._relay.bus.stop()
        if self._metrics is not None:
            await self._metrics.close()
        if self._recorder is not None:
            await asyncio.to_thread(self._recorder.close, self._abandoned.is_set())
        if self._web is not None:
            await self._web.close()

    def _warn_unfinished(self, idle: bool, queued: int) -> None:
        if self._abandoned.is_set():
            logger.warning("forced stop: %d messages were not finished", queued)
        elif not idle:
            logger.warning(
                "a worker was still stuck in its handler or output after the drain timeout "
                "(%s s); %d messages were not finished",
                self.config.drain_timeout_s,
                queued,
            )

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
        self._tally.add("stop_reads_capped")

    def send_datagram(self, data: bytes, address: tuple[str, int]) -> bool:
        """Send from the server's own socket (safe from pool threads); False when the socket's
        buffer is full, the address is unreachable or the server is not serving: UDP gives
        no other guarantee anyway."""
        sock = self._socket
        if sock is None:
            return False
        try:
            sock.sendto(data, sendto_address(self._family, address))
        except OSError:
            return False
        return True

    def send_to_many(
        self, data: bytes, addresses: Sequence[tuple[str, int]], skip: tuple[str, int] | None = None
    ) -> int:
        """``data`` to each of ``addresses`` but ``skip``, in one system call where the OS
        allows (safe from pool threads, without the GIL: :mod:`udpchat.fanout`); how many were
        sent. Nothing once the server stops."""
        fanout = self._fanout
        return 0 if fanout is None else fanout.send(data, addresses, skip)

    def is_own_address(self, address: tuple[str, int]) -> bool:
        """Whether ``address`` is this server's socket: its port, and its address or, bound to
        a wildcard, a loopback one. A datagram that claims it was forged, or looped back."""
        own = self._own_address
        if own is None or address[1] != own[1]:
            return False
        ip, host = plain_ip(address[0]), plain_ip(own[0])
        return ip == host or (is_wildcard(host) and is_loopback(ip))

    def kernel_drops(self) -> int | None:
        """Datagrams the kernel dropped before we could read them; None where the OS cannot say."""
        if self._transport is None or self._socket is None:
            return self._kernel_drops_at_stop
        return kernel_drop_count(self._socket)

    def stats(self, include_senders: bool = True) -> StatsSnapshot:
        """The counters now; ``include_senders=False`` skips the per-sender table (cheaper)."""
        relay, bus = self._relay, None if self._relay is None else self._relay.bus
        parts: dict[str, Any] = {
            "relay": None if relay is None else relay.stats(),
            "members": () if relay is None else tuple(relay.room.members()),
            "bus": None if bus is None else bus.stats(),
            "admission": None if self._admission is None else self._admission.stats(),
            "endpoint": None if self._metrics is None else self._metrics.stats(),
            "record": None if self._recorder is None else self._recorder.stats(),
            "echo": None if self._echo is None else self._echo.stats(),
            "web": None if self._web is None else self._web.stats(),
        }
        if self._dispatcher is not None:
            parts["delivery"], parts["senders"] = self._dispatcher.delivery(include_senders)
            parts["kernel_drops"] = self.kernel_drops()
        return self._tally.snapshot(**parts)

    def per_process(self) -> tuple[StatsSnapshot, ...]:
        """The counters of each process serving: this one's alone."""
        return (self.stats(),)


def announce_views(metrics: MetricsServer | None, view: ServerView | None) -> None:
    """Say where the metrics endpoint and the web view listen (a server's or a supervisor's)."""
    if metrics is not None:
        logger.info("metrics on http://%s:%d/metrics", *metrics.address)
    if view is not None:
        logger.info("web view on %s", view.url)
