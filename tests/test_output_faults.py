"""No silent loss: output that fails is counted as such and never as handled, a broken stdout
stops the server as it stops a Unix filter, and no handler exception wedges a worker."""

from __future__ import annotations

import asyncio
import errno
import io
import json
import os
import re
import socket
import subprocess
import sys
import textwrap
import threading

import pytest

from support.waiting import EVENT_TIMEOUT_S, eventually
from tests.helpers import (
    LOOPBACK,
    CliProcess,
    Collector,
    assert_balanced,
    assert_summary_balanced,
    flood,
    raw_send,
    read_port,
)
from udpchat import LinePrinter, Message, Server, ServerConfig
from udpchat.handlers import OutputError

SEED = [f"alice: pesan ke-{n}".encode() for n in range(1, 51)]


def serve_with_closed_stdout(payloads: list[bytes], *args: str) -> tuple[int, str]:
    """``udpchat serve | head -1``: read the banner, close the pipe, send; (status, stderr)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "udpchat", "serve", "--host", LOOPBACK, "--port", "0", *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdout is not None and process.stderr is not None
    try:
        listening = process.stderr.readline().decode()
        port = int(re.search(r" port (\d+)", listening).group(1))  # type: ignore[union-attr]
        assert process.stdout.readline() == b"Server menunggu...\n"
        process.stdout.close()
        raw_send((LOOPBACK, port), *payloads)
        status = process.wait(timeout=EVENT_TIMEOUT_S * 3)
        return status, listening + process.stderr.read().decode()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stderr.close()


async def test_a_broken_pipe_stops_the_server_with_the_loss_counted() -> None:
    status, stderr = await asyncio.to_thread(serve_with_closed_stdout, SEED)
    assert status == 1, stderr
    assert "Broken pipe" in stderr
    counts = assert_summary_balanced(stderr)
    # What still sits in loopback's softirq backlog when the server closes its socket is the
    # kernel's to drop, not the server's to count: a busy machine defers that softirq past the
    # sends. What was queued at the stop is read and counted (test_hardening pins that).
    assert 0 < counts["received"] + counts["kernel_drops"] <= len(SEED)
    assert counts["handled"] == 0, "nothing written may count as handled"
    assert counts["output_failed"] == counts["dropped"] == counts["received"] > 0
    assert "Traceback" not in stderr


async def test_with_processes_a_broken_pipe_stops_them_all_without_a_traceback() -> None:
    many = [f"u{n % 16}: pesan ke-{n // 16 + 1}".encode() for n in range(2000)]
    status, stderr = await asyncio.to_thread(serve_with_closed_stdout, many, "--processes", "2")
    assert status == 1, stderr
    assert "stopped by an error: cannot write messages: Broken pipe" in stderr
    assert "died" not in stderr
    assert "Traceback" not in stderr
    counts = assert_summary_balanced(stderr)  # it stops while datagrams still arrive
    assert counts["handled"] == 0, "stdout was closed before the first line: none was written"
    assert counts["output_failed"] > 0


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full on this OS")
@pytest.mark.parametrize(
    ("args", "flood_s"),
    [
        ((), 0.0),
        (("--processes", "2"), 0.0),
        (("--format", "json"), 1.0),
        (("--processes", "2", "--format", "json"), 1.0),
    ],
    ids=["text-short", "text-2-processes-short", "json-long", "json-2-processes-long"],
)
async def test_a_full_disk_never_costs_the_summary(args: tuple[str, ...], flood_s: float) -> None:
    """``serve > /dev/full``: the seed's banner fails at once in text (it goes to stdout), the
    first batch of lines in JSON (the banner goes to stderr); a short run (50 datagrams) or a
    long one (a flood first). However it fails, the server stops on its own, with the summary
    on stderr, the full disk named, exit 1, and no "forced stop" (the banner's failure was one:
    the summary was lost with it). No signal is sent: it would race with the exit, and the
    interpreter's last moments die of a SIGINT whatever the program does."""
    with open("/dev/full", "wb") as full:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "udpchat", "serve", "--host", LOOPBACK, "--port", "0", *args,
            stdout=full, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
    cli = CliProcess(process)
    port = await read_port(cli)
    if flood_s:
        await flood(port, size=100, count=int(20_000 * flood_s), seconds=flood_s)
    raw_send((LOOPBACK, port), *SEED)
    status, _, stderr = await cli.finish(timeout_s=EVENT_TIMEOUT_S * 3)
    assert status == 1, stderr
    assert "No space left on device" in stderr.splitlines()[-1], stderr
    assert "forced" not in stderr and "Traceback" not in stderr, stderr
    if "json" in args:
        (summary,) = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
        counts = summary["summary"]
        assert counts["handled"] == 0, counts
        assert counts["received"] == sum(counts["dropped"].values()) + counts["queue_depth"]
    else:
        counts = assert_summary_balanced(stderr)
        assert counts["handled"] == 0, counts


