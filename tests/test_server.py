from __future__ import annotations

import asyncio
import io
import socket
import threading
import time

import pytest

from support.waiting import eventually
from tests.helpers import LOOPBACK, Collector, assert_balanced, raw_send
from udpchat import LinePrinter, Message, Server, ServerConfig


async def test_raw_socket_client_reaches_the_handler(
    running_server: Server, collector: Collector
) -> None:
    before = time.time()
    raw_send(running_server.address, b"alice: pesan ke-1", b"not the seed format")
    first, second = await collector.wait_for(2)
    assert first.sender[0] == LOOPBACK
    assert first.text == "alice: pesan ke-1"
    assert (first.username, first.counter) == ("alice", 1)
    assert before <= first.received_at <= time.time()
    assert (second.text, second.username, second.counter) == ("not the seed format", None, None)


async def test_handler_runs_in_a_pool_thread_not_the_loop(
    running_server: Server, collector: Collector
) -> None:
    raw_send(running_server.address, *(f"u: pesan ke-{n}".encode() for n in range(1, 51)))
    await collector.wait_for(50)
    loop_thread = threading.current_thread().name
    assert loop_thread not in collector.threads
    assert all(name.startswith("udpchat-worker") for name in collector.threads)
    assert len(collector.threads) <= running_server.config.workers


async def test_port_zero_gives_a_real_port(running_server: Server) -> None:
    host, port = running_server.address
    assert host == LOOPBACK
    assert port > 0


@pytest.mark.skipif(not socket.has_ipv6, reason="no IPv6 on this host")
async def test_ipv6_loopback(collector: Collector) -> None:
    async with Server(ServerConfig(host="::1", port=0), collector) as server:
        raw_send(server.address, b"bob: pesan ke-7")
        (message,) = await collector.wait_for(1)
    assert message.sender[0] == "::1"
    assert (message.username, message.counter) == ("bob", 7)


async def test_stats_account_for_every_datagram(
    running_server: Server, collector: Collector
) -> None:
    raw_send(running_server.address, b"a: pesan ke-1", b"", b"x" * 2000, b"hello")
    await collector.wait_for(2)
    await running_server.stop()
    stats = running_server.stats()
    assert stats.received == 4
    assert stats.handled == 2
    assert stats.dropped["empty"] == 1
    assert stats.dropped["oversize"] == 1
    assert stats.received == stats.handled + stats.dropped_total


async def test_line_printer_writes_whole_seed_lines_from_many_workers() -> None:
    stream = io.StringIO()
    printer = Collector(LinePrinter(stream))
    async with Server(ServerConfig(host=LOOPBACK, port=0, workers=8), printer) as server:
        payloads = [f"user{n % 7}: pesan ke-{n}".encode() for n in range(1, 151)]
        await asyncio.to_thread(raw_send, server.address, *payloads)
        await printer.wait_for(150)
    lines = stream.getvalue().splitlines()
    expected = {f"[{LOOPBACK}] {payload.decode()}" for payload in payloads}
    assert len(lines) == 150
    assert set(lines) == expected


class BlockingHandler:
    """Holds every call until released, and says when the first call has begun."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.release = threading.Event()

    def __call__(self, message: Message) -> None:
        self.started.set()
        self.release.wait(10)


async def start_blocked_server(drain_timeout_s: float) -> tuple[Server, BlockingHandler]:
    """A one-worker server whose worker is stuck on a first message, with a second one queued."""
    handler = BlockingHandler()
    config = ServerConfig(host=LOOPBACK, port=0, workers=1, drain_timeout_s=drain_timeout_s)
    server = Server(config, handler)
    await server.start()
    raw_send(server.address, b"a: pesan ke-1")
    await asyncio.to_thread(handler.started.wait, 10)
    raw_send(server.address, b"a: pesan ke-2")
    await eventually(lambda: server.stats().received == 2)
    return server, handler


async def test_stop_lets_queued_messages_finish() -> None:
    server, handler = await start_blocked_server(drain_timeout_s=10)
    asyncio.get_running_loop().call_soon(handler.release.set)
    await server.stop()
    stats = server.stats()
    assert (stats.received, stats.handled, stats.dropped_total) == (2, 2, 0)
    assert_balanced(stats, sent=2)


async def test_stop_counts_what_the_drain_timeout_abandons() -> None:
    server, handler = await start_blocked_server(drain_timeout_s=0.05)
    await server.stop()
    stats = server.stats()
    assert stats.dropped["shutdown"] == 1  # the second, which no worker took
    assert stats.queue_depth == 1  # the first, in the stuck handler
    assert_balanced(stats, sent=2)
    handler.release.set()
