"""``serve --processes N``: N server processes on one port (Linux ``SO_REUSEPORT``).

Each child has its own event loop, pool and GIL; the kernel spreads datagrams across them by
source. Children send their output to the parent in whole lines, and the parent alone writes
them, so that lines never interleave; at the end each child sends its counters and the parent
adds them up.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import multiprocessing
import os
import signal
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import BinaryIO

from udpchat.output import OutputSettings
from udpchat.runtime import LoopChoice, SignalStop, periodically, run, tune_for_throughput
from udpchat.server import Server, ServerConfig
from udpchat.sockets import bind_udp_socket
from udpchat.stats import StatsSnapshot


class ChildStartError(OSError):
    """A child could not start its server; carries the child's own error text."""


class _ConnectionWriter(io.StringIO):
    """A text stream whose writes go to the parent as one message each (whole lines)."""

    def __init__(self, connection: Connection) -> None:
        super().__init__()
        self._connection = connection

    def write(self, text: str) -> int:
        self._connection.send_bytes(text.encode("utf-8"))
        return len(text)


def _child_main(
    config: ServerConfig,
    settings: OutputSettings,
    label: str,
    loop: LoopChoice,
    control: Connection,
    output: Connection,
) -> None:
    """One child: serve until the parent's SIGTERM, then report counters and leave."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the parent, which decides
    tune_for_throughput()
    server = Server(config, settings.printer(_ConnectionWriter(output)))
    stop = SignalStop(signals=(signal.SIGTERM,))

    async def serve() -> bool:
        with stop.installed():
            try:
                await server.start()
            except OSError as error:
                control.send(("error", error.strerror or str(error)))
                return True
            control.send(("ready", server.address))
            async with periodically(
                settings.stats_interval_s, settings.status_reporter(server, label)
            ):
                await stop.requested.wait()
            return await server.stop()

    drained = run(serve(), loop)
    control.send(("done", server.stats(), drained))
    output.close()
    os._exit(0)  # a stuck worker must not keep the child alive


def _probe_port(config: ServerConfig) -> int:
    """A free port that SO_REUSEPORT sockets can share, for ``--port 0``."""
    with bind_udp_socket(config.host, 0, reuse_port=True) as probe:
        port: int = probe.getsockname()[1]
    return port


async def serve_processes(
    config: ServerConfig,
    processes: int,
    loop: LoopChoice,
    out: BinaryIO,
    stop: SignalStop,
    on_ready: Callable[[tuple[str, int]], None],
    settings: OutputSettings,
) -> tuple[list[StatsSnapshot], bool]:
    """Run ``processes`` children until ``stop``; returns each one's stats, and whether all
    drained."""
    port = config.port or _probe_port(config)
    child_config = dataclasses.replace(config, port=port, reuse_port=True)
    context = multiprocessing.get_context("spawn")
    children: list[tuple[BaseProcess, Connection]] = []
    relays: list[threading.Thread] = []
    out_lock = threading.Lock()

    def relay(connection: Connection) -> None:
        """Copy one child's output chunks (whole lines each) to ``out`` until the child ends."""
        with connection:
            while True:
                try:
                    chunk = connection.recv_bytes()
                except (EOFError, OSError):
                    return
                with out_lock:
                    out.write(chunk)
                    out.flush()

    for index in range(processes):
        control, control_child = context.Pipe()
        output, output_child = context.Pipe(duplex=False)
        child = context.Process(
            target=_child_main,
            args=(
                child_config,
                settings,
                f"process {index + 1}: ",
                loop,
                control_child,
                output_child,
            ),
            daemon=True,
        )
        child.start()
        control_child.close()
        output_child.close()
        relays.append(threading.Thread(target=relay, args=(output,), daemon=True))
        relays[-1].start()
        children.append((child, control))

    with stop.installed():
        try:
            address: tuple[str, int] = ("", port)
            for _, control in children:
                kind, *detail = await asyncio.to_thread(control.recv)
                if kind == "error":
                    raise ChildStartError(f"{detail[0]}")
                address = detail[0]
            on_ready(address)
            await stop.requested.wait()
            for process, _ in children:
                if process.pid is not None:
                    os.kill(process.pid, signal.SIGTERM)
            reports = [await asyncio.to_thread(control.recv) for _, control in children]
            for thread in relays:
                await asyncio.to_thread(thread.join)
        finally:
            for process, _ in children:
                if process.is_alive():
                    process.kill()
    snapshots: list[StatsSnapshot] = [snapshot for _, snapshot, _ in reports]
    return snapshots, all(drained for _, _, drained in reports)