class FullDisk(io.StringIO):
    def write(self, text: str) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")


async def test_failed_output_is_counted_as_dropped_and_ends_serve() -> None:
    server = Server(ServerConfig(host=LOOPBACK, port=0), LinePrinter(FullDisk()))
    await server.start()
    serving = asyncio.create_task(server.serve())
    raw_send(server.address, *SEED[:5])
    with pytest.raises(OutputError, match="No space left on device"):
        await asyncio.wait_for(serving, EVENT_TIMEOUT_S)
    stats = server.stats()
    assert stats.handled == 0
    assert stats.dropped["output_failed"] == stats.received == 5
    assert_balanced(stats, sent=5)


@pytest.mark.parametrize("error", [SystemExit(3), KeyboardInterrupt(), GeneratorExit()])
async def test_a_handler_raising_any_exception_is_counted_and_never_wedges_a_worker(
    error: BaseException,
) -> None:
    seen = Collector()

    def handler(message: Message) -> None:
        seen(message)
        raise error

    config = ServerConfig(host=LOOPBACK, port=0, workers=2)
    async with Server(config, handler) as server:
        for chunk in range(4):  # more failing batches than workers
            raw_send(server.address, *SEED[chunk * 10 : chunk * 10 + 10])
            await seen.wait_for(chunk * 10 + 10)
        drained = await server.stop()
    stats = server.stats()
    assert drained
    assert (stats.handled, stats.handler_errors) == (40, 40)
    assert_balanced(stats, sent=40)


STUCK_HANDLER_PROGRAM = textwrap.dedent(
    """
    import asyncio, socket, sys, threading
    import udpchat

    async def main():
        entered = threading.Event()

        def stuck(message):
            entered.set()
            threading.Event().wait()  # never returns

        config = udpchat.ServerConfig(host="127.0.0.1", port=0, drain_timeout_s=0.2)
        async with udpchat.Server(config, stuck) as server:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.sendto(b"alice: pesan ke-1", server.address)
            await asyncio.to_thread(entered.wait)
        print("stopped", flush=True)

    asyncio.run(main())
    print("returned", flush=True)
    """
)


async def test_a_handler_that_never_returns_does_not_keep_the_process_alive() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", STUCK_HANDLER_PROGRAM,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    stdout, stderr = await asyncio.wait_for(process.communicate(), EVENT_TIMEOUT_S * 3)
    assert stdout.decode().split() == ["stopped", "returned"], stderr.decode()
    assert process.returncode == 0, stderr.decode()


async def test_counts_are_final_once_the_server_has_stopped() -> None:
    """What a test or an embedding app reads after ``stop()`` includes every handled message."""
    lock = threading.Lock()
    handled: list[Message] = []

    def handler(message: Message) -> None:
        with lock:
            handled.append(message)

    async with Server(ServerConfig(host=LOOPBACK, port=0), handler) as server:
        raw_send(server.address, *SEED)
        await eventually(lambda: server.stats().received == len(SEED))
    stats = server.stats()
    assert stats.handled == len(handled) == len(SEED)
    assert stats.queue_depth == 0
    assert_balanced(stats, sent=len(SEED))


async def test_every_snapshot_adds_up_while_traffic_flows() -> None:
    """``received == handled + dropped + queued`` in every snapshot, from any thread, not only
    once idle: all of them change under one lock."""
    config = ServerConfig(host=LOOPBACK, port=0, workers=4, queue_size=500)
    async with Server(config, LinePrinter(io.StringIO())) as server:
        stop = threading.Event()

        def blast() -> None:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                for counter in range(1, 40_001):
                    if stop.is_set():
                        return
                    sock.sendto(f"blast: pesan ke-{counter}".encode(), server.address)

        def check() -> list[tuple[int, int, int, int]]:
            wrong = []
            for _ in range(3000):
                stats = server.stats(include_senders=False)
                total = stats.handled + stats.dropped_total + stats.queue_depth
                if stats.received != total:
                    wrong.append((stats.received, stats.handled, stats.dropped_total, total))
            return wrong

        sending = asyncio.create_task(asyncio.to_thread(blast))
        try:
            wrong = await asyncio.to_thread(check)
        finally:
            stop.set()
            await sending
    assert wrong == []
    assert server.stats().received > 0
