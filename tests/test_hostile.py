"""Hostile content costs linear time in C, so it cannot starve normal senders: a 5 MB/s flood
of control bytes and another of invalid UTF-8 run while a seed client sends at 10/s, and every
one of its messages is printed."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import sys
import threading
import time
from pathlib import Path

from support.flood import PAYLOADS
from support.waiting import eventually
from tests.helpers import LOOPBACK, CliProcess, assert_summary_balanced, read_port

FLOOD_BYTES_PER_S = 5_000_000
DATAGRAM_BYTES = 1000
NORMAL_MESSAGES = 100
NORMAL_INTERVAL_S = 0.1


def flood_until(port: int, kind: str, stop: threading.Event) -> int:
    """``kind`` datagrams at 5 MB/s, paced every 10 ms, until ``stop``; returns how many."""
    payload = PAYLOADS[kind](DATAGRAM_BYTES)
    per_tick = FLOOD_BYTES_PER_S // DATAGRAM_BYTES // 100
    sent = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect((LOOPBACK, port))
        next_tick = time.monotonic()
        while not stop.is_set():
            for _ in range(per_tick):
                sock.send(payload)
            sent += per_tick
            next_tick += 0.01
            stop.wait(max(0.0, next_tick - time.monotonic()))
    return sent


def send_normally(port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect((LOOPBACK, port))
        for counter in range(1, NORMAL_MESSAGES + 1):
            sock.send(f"normal: pesan ke-{counter}".encode())
            time.sleep(NORMAL_INTERVAL_S)


async def test_floods_of_hostile_bytes_do_not_starve_a_normal_sender(tmp_path: Path) -> None:
    output = tmp_path / "messages.log"
    with output.open("w") as out:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "udpchat", "serve", "--host", LOOPBACK, "--port", "0",
            stdout=out, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
    server = CliProcess(process)
    port = await read_port(server)
    stop = threading.Event()
    floods = [asyncio.to_thread(flood_until, port, kind, stop) for kind in ("control", "invalid")]
    flooding = asyncio.gather(*floods)
    try:
        await asyncio.to_thread(send_normally, port)
    finally:
        stop.set()
        flooded = await flooding
    expected = [f"[{LOOPBACK}] normal: pesan ke-{n}" for n in range(1, NORMAL_MESSAGES + 1)]

    def normal_lines() -> list[str]:
        return [line for line in output.read_text().splitlines() if "] normal: " in line]

    with contextlib.suppress(TimeoutError):  # the assert below says what is missing
        await eventually(lambda: normal_lines() == expected)
    server.signal(signal.SIGINT)
    status, _, stderr = await server.finish(timeout_s=30)
    assert status == 0, stderr
    assert normal_lines() == expected, stderr
    assert_summary_balanced(stderr, sent=sum(flooded) + NORMAL_MESSAGES)
    assert min(flooded) >= FLOOD_BYTES_PER_S // DATAGRAM_BYTES * 5  # at least 5 s of each
