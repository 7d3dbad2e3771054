"""``serve --processes N``: a supervisor for N server processes on one port (``SO_REUSEPORT``).

Each child has its own event loop, pool and GIL; the kernel spreads datagrams across them by
source. Children send their message lines to the parent in whole lines, and the parent alone
writes them, so that lines never interleave. Children report their counters every
:data:`REPORT_INTERVAL_S` and once more when they stop; the parent keeps the latest report of
each, which :meth:`Supervisor.combined` adds up for the metrics endpoint and the summary.

A child that dies is not restarted: the supervisor says so, stops the others with a drain and
ends with the summary of everything reported, its last report included. A restarted child
would hide a crash loop and start its counters from zero; an operator or a service manager
decides better whether to start again.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import logging
import multiprocessing
import os
import queue
import signal
import threading
import time
from asyncio import FIRST_COMPLETED
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import TYPE_CHECKING, BinaryIO, TextIO, cast

from udpchat.bus import BusUnavailableError, log_attached
from udpchat.counters import DropReason, StatsSnapshot, add_up
from udpchat.eventloop import LoopChoice, periodically, run_coroutine
from udpchat.handlers import OutputError
from udpchat.metrics import MetricsServer, start_metrics
from udpchat.output import output_failure
from udpchat.record import RecordWriter, start_recorded
from udpchat.server import Server, ServerConfig, ServeResult, announce_views
from udpchat.signals import SignalStop
from udpchat.sockets import bind_udp_socket
from udpchat.tuning import tune_for_throughput
from udpchat.web import start_web

if TYPE_CHECKING:
    from udpchat.web.server_view import ServerView

logger = logging.getLogger("udpchat.supervisor")

REPORT_INTERVAL_S = 0.5
"""How often each child sends its counters: the staleness bound of the combined metrics."""
CHILD_EXIT_GRACE_S = 0.5
"""Seconds beyond the drain timeout that a stop takes at most, the children's exit, the writing
of their last lines and the parent's own end included (SECURITY.md: within the drain timeout and
half a second)."""
STOP_RESERVE_S = 0.3
"""Of :data:`CHILD_EXIT_GRACE_S`, what is kept for the parent's end after it gives up waiting:
killing the children, their pipes' last reads, the summary and the exit. Waiting the whole
grace ended stops 10-80 ms late on a busy 2-core box (2.51-2.58 s with a 2 s drain); with this
reserve a 1 s drain ended in 1.24-1.31 s under two busy loops, a 2 s one in about 2.3 s."""
WAIT_FOR_ROOM_S = 0.005
"""How often a waiting reader, or the stop, looks again at the writer's queue."""
MAX_WAITING_CHUNKS = 16
"""Children's output chunks (a batch's lines each) waiting for the parent's stdout, at most;
beyond it the children's pipes fill and their workers wait, as for a slow terminal."""


@dataclass(frozen=True, slots=True)
class Ready:
    address: tuple[str, int]


@dataclass(frozen=True, slots=True)
class StartFailed:
    error: str
    bus: bool = False
    """The room's bus (NATS) could not be reached, rather than the port bound."""


@dataclass(frozen=True, slots=True)
class Report:
    """The child's counters now: sent periodically while it serves."""

    stats: StatsSnapshot


@dataclass(frozen=True, slots=True)
class Done:
    """The child's final counters, with whether its drain finished."""

    stats: StatsSnapshot
    drained: bool


ChildMessage = Ready | StartFailed | Report | Done
"""What a child sends its parent on the control pipe, in this order: Ready or StartFailed,
any number of Report, then Done."""


def _post(loop: asyncio.AbstractEventLoop, callback: Callable[..., None], *args: object) -> bool:
    """Hand ``callback`` to the supervisor's loop from a thread; False once the loop has
    closed (the start failed and the command is ending): there is nobody left to tell."""
    try:
        loop.call_soon_threadsafe(callback, *args)
    except RuntimeError:
        return False
    return True


class ChildStartError(OSError):
    """A child could not start its server; carries the child's own error text."""


class _PipeBytes:
    """Bytes to the parent, one message per write (the printer writes whole lines)."""

    def __init__(self, connection: Connection) -> None:
        self._connection = connection

    def write(self, data: bytes) -> int:
        self._connection.send_bytes(data)
        return len(data)

    def flush(self) -> None:
        """Each write is sent whole: nothing waits."""


