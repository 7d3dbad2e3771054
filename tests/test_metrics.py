"""The metrics endpoint is bounded: idle connections cost no thread, wait at most the read
timeout, and cannot lock out a real scrape."""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import threading
import urllib.request
from pathlib import Path

import pytest

from support.waiting import EVENT_TIMEOUT_S, eventually
from tests.helpers import LOOPBACK, raw_send
from udpchat import Server, ServerConfig
from udpchat.counters import ServerTally
from udpchat.metrics import MetricsServer

HALF_OPEN_CONNECTIONS = 1000
MAX_THREADS = 64


def os_threads() -> int:
    """Threads of this process as the OS counts them, not only Python's."""
    status = Path("/proc/self/status").read_text()
    return int(status.split("Threads:")[1].split()[0])


def open_idle_connections(address: tuple[str, int], count: int) -> list[socket.socket]:
    """Connections that never send a request: a slow or hostile scraper."""
    connections = []
    for _ in range(count):
        connection = socket.create_connection(address, timeout=EVENT_TIMEOUT_S)
        connections.append(connection)
    return connections


def get(address: tuple[str, int]) -> str:
    url = f"http://{address[0]}:{address[1]}/metrics"
    with urllib.request.urlopen(url, timeout=EVENT_TIMEOUT_S) as answer:
        text: str = answer.read().decode()
    return text


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc")
async def test_a_thousand_idle_connections_cost_no_threads_and_a_scrape_answers() -> None:
    config = ServerConfig(host=LOOPBACK, port=0, metrics_port=0, metrics_host=LOOPBACK)
    async with Server(config) as server:
        metrics = server.metrics_address
        assert metrics is not None
        raw_send(server.address, b"a: pesan ke-1")
        await eventually(lambda: server.stats().handled == 1)
        idle = await asyncio.to_thread(open_idle_connections, metrics, HALF_OPEN_CONNECTIONS)
        try:
            assert os_threads() < MAX_THREADS
            text = await asyncio.to_thread(get, metrics)
            assert "udpchat_messages_handled_total 1.0" in text
            (evicted,) = re.findall(
                r'udpchat_metrics_connections_dropped_total\{reason="evicted"\} (\d+)', text
            )
            assert int(evicted) > 0  # idle connections made room for the scrape
            assert threading.active_count() < MAX_THREADS
        finally:
            for connection in idle:
                connection.close()


async def test_a_connection_that_sends_nothing_is_closed_after_the_read_timeout() -> None:
    metrics = await MetricsServer.start(ServerTally().snapshot, LOOPBACK, 0, read_timeout_s=0.05)
    try:
        with socket.create_connection(metrics.address, timeout=EVENT_TIMEOUT_S) as idle:
            assert await asyncio.to_thread(idle.recv, 1) == b""  # closed by the server
        assert metrics.stats().connections_dropped["timed_out"] == 1
    finally:
        await metrics.close()


async def test_other_paths_and_methods_are_refused() -> None:
    metrics = await MetricsServer.start(ServerTally().snapshot, LOOPBACK, 0)
    try:
        with socket.create_connection(metrics.address, timeout=EVENT_TIMEOUT_S) as client:
            client.sendall(b"POST /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            answer = await asyncio.to_thread(client.recv, 4096)
        assert answer.startswith(b"HTTP/1.1 405 ")
        with socket.create_connection(metrics.address, timeout=EVENT_TIMEOUT_S) as client:
            client.sendall(b"GET /secrets HTTP/1.1\r\nHost: x\r\n\r\n")
            answer = await asyncio.to_thread(client.recv, 4096)
        assert answer.startswith(b"HTTP/1.1 404 ")
    finally:
        await metrics.close()


async def test_malformed_requests_are_answered_counted_and_logged_at_most_once_a_while(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """More than http.client's 100 headers, a head over the limit, a broken request line: each
    is answered 400 or 431 and counted, never a traceback."""
    metrics = await MetricsServer.start(ServerTally().snapshot, LOOPBACK, 0)
    requests = [
        b"GET /metrics HTTP/1.1\r\n" + b"".join(b"X-%d: y\r\n" % n for n in range(101)) + b"\r\n",
        b"GET /metrics HTTP/1.1\r\nX: " + b"y" * 9000 + b"\r\n\r\n",
        b"nonsense\r\n\r\n",
    ] * 3

    def ask(request: bytes) -> bytes:
        with socket.create_connection(metrics.address, timeout=EVENT_TIMEOUT_S) as client:
            client.sendall(request)
            return client.recv(4096)

    try:
        with caplog.at_level(logging.WARNING, logger="udpchat.metrics"):
            answers = [await asyncio.to_thread(ask, request) for request in requests]
        assert [answer.split(b" ", 2)[1] for answer in answers] == [b"431", b"431", b"400"] * 3
        assert metrics.stats().bad_requests == len(requests)
        logged = [record for record in caplog.records if record.name == "udpchat.metrics"]
        assert len(logged) == 1 and "malformed" in logged[0].getMessage()
    finally:
        await metrics.close()
