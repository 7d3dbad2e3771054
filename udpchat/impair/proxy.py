"""The I/O around two :class:`~udpchat.impair.link.Link` objects: :class:`ImpairProxy` reads
the clients' datagrams, opens a socket of its own towards the server for each client (so that
the server, and its relay's cookies, tell the clients apart), and sends what the links let
through when they say; :func:`run_proxy` is the ``impair`` command.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import secrets
import socket
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO

from udpchat.counters import CaptureStats, ImpairStats
from udpchat.eventloop import LoopChoice, periodically, run_coroutine
from udpchat.impair.link import DIRECTION_COUNTERS, Link
from udpchat.impair.spec import (
    MAX_DELAY_S,
    READ_BATCH,
    Direction,
    Impairment,
    ProxyConfig,
    change_request,
    changed,
    describe,
)
from udpchat.impair.trace import Capture, Intervals, Tracer, wall_offset
from udpchat.lifecycle import StartsAndStops
from udpchat.logs import RateLimitedLog
from udpchat.metrics import MetricsServer, start_metrics
from udpchat.record import (
    RecordOptions,
    RecordWriter,
    discard,
    header,
    open_new,
    rfc3339,
)
from udpchat.report import Rate, impair_status
from udpchat.series import changes, flat, schema
from udpchat.signals import stop_on_signals
from udpchat.sockets import (
    ARRIVAL_ANCILLARY_BYTES,
    MAX_READS_AT_STOP,
    MAX_UDP_PAYLOAD,
    arrival_time,
    bind_udp_socket,
    kernel_drop_count,
    realtime_offset,
    stamp_arrivals,
)
from udpchat.tuning import tune_for_throughput
from udpchat.wakeup import Wakeup

if TYPE_CHECKING:  # aiohttp only for a proxy that serves its page
    from udpchat.web.impair_view import ImpairView

logger = logging.getLogger("udpchat.impair")

MAX_CHANGES_KEPT = 100
"""Changes of the link's settings kept for ``GET /api/impairment`` and the page (the log and
the record file have them all)."""
status_logger = logging.getLogger("udpchat.status")


class TargetUnresolvedError(OSError):
    """The server's address (``to``) does not resolve; nothing was bound."""


def read_batch(
    sock: socket.socket,
    stamped: bool,
    now: float,
    source: object,
    refusals: list[int] | None = None,
) -> list[tuple[bytes, Any, float]]:
    """Up to :data:`READ_BATCH` datagrams waiting on ``sock``: each with its sender and when it
    arrived, the kernel's stamp where ``stamped`` (:func:`~udpchat.sockets.stamp_arrivals`;
    never after ``now``, nor more than :data:`MAX_DELAY_S` before), else ``now``. ``source``
    names the socket in the debug log. On a connected socket, each "connection refused" read
    is a datagram sent earlier that the other end refused: counted in ``refusals[0]``."""
    batch = []
    offset = realtime_offset() if stamped else 0.0
    oldest = now - MAX_DELAY_S  # older stamps (a clock step) leave at once all the same
    for _ in range(READ_BATCH):
        try:
            if stamped:
                data, ancillary, _, address = sock.recvmsg(MAX_UDP_PAYLOAD, ARRIVAL_ANCILLARY_BYTES)
                arrived = arrival_time(ancillary, offset)
                arrived = now if arrived is None else min(max(arrived, oldest), now)
                batch.append((data, address, arrived))
            else:
                data, address = sock.recvfrom(MAX_UDP_PAYLOAD)
                batch.append((data, address, now))
        except (BlockingIOError, InterruptedError):
            break
        except ConnectionRefusedError:  # the server's port refused an earlier datagram
            if refusals is not None:
                refusals[0] += 1
            continue
        except OSError as error:
            logger.debug("impair: reading from %s: %s", source, error)
            break
    return batch