class _PipeOutput(io.TextIOBase):
    """The child's message stream: the printer writes its lines' bytes to :attr:`buffer`, as
    to stdout's, so that they cross to the parent without being decoded and encoded again."""

    def __init__(self, connection: Connection) -> None:
        super().__init__()
        self.buffer = _PipeBytes(connection)

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self.buffer.write(text.encode("utf-8"))
        return len(text)


def _send(control: Connection, message: ChildMessage) -> None:
    control.send(message)


def _child_main(
    config: ServerConfig,
    label: str,
    loop: LoopChoice,
    control: Connection,
    output: Connection,
) -> None:
    """One child: serve until the parent's SIGTERM, then report its counters and leave."""
    for signum in (signal.SIGINT, getattr(signal, "SIGHUP", None)):
        if signum is not None:  # the terminal's signals reach the parent, which decides
            signal.signal(signum, signal.SIG_IGN)
    logging.basicConfig(level=logging.WARNING, format=f"udpchat: {label}%(message)s")
    logging.getLogger("udpchat.status").setLevel(logging.INFO)
    tune_for_throughput()
    server = Server(config, output=cast(TextIO, _PipeOutput(output)))

    async def serve() -> bool:
        stop = SignalStop(signals=(signal.SIGTERM,), on_first=lambda _: server.request_stop())
        with stop.installed():
            try:
                await server.start()
            except BusUnavailableError as error:
                _send(control, StartFailed(str(error), bus=True))
                return True
            except OSError as error:
                _send(control, StartFailed(error.strerror or str(error)))
                return True
            _send(control, Ready(server.address))

            def report() -> None:
                try:
                    _send(control, Report(server.stats()))
                except OSError:  # the parent is gone (killed): nobody to serve for
                    server.request_stop()

            async with periodically(REPORT_INTERVAL_S, report):
                result = await server.serve_until_stopped()
            if result.error is not None:  # the parent's pipe is gone: report, do not die
                logger.error("stopped: %s", result.error)
            return result.drained

    drained = run_coroutine(serve(), loop)
    _send(control, Done(server.stats(), drained))
    output.close()
    os._exit(0)  # a stuck worker must not keep the child alive


def claim_port(config: ServerConfig) -> int:
    """The port the children will share, checked free of any other socket.

    The check binds without ``SO_REUSEPORT``, which fails when anyone holds the port, with or
    without it: so a second ``--processes`` server on the same port is refused, not merged.
    """
    with bind_udp_socket(config.host, config.port) as probe:
        port: int = probe.getsockname()[1]
    return port


def describe_exit(exitcode: int | None) -> str:
    if exitcode is None:
        return "still running"
    if exitcode < 0:
        return f"killed by {signal.Signals(-exitcode).name}"
    return f"exited with status {exitcode}"


_NO_REPORT = StatsSnapshot()


class _Child:
    def __init__(self, index: int, process: BaseProcess, control: Connection) -> None:
        self.label = f"process {index + 1}"
        self.process = process
        self.control = control
        self.latest: StatsSnapshot | None = None
        self.done: Done | None = None
        self.ready: asyncio.Future[Ready] = asyncio.get_running_loop().create_future()
        self.ended = asyncio.Event()
        """The control pipe closed: the child has left, of its own will or not."""
        self._lost_lock = threading.Lock()
        self._read = 0
        """Lines read from the child's output pipe, in the order it wrote them."""
        self._lost: list[tuple[DropReason, int]] = []
        """Lines read that the parent could not write, in the order read, by why: the child
        counted them as handled (they were in the pipe), so the parent moves them from handled
        to dropped in its reports."""

    def count_read(self, chunk: bytes) -> None:
        with self._lost_lock:
            self._read += chunk.count(b"\n")

    def count_lost(self, chunk: bytes, reason: DropReason) -> None:
        with self._lost_lock:
            lines = chunk.count(b"\n")
            if self._lost and self._lost[-1][0] is reason:
                lines += self._lost.pop()[1]
            self._lost.append((reason, lines))

    def report(self) -> StatsSnapshot | None:
        """The latest report, with the lines the parent lost moved from handled to dropped.

        Only those the report counts as handled move: the parent writes a child's lines in
        order, and what it could not write comes after what it wrote, so of the report's
        ``handled`` lines, those beyond the ones written were lost. A report older than the
        lines read (a child killed before its final report) counted the later ones as not yet
        handled, or not yet received: they stay so, and ``handled`` never goes below 0."""
        if self.latest is None:
            return None
        with self._lost_lock:
            lost, read = list(self._lost), self._read
        if not lost:
            return self.latest
        written = read - sum(lines for _, lines in lost)
        budget = max(0, self.latest.handled - written)
        handled, dropped = self.latest.handled, dict(self.latest.dropped)
        for reason, lines in lost:
            moved = min(lines, budget)
            budget -= moved
            handled -= moved
            dropped[reason.value] = dropped.get(reason.value, 0) + moved
        return dataclasses.replace(self.latest, handled=handled, dropped=dropped)


class _Writer:
    """The parent's stdout, written by one thread: the children's chunks (whole lines) wait in
    a bounded queue, so that no reader blocks on stdout. A chunk that is not written is counted
    against its child: ``output_failed`` after a write failed, ``shutdown`` once the parent gave
    up at the stop's deadline."""

    def __init__(self, out: BinaryIO, on_failure: Callable[[OutputError], None]) -> None:
        self._out = out
        self._on_failure = on_failure
        self._queue: queue.Queue[tuple[_Child, bytes]] = queue.Queue(MAX_WAITING_CHUNKS)
        self._lock = threading.Lock()
        self._writing: tuple[_Child, bytes] | None = None
        self.error: OutputError | None = None
        self._given_up = False
        threading.Thread(target=self._write, name="udpchat-stdout", daemon=True).start()

    def put(self, child: _Child, chunk: bytes) -> None:
        """From a child's reader thread: queue the chunk, or count it lost."""
        while True:
            with self._lock:
                reason = self._refusal()
                if reason is None:
                    try:
                        self._queue.put_nowait((child, chunk))
                        return
                    except queue.Full:
                        pass
            if reason is not None:
                child.count_lost(chunk, reason)
                return
            time.sleep(WAIT_FOR_ROOM_S)

    def _refusal(self) -> DropReason | None:
        if self.error is not None:
            return DropReason.OUTPUT_FAILED
        return DropReason.SHUTDOWN if self._given_up else None

    def _write(self) -> None:
        while True:
            child, chunk = self._queue.get()
            with self._lock:
                reason = self._refusal()
                if reason is None:
                    self._writing = (child, chunk)
            if reason is not None:
                child.count_lost(chunk, reason)
                continue
            try:
                self._out.write(chunk)
                self._out.flush()
            except (OSError, ValueError) as error:
                failure = output_failure(error)
                with self._lock:
                    self.error = failure
                    counted = self._writing is None  # give_up() counted it already
                    self._writing = None
                if not counted:
                    child.count_lost(chunk, DropReason.OUTPUT_FAILED)
                logger.error("%s; stopping", failure)
                self._on_failure(failure)
                continue
            with self._lock:
                self._writing = None

    def idle(self) -> bool:
        """Nothing waiting and nothing being written."""
        with self._lock:
            return self._writing is None and self._queue.empty()

    def give_up(self) -> None:
        """Count as ``shutdown`` what is waiting or being written: the parent stops now."""
        with self._lock:
            self._given_up = True
            if self._writing is not None:
                child, chunk = self._writing
                child.count_lost(chunk, DropReason.SHUTDOWN)
                self._writing = None
            while True:
                try:
                    child, chunk = self._queue.get_nowait()
                except queue.Empty:
                    break
                child.count_lost(chunk, DropReason.SHUTDOWN)