class _Client:
    """One client: its address, and its own connected socket towards the server."""

    __slots__ = ("address", "last_heard", "local", "send", "sock", "stamped")

    def __init__(self, address: Any, sock: socket.socket, now: float, stamped: bool) -> None:
        self.address = address
        self.sock = sock
        self.local: tuple[str, int] = sock.getsockname()[:2]
        """Its socket's own address: where the server's answers to it arrive."""
        self.send = sock.send
        self.last_heard = now
        self.stamped = stamped
        """Whether the kernel stamps the server's datagrams' arrival on ``sock``."""

    def __str__(self) -> str:
        return f"the server for {self.address}"


@dataclass(frozen=True, slots=True)
class ProxyResult:
    """How serving ended: the final counters and whether the links were emptied in time."""

    stats: ImpairStats
    drained: bool


class ImpairProxy(StartsAndStops):
    """The impaired link as an asyncio object: ``async with ImpairProxy(config) as proxy``,
    then send to ``proxy.address`` instead of the server's."""

    def __init__(
        self,
        config: ProxyConfig | None = None,
        *,
        record: RecordOptions | None = None,
        pcap: RecordOptions | None = None,
    ) -> None:
        """``record``: what the link did per interval, direction and client, in a record file;
        ``pcap``: every datagram in a capture, its fate in its comment."""
        self.config = config = config or ProxyConfig()
        self._record_options, self._pcap_options = record, pcap
        self._recorder: RecordWriter | None = None
        self._capture: Capture | None = None
        self._intervals = None if record is None else Intervals(record.senders)
        self._last_interval: tuple[float, ImpairStats] | None = None
        self.seed = config.seed if config.seed is not None else secrets.randbits(32)
        self._up: Link[_Client] = Link(config.up, self.seed, Direction.UP, config.max_queue_bytes)
        self._down: Link[_Client] = Link(
            config.down, self.seed, Direction.DOWN, config.max_queue_bytes
        )
        self._clients: dict[Any, _Client] = {}
        self._refused = 0
        self._expired = 0
        self._gone_clients_drops = 0
        """Kernel drops of the client sockets closed (expired): no longer in the live sum."""
        self._kernel_drops_at_stop: dict[str, int] | None = None
        self._refusal_log = RateLimitedLog(logger, level=logging.WARNING)
        self._sock: socket.socket | None = None
        self._stamped_up = False
        """Whether the kernel stamps the clients' datagrams' arrival (a delaying uplink)."""
        self._target: tuple[Any, ...] | None = None
        self._target_family = socket.AF_INET
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wakeups: dict[Direction, Wakeup] = {}
        self._background = contextlib.AsyncExitStack()
        self._metrics: MetricsServer | None = None
        self._web: ImpairView | None = None
        self.changes: deque[dict[str, Any]] = deque(maxlen=MAX_CHANGES_KEPT)
        """The latest changes of the settings while running, oldest first (:meth:`change`)."""
        self._should_exit = asyncio.Event()
        self._stopping = False
        self._emptied = asyncio.Event()

    @property
    def address(self) -> tuple[str, int]:
        """Where clients send: the bound (host, port), the port the OS chose for port 0."""
        if self._sock is None:
            raise RuntimeError("the proxy is not started")
        host, port = self._sock.getsockname()[:2]
        return str(host), int(port)

    @property
    def metrics_address(self) -> tuple[str, int] | None:
        return None if self._metrics is None else self._metrics.address

    async def start(self) -> None:
        """Resolve the server, bind, and start forwarding (and the metrics endpoint)."""
        if self._sock is not None:
            raise RuntimeError("the proxy is already started")
        config = self.config
        self._loop = loop = asyncio.get_running_loop()
        self._target_family, self._target = await self._resolve_target(loop)
        files = self._open_files()
        try:
            sock = bind_udp_socket(config.listen_host, config.listen_port, rcvbuf=config.rcvbuf)
        except BaseException:
            for stream, options in files:
                discard(stream, options.file)
            raise
        try:
            if config.metrics_port is not None:
                self._metrics = await start_metrics(
                    self.stats, config.metrics_host, config.metrics_port
                )
                self._background.push_async_callback(self._metrics.close)
            if config.web is not None:
                from udpchat.web.impair_view import start_impair_view  # noqa: PLC0415 - aiohttp

                self._web = await start_impair_view(config.web, self)
                self._background.push_async_callback(self._web.close)
            sweep_s = min(config.idle_timeout_s / 4, 1.0)
            await self._background.enter_async_context(periodically(sweep_s, self._expire_idle))
        except BaseException:
            sock.close()
            await self._background.aclose()
            for stream, options in files:
                discard(stream, options.file)
            raise
        self._sock = sock
        await self._start_tracing(files)
        self._stamped_up = config.up.delays and stamp_arrivals(sock)
        self._wakeups = {
            direction: Wakeup(loop, functools.partial(self._on_time, direction))
            for direction in Direction
        }
        loop.add_reader(sock.fileno(), self._read_clients)
        self._log_started()

    async def _resolve_target(
        self, loop: asyncio.AbstractEventLoop
    ) -> tuple[socket.AddressFamily, tuple[Any, ...]]:
        """The server's address family and address, or :class:`TargetUnresolvedError`."""
        config = self.config
        try:
            found = await loop.getaddrinfo(
                config.target_host, config.target_port, type=socket.SOCK_DGRAM
            )
        except socket.gaierror as error:
            raise TargetUnresolvedError(
                error.errno, f"cannot resolve the server {config.target_host}: {error.strerror}"
            ) from None
        family, _, _, _, target = found[0]
        return family, target

    def _log_started(self) -> None:
        """Where the proxy listens and forwards, with which seed, and what each direction does."""
        config = self.config
        host, port = self.address
        logger.info(
            "impair: listening on %s port %d, forwarding to %s port %d, seed %d",
            host, port, config.target_host, config.target_port, self.seed,
        )  # fmt: skip
        for direction, impairment in ((Direction.UP, config.up), (Direction.DOWN, config.down)):
            if impairment.active:
                logger.info("impair: %s: %s", direction.value, describe(impairment))
        if self._metrics is not None:
            logger.info("impair: metrics on http://%s:%d/metrics", *self._metrics.address)
        if self._web is not None:
            logger.info("impair: web view on %s", self._web.url)

    @property
    def web_url(self) -> str | None:
        """Where a browser opens the link's page (with its token); None without one."""
        return None if self._web is None else self._web.url

    @property
    def impairments(self) -> dict[Direction, Impairment]:
        """What each direction does now: the config's, or the latest change's."""
        return {direction: self._link(direction).impairment for direction in Direction}

    def change(self, request: dict[str, object]) -> dict[str, Any]:
        """Set the knobs ``request`` names, as the options write them (``{"loss": "up:10%",
        "delay": "20ms"}``), from the next datagram of each direction on; the others keep their
        values. The seed's stream goes on (:meth:`Link.change`), so that the same seed, traffic
        and changes give the same fates. Logged with the time, and recorded with ``--record``;
        a wrong knob or value raises :class:`~udpchat.settings.ConfigError` naming it, and
        changes nothing. Returns the change as recorded. On the proxy's loop."""
        new = changed(self.impairments, change_request(request))
        first = {
            direction.value: self._link(direction).change(new[direction]) for direction in Direction
        }
        if new[Direction.UP].delays and not self._stamped_up and self._sock is not None:
            self._stamped_up = stamp_arrivals(self._sock)
        done = {
            "type": "change",
            "time": rfc3339(time.time()),
            "request": request,
            "from_datagram": first,
            **{direction.value: describe(new[direction]) for direction in Direction},
        }
        self.changes.append(done)
        logger.info(
            "impair: changed at %s, from datagram %d up and %d down: up: %s; down: %s",
            done["time"], first["up"], first["down"], done["up"] or "nothing",
            done["down"] or "nothing",
        )  # fmt: skip
        if self._recorder is not None:
            self._recorder.put({**done, "t_s": round(self._recorder.t_s(), 6)})
        return done

    async def stop(self) -> bool:
        """Stop taking datagrams in, send what the links hold as it falls due (within
        ``drain_timeout_s``), then close. Returns whether the links were emptied; what they
        still hold stays counted as queued."""
        if self._sock is None or self._loop is None:
            return True
        self._should_exit.set()
        self._stopping = True
        self._read_what_the_kernel_holds()
        self._loop.remove_reader(self._sock.fileno())
        for client in self._clients.values():
            self._loop.remove_reader(client.sock.fileno())
        self._check_emptied()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.config.drain_timeout_s):
                await self._emptied.wait()
        for wakeup in self._wakeups.values():
            wakeup.close()
        self._kernel_drops_at_stop = self._kernel_drops()
        for client in self._clients.values():
            client.sock.close()
        self._clients.clear()
        self._sock.close()
        self._sock = None
        await self._background.aclose()
        await self._stop_tracing()
        return not self._up.queued and not self._down.queued

    def request_stop(self) -> None:
        """Ask :meth:`serve_until_stopped` to stop; on the proxy's loop."""
        self._should_exit.set()

    def abandon(self) -> None:
        """Stop without waiting for the links to empty (an operator's second Ctrl-C); what they
        hold stays counted as queued. On the proxy's loop."""
        self._emptied.set()
        self._should_exit.set()

    async def serve_until_stopped(self) -> ProxyResult:
        """Start (unless started), forward until :meth:`request_stop`, then stop; with a status
        line every ``stats_interval_s`` on the ``udpchat.status`` logger."""
        if self._sock is None:
            await self.start()
        rate = Rate()

        def log_status() -> None:
            stats = self.stats()
            forwarded_per_s = rate(sum(stats.forwarded.values()))
            status_logger.info(
                "%s", impair_status(stats, forwarded_per_s, verbose=self.config.verbose)
            )

        try:
            async with periodically(self.config.stats_interval_s, log_status):
                await self._should_exit.wait()
        finally:
            drained = await self.stop()
        return ProxyResult(self.stats(), drained)

    def stats(self) -> ImpairStats:
        """The counters now."""
        up, down = self._up, self._down
        by_direction = {
            name: {Direction.UP.value: up.counts[name], Direction.DOWN.value: down.counts[name]}
            for name in DIRECTION_COUNTERS
        }
        return ImpairStats(
            **by_direction,
            kernel_drops=self._kernel_drops(),
            queued=up.queued + down.queued,
            jitter_up_us=round(up.jitter_s * 1e6),
            jitter_down_us=round(down.jitter_s * 1e6),
            clients=len(self._clients),
            clients_refused=self._refused,
            clients_expired=self._expired,
            endpoint=None if self._metrics is None else self._metrics.stats(),
            record=None if self._recorder is None else self._recorder.stats(),
            capture=None if self._capture is None else self._capture.writer.stats(),  # type: ignore[arg-type]
            web=None if self._web is None else self._web.stats(),
        )

    def _kernel_drops(self) -> dict[str, int]:
        """What the kernel dropped at the proxy's sockets, by direction (0 where the OS cannot
        say: not Linux): up at the socket the clients send to, down at the clients' sockets
        towards the server, those closed since included."""
        if self._kernel_drops_at_stop is not None:
            return self._kernel_drops_at_stop
        up = 0 if self._sock is None else kernel_drop_count(self._sock) or 0
        down = self._gone_clients_drops + sum(
            kernel_drop_count(client.sock) or 0 for client in self._clients.values()
        )
        return {Direction.UP.value: up, Direction.DOWN.value: down}

    # The event loop's side: read, let the link decide, send; wake up when the link says.

    def _read_clients(self) -> int:
        """Take in what the clients sent; returns how many datagrams were read."""
        assert self._sock is not None
        now = time.monotonic()
        clients = self._clients
        batch = []
        read = read_batch(self._sock, self._stamped_up, now, "clients")
        for data, address, arrived in read:
            client = clients.get(address)
            if client is None:
                client = self._admit(address, now)
                if client is None:
                    continue
            client.last_heard = now
            batch.append((data, client, arrived))
        if batch:
            self._send_up(self._up.take(batch, now))
            self._schedule(Direction.UP)
        return len(read)

    def _read_server(self, client: _Client) -> int:
        """Take in what the server sent ``client``; returns how many datagrams were read."""
        now = time.monotonic()
        refusals = [0]
        batch = [
            (data, client, arrived)
            for data, _, arrived in read_batch(client.sock, client.stamped, now, client, refusals)
        ]
        if refusals[0]:
            self._sent(self._up, 0, 0, refusals[0])
        if batch:
            self._send_down(self._down.take(batch, now))
            self._schedule(Direction.DOWN)
        return len(batch)

    def _read_what_the_kernel_holds(self) -> None:
        """At the stop, what the sockets still hold is read in (at most
        :data:`~udpchat.sockets.MAX_READS_AT_STOP` a socket), so that nothing that reached the
        proxy vanishes uncounted at close: it goes through the links, and on within the drain
        timeout, as the server reads its own at a stop."""
        readers: list[Callable[[], int]] = [self._read_clients]
        readers += [functools.partial(self._read_server, c) for c in self._clients.values()]
        for read in readers:
            taken = 0
            while taken < MAX_READS_AT_STOP and (got := read()):
                taken += got

    def _send_up(self, out: list[tuple[bytes, _Client]]) -> None:
        failed = refused = 0
        for data, client in out:
            try:
                client.send(data)
            except ConnectionRefusedError:  # not sent; and the server refused an earlier one
                failed += 1
                refused += 1
            except OSError:
                failed += 1
        self._sent(self._up, len(out), failed, refused)

    def _send_down(self, out: list[tuple[bytes, _Client]]) -> None:
        assert self._sock is not None
        send = self._sock.sendto
        failed = 0
        for data, client in out:
            try:
                send(data, client.address)
            except OSError:
                failed += 1
        self._sent(self._down, len(out), failed, 0)

    @staticmethod
    def _sent(link: Link[_Client], count: int, failed: int, refused: int) -> None:
        """``count`` sent, ``failed`` of them not (the OS said so at once), and ``refused``
        sent earlier that the other end refused since (its "connection refused" came with a
        later send or read): counted as sent then, moved from forwarded to send_failures now,
        so that forwarded counts only what reached a listening socket."""
        counts = link.counts
        counts["forwarded"] += count - failed - refused
        counts["send_failures"] += failed + refused
        counts["dropped"] += failed + refused

    def _admit(self, address: Any, now: float) -> _Client | None:
        """A new client's own socket towards the server; None (counted) when the table is
        full or the OS has no socket to give."""
        assert self._loop is not None and self._target is not None
        if len(self._clients) >= self.config.max_clients:
            self._refuse(f"client table full ({self.config.max_clients} clients)")
            return None
        try:
            sock = socket.socket(self._target_family, socket.SOCK_DGRAM)
        except OSError as error:
            self._refuse(f"no socket for a new client: {error.strerror}")
            return None
        try:
            sock.setblocking(False)
            sock.connect(self._target)
        except OSError as error:
            sock.close()
            self._refuse(f"cannot reach the server for a new client: {error.strerror}")
            return None
        stamped = self.config.down.delays and stamp_arrivals(sock)
        client = self._clients[address] = _Client(address, sock, now, stamped)
        self._loop.add_reader(sock.fileno(), self._read_server, client)
        return client

    def _refuse(self, why: str) -> None:
        self._refused += 1
        self._refusal_log.record(f"impair: refused a datagram from a new client: {why}")

    def _expire_idle(self) -> None:
        assert self._loop is not None
        deadline = time.monotonic() - self.config.idle_timeout_s
        for address, client in list(self._clients.items()):
            if client.last_heard < deadline:
                self._loop.remove_reader(client.sock.fileno())
                self._gone_clients_drops += kernel_drop_count(client.sock) or 0
                client.sock.close()
                del self._clients[address]
                self._expired += 1

    def _link(self, direction: Direction) -> Link[_Client]:
        return self._up if direction is Direction.UP else self._down

    def _schedule(self, direction: Direction) -> None:
        """Wake up when the link next has something to send, unless a wake-up comes sooner."""
        due = self._link(direction).next_due
        if due is None:
            self._check_emptied()
            return
        wakeup = self._wakeups[direction]
        if wakeup.when is None or due < wakeup.when:
            wakeup.at(due)

    def _on_time(self, direction: Direction) -> None:
        out = self._link(direction).release(time.monotonic())
        if out:
            (self._send_up if direction is Direction.UP else self._send_down)(out)
        self._schedule(direction)

    # Tracing: --record and --pcap.

    def _open_files(self) -> list[tuple[BinaryIO, RecordOptions]]:
        """The record file and the capture, opened before anything binds (so that a path that
        cannot be written fails first); one that opens after another failed closes that one."""
        files: list[tuple[BinaryIO, RecordOptions]] = []
        try:
            for options in (self._record_options, self._pcap_options):
                if options is not None:
                    files.append((open_new(options.file, options.overwrite), options))
        except BaseException:
            for stream, options in files:
                discard(stream, options.file)
            raise
        return files

    async def _start_tracing(self, files: list[tuple[BinaryIO, RecordOptions]]) -> None:
        """The writers, then each link's observer (:class:`~udpchat.impair.trace.Tracer`)."""
        if not files:
            return
        streams = dict((id(options), stream) for stream, options in files)
        record, pcap = self._record_options, self._pcap_options
        if record is not None:
            self._recorder = RecordWriter(
                streams[id(record)], record.file, max_bytes=record.max_bytes
            )
            stats = self.stats()
            self._last_interval = (0.0, stats)
            self._recorder.start(
                header("impair", record, self.config, counters=schema(stats), seed=self.seed)
            )
            await self._background.enter_async_context(
                periodically(record.interval_s, self._record_interval)
            )
        if pcap is not None:
            from udpchat.impair.pcap import encode as pcap_encode  # noqa: PLC0415 - dpkt, for --pcap

            writer = RecordWriter(
                streams[id(pcap)], pcap.file, max_bytes=pcap.max_bytes, encode=pcap_encode,
                counts_type=CaptureStats,
            )  # fmt: skip
            writer.start(header("impair", pcap, self.config, seed=self.seed))
            self._capture = Capture(writer, wall_offset())
        for link, config in ((self._up, self.config.up), (self._down, self.config.down)):
            link.observer = Tracer(
                link.direction,
                functools.partial(self._endpoints, link.direction),
                lambda client: client.address,
                bursty=config.burst is not None,
                intervals=self._intervals,
                capture=self._capture,
            )

    def _endpoints(self, direction: Direction, client: _Client) -> tuple[Any, Any]:
        """Where a datagram came from and went to, as the proxy saw it arrive."""
        assert self._target is not None
        if direction is Direction.UP:
            return client.address[:2], self.address
        return self._target[:2], client.local

    def _record_interval(self) -> None:
        """The interval's record: each counter's change, and each client's fates and delays."""
        assert self._recorder is not None and self._intervals is not None
        assert self._last_interval is not None
        t_s, stats = self._recorder.t_s(), self.stats()
        previous_t_s, previous = self._last_interval
        clients, left_out = self._intervals.take()
        self._recorder.put(
            {
                "type": "interval",
                "t_s": round(t_s, 6),
                "elapsed_s": round(t_s - previous_t_s, 6),
                "time": rfc3339(time.time()),
                "totals": flat(stats),
                "deltas": changes(previous, stats),
                "clients": clients,
                "clients_left_out": left_out,
            }
        )
        self._last_interval = (t_s, stats)

    async def _stop_tracing(self) -> None:
        """The last interval, then each writer finishes its file off the loop."""
        if self._recorder is not None:
            self._record_interval()
            await asyncio.to_thread(self._recorder.close)
        if self._capture is not None:
            await asyncio.to_thread(self._capture.writer.close)

    def _check_emptied(self) -> None:
        if self._stopping and not self._up.queued and not self._down.queued:
            self._emptied.set()


def run_proxy(
    config: ProxyConfig,
    loop: LoopChoice = LoopChoice.AUTO,
    *,
    record: RecordOptions | None = None,
    pcap: RecordOptions | None = None,
) -> ProxyResult:
    """Serve ``config`` until SIGINT, SIGTERM or SIGHUP; a second one stops without waiting
    for the links to empty. The ``impair`` command is this call."""

    async def serve() -> ProxyResult:
        proxy = ImpairProxy(config, record=record, pcap=pcap)
        with stop_on_signals(proxy, logger).installed():
            return await proxy.serve_until_stopped()

    tune_for_throughput()
    return run_coroutine(serve(), loop)