class Supervisor:
    """Runs ``config.processes`` children of ``config`` until :meth:`request_stop` or a
    child's death.

    ``out`` receives the children's message lines. The metrics endpoint, when the config asks
    for one, is the parent's and serves :meth:`combined`.
    """

    def __init__(
        self,
        config: ServerConfig,
        loop: LoopChoice,
        out: BinaryIO,
    ) -> None:
        self.config = config
        self.processes = config.processes
        self._loop_choice = loop
        self._writer = _Writer(out, self._output_failed)
        self._children: list[_Child] = []
        self._readers: list[threading.Thread] = []
        self._should_exit = asyncio.Event()
        self._abandoned = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._metrics: MetricsServer | None = None
        self._web: ServerView | None = None
        self._address: tuple[str, int] | None = None
        self._recorder: RecordWriter | None = None
        self._error: BaseException | None = None
        """What ended serving on the parent's side (:meth:`fail`), beside a failed stdout."""

    @property
    def address(self) -> tuple[str, int]:
        """The (host, port) the children share."""
        if self._address is None:
            raise RuntimeError("the supervisor is not started")
        return self._address

    @property
    def metrics_address(self) -> tuple[str, int] | None:
        return None if self._metrics is None else self._metrics.address

    def combined(self) -> StatsSnapshot:
        """The children's latest reports added up (each at most :data:`REPORT_INTERVAL_S` old),
        with the parent's metrics endpoint."""
        return add_up(self._with_endpoint(self._reports() or (_NO_REPORT,)))

    def per_process(self) -> tuple[StatsSnapshot, ...]:
        """Each child's latest report, in the children's order; zeros before the first."""
        reports = tuple(child.report() or _NO_REPORT for child in self._children)
        return self._with_endpoint(reports)

    def _with_endpoint(self, reports: tuple[StatsSnapshot, ...]) -> tuple[StatsSnapshot, ...]:
        """``reports`` with the parent's metrics endpoint, recording and web view in the first:
        they are no child's, and so each view that adds them up (/metrics, the dashboard, the
        page, the summary) has them once, as a single server's stats have them."""
        parents = (self._metrics, self._recorder, self._web)
        if all(part is None for part in parents) or not reports:
            return reports
        first = dataclasses.replace(
            reports[0],
            endpoint=None if self._metrics is None else self._metrics.stats(),
            record=None if self._recorder is None else self._recorder.stats(),
            web=None if self._web is None else self._web.stats(),
        )
        return (first, *reports[1:])

    def request_stop(self) -> None:
        self._should_exit.set()

    def fail(self, error: BaseException) -> None:
        """Stop the children with a drain, ``error`` (the banner could not be written, say)
        in the result unless stdout failed first. Call it on the loop."""
        if self._error is None:
            self._error = error
        self._should_exit.set()

    def abandon(self) -> None:
        """Stop now: kill the children without a drain (an operator's second Ctrl-C), and
        count what their lines still waiting for stdout as ``shutdown``."""
        self._abandoned.set()
        self._kill_all()
        self._should_exit.set()

    async def start(self) -> None:
        """Spawn the children and return once each serves; a child that cannot start ends
        them all with :class:`ChildStartError`."""
        port = claim_port(self.config)
        child_config = dataclasses.replace(
            self.config,
            port=port,
            reuse_port=True,
            metrics_port=None,
            processes=1,
            record=None,
            web=None,
        )
        self._recorder = await start_recorded(
            lambda: self._start_children(child_config),
            self.config.record_options(),
            self.config,
            self.combined,
        )
        bus = self.config.bus_config()
        if bus is not None:  # the children's buses are attached: they say it no more
            log_attached(bus)
        pids = ", ".join(str(child.process.pid) for child in self._children)
        logger.info(
            "listening on %s port %d (%d processes: pids %s)",
            *self.address,
            len(self._children),
            pids,
        )
        announce_views(self._metrics, self._web)

    async def _start_children(self, child_config: ServerConfig) -> None:
        """Spawn the children and wait for each to be ready, then the metrics endpoint."""
        context = multiprocessing.get_context("spawn")
        loop = self._loop = asyncio.get_running_loop()
        try:
            for index in range(self.processes):
                control, control_child = context.Pipe()
                output, output_child = context.Pipe(duplex=False)
                process = context.Process(
                    target=_child_main,
                    args=(child_config, f"process {index + 1}: ", self._loop_choice,
                          control_child, output_child),
                    daemon=True,
                )  # fmt: skip
                process.start()
                control_child.close()
                output_child.close()
                child = _Child(index, process, control)
                self._children.append(child)
                self._readers.append(self._spawn_thread(self._read_output, child, output))
                self._spawn_thread(self._listen, child, loop)
            readies = await asyncio.gather(*(child.ready for child in self._children))
            self._address = readies[0].address
            if self.config.metrics_port is not None:
                self._metrics = await start_metrics(
                    self.combined,
                    self.config.metrics_host,
                    self.config.metrics_port,
                    self.config.metrics_senders,
                )
            if self.config.web is not None:
                self._web = await start_web(self.config.web, self)
        except BaseException:
            if self._metrics is not None:
                await self._metrics.close()
            self._kill_all()
            raise

    @property
    def web_url(self) -> str | None:
        """Where a browser opens the web view (with its token); None without one."""
        return None if self._web is None else self._web.url

    def _spawn_thread(self, target: Callable[..., None], *args: object) -> threading.Thread:
        thread = threading.Thread(target=target, args=args, daemon=True)
        thread.start()
        return thread

    def _read_output(self, child: _Child, connection: Connection) -> None:
        """Pass one child's output chunks (whole lines each) to the writer until the child
        ends; after a failure or the give-up they are read and counted, so that no child meets
        a broken pipe of ours or waits on a full one."""
        with connection:
            while True:
                try:
                    chunk = connection.recv_bytes()
                except (EOFError, OSError):
                    return
                child.count_read(chunk)
                self._writer.put(child, chunk)

    def _output_failed(self, error: OutputError) -> None:
        """From the writer's thread: stdout is gone, so serving is pointless."""
        if self._loop is not None:
            _post(self._loop, self._should_exit.set)

    def _listen(self, child: _Child, loop: asyncio.AbstractEventLoop) -> None:
        """A thread per child: pass its messages to the loop, then say it has ended."""
        with child.control:
            while True:
                try:
                    message: ChildMessage = child.control.recv()
                except (EOFError, OSError):
                    break
                if not _post(loop, self._on_message, child, message):
                    return
        _post(loop, self._on_end, child)

    def _on_message(self, child: _Child, message: ChildMessage) -> None:
        match message:
            case Ready():
                child.ready.set_result(message)
            case StartFailed(error, bus=True):
                child.ready.set_exception(BusUnavailableError(error))
            case StartFailed(error):
                child.ready.set_exception(ChildStartError(error))
            case Report(stats):
                child.latest = stats
            case Done(stats):
                child.latest, child.done = stats, message

    def _on_end(self, child: _Child) -> None:
        child.ended.set()
        if not child.ready.done():
            child.ready.set_exception(ChildStartError(f"{child.label} ended before it was ready"))
        if child.done is None:
            self._should_exit.set()

    async def serve_until_stopped(self) -> ServeResult:
        """Start (unless started), supervise until a stop request or a child's death, then stop
        the children with a drain; returns what they reported."""
        if not self._children:
            await self.start()
        try:
            await self._should_exit.wait()
            return await self._stop_children()
        finally:
            self._kill_all()
            if self._metrics is not None:
                await self._metrics.close()
            if self._web is not None:
                await self._web.close()

    async def _stop_children(self) -> ServeResult:
        """SIGTERM each living child and wait, within the drain timeout and
        :data:`CHILD_EXIT_GRACE_S`, for them to end and their lines to be written; a second
        signal (:meth:`abandon`) ends the wait at once. What is not written by then is counted
        as ``shutdown``."""
        dead = [child for child in self._children if child.ended.is_set() and child.done is None]
        died = [await self._died(child) for child in dead]
        self._terminate_living()
        finished = await self._children_stopped()
        self._kill_all()
        self._writer.give_up()
        for reader in self._readers:  # the children are gone: their pipes end at once
            await asyncio.to_thread(reader.join, CHILD_EXIT_GRACE_S)
        drained = finished and all(
            child.done is not None and child.done.drained
            for child in self._children
            if child not in dead  # one that dies while draining has not drained
        )
        if self._recorder is not None:  # its last interval has the children's last reports
            await asyncio.to_thread(self._recorder.close, self._abandoned.is_set())
        reports = self._with_endpoint(self._reports())
        error = self._writer.error or self._error
        return ServeResult(reports, drained, error, tuple(died))

    def _terminate_living(self) -> None:
        for child in self._children:
            if child.process.pid is not None and not child.ended.is_set():
                os.kill(child.process.pid, signal.SIGTERM)

    async def _children_stopped(self) -> bool:
        """Whether the children ended and their lines were written within the drain timeout
        and :data:`CHILD_EXIT_GRACE_S`; False also when a second signal ends the wait."""
        orderly = asyncio.ensure_future(self._children_and_output_done())
        forced = asyncio.ensure_future(self._abandoned.wait())
        deadline_s = self.config.drain_timeout_s + CHILD_EXIT_GRACE_S - STOP_RESERVE_S
        await asyncio.wait({orderly, forced}, timeout=deadline_s, return_when=FIRST_COMPLETED)
        finished = orderly.done()
        orderly.cancel()
        forced.cancel()
        return finished

    @staticmethod
    async def _died(child: _Child) -> str:
        line = f"{child.label} (pid {child.process.pid}) died: "
        # Its pipe closed: it has exited, or is exiting; waited for off the loop.
        await asyncio.to_thread(child.process.join, CHILD_EXIT_GRACE_S)
        line += describe_exit(child.process.exitcode)
        logger.error("%s; stopping the others", line)
        return line

    async def _children_and_output_done(self) -> None:
        await asyncio.gather(*(child.ended.wait() for child in self._children))
        for reader in self._readers:
            await asyncio.to_thread(reader.join)
        while not self._writer.idle():
            await asyncio.sleep(WAIT_FOR_ROOM_S)

    def _reports(self) -> tuple[StatsSnapshot, ...]:
        return tuple(report for child in self._children if (report := child.report()) is not None)

    def _kill_all(self) -> None:
        for child in self._children:
            if child.process.is_alive():
                child.process.kill()
