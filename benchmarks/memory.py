"""``make bench-memory``: what a queued datagram costs, and peak RSS under the worst traffic
for memory, against the bound.

First, for each address family, what one queued 1 KB datagram costs (``tracemalloc``, in
process, the worker held so that the datagrams stay queued): the figure behind
``QUEUED_DATAGRAM_OVERHEAD_BYTES``. Then four scenarios, each run several times against
``udpchat serve``:

- defaults, output to a file: 10,000 senders each open the 64 counter gaps the accounting
  keeps, then two floods of 1 KB datagrams of control bytes (the costliest to escape) fill the
  queue;
- the same with a slow stdout reader: stdout is a pipe read at full speed while the gaps open,
  then at 200 KB/s, so that output backs up, the workers block on it and the queue stays full;
- the same on a dual-stack socket (``--host ::``), the senders on IPv4 (their addresses
  ``::ffff:127.0.0.1``, the costliest a loopback source can have);
- ``--max-size 65507 --queue-size 100 --format json``: floods of 64 KB control-byte datagrams
  (JSON writes a control byte as six).

The bound is :meth:`udpchat.ServerConfig.memory_bound_bytes` for the same settings: what
SECURITY.md states.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from benchmarks.harness import peak_rss_bytes
from support.memory import queued_datagram_bytes
from udpchat.accounting import DEFAULT_MAX_SENDERS, MAX_GAPS_PER_SENDER
from udpchat.eventloop import run_coroutine
from udpchat.server import (
    DEFAULT_QUEUE_SIZE,
    DEFAULT_WORKERS,
    QUEUED_DATAGRAM_OVERHEAD_BYTES,
    QUEUED_IPV6_DATAGRAM_OVERHEAD_BYTES,
    ServerConfig,
)

PYTHON = sys.executable
LOOPBACK = "127.0.0.1"
FLOOD_PROCESSES = 2
READY_TIMEOUT_S = 30.0
GAP_DATAGRAMS_PER_S = 50_000
GAP_CHUNK = 4_000
"""Gap datagrams sent at most before the server has read them: well within its receive buffer
(some 10,000 small datagrams)."""
GAPS_TIMEOUT_S = 180.0
STATUS_READ = r"status: .* received=(\d+) .* kernel_drops=(\d+) "
"""The status line's datagrams read and dropped by the kernel: all that left its buffer."""
SLOW_READ_BYTES = 4096
SLOW_READ_PERIOD_S = 0.02
"""The slow reader takes 4 KiB every 20 ms: 200 KB/s, some 50 lines of 1 KB of control bytes."""
"""Datagrams sent between two waits for the server to have queued them: the kernel drops none."""


@dataclass(frozen=True)
class Scenario:
    name: str
    serve_args: tuple[str, ...]
    queue_size: int
    max_size: int
    gap_senders: int
    flood_size: int
    flood_seconds: float
    limit_bytes: int
    """What the issue asks peak RSS to stay under."""
    host: str = LOOPBACK
    slow_reader: bool = False


SCENARIOS = (
    Scenario(
        "defaults: 10,000 senders with gaps, then 1 KB control-byte floods, output to a file",
        (), DEFAULT_QUEUE_SIZE, 1024, DEFAULT_MAX_SENDERS, 1024, 6.0, 192 * 2**20,
    ),
    Scenario(
        "defaults, the same with a slow stdout reader",
        (), DEFAULT_QUEUE_SIZE, 1024, DEFAULT_MAX_SENDERS, 1024, 6.0, 192 * 2**20,
        slow_reader=True,
    ),
    Scenario(
        "defaults, --host :: (dual-stack, IPv4 senders), with a slow stdout reader",
        (), DEFAULT_QUEUE_SIZE, 1024, DEFAULT_MAX_SENDERS, 1024, 6.0, 192 * 2**20,
        host="::", slow_reader=True,
    ),
    Scenario(
        "--max-size 65507 --queue-size 100 --format json, 64 KB control-byte floods",
        ("--max-size", "65507", "--queue-size", "100", "--format", "json"),
        100, 65507, 0, 65507, 6.0, 128 * 2**20,
    ),
)  # fmt: skip

COST_CASES = (
    ("IPv4 socket", "127.0.0.1", "127.0.0.1", QUEUED_DATAGRAM_OVERHEAD_BYTES),
    ("dual-stack socket, IPv4 sender", "::", "127.0.0.1", QUEUED_IPV6_DATAGRAM_OVERHEAD_BYTES),
    ("dual-stack socket, IPv6 sender", "::", "::1", QUEUED_IPV6_DATAGRAM_OVERHEAD_BYTES),
)
"""(what, server host, sender host, the overhead the formula counts)."""


def report_datagram_costs(size: int = 1024) -> None:
    """Each family's cost, twice (the first run also pays one-time costs), beside the formula's
    overhead."""
    longest_ipv4, longest_ipv6 = "255.255.255.255", "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255"
    print(
        f"beyond loopback: the longest IPv4 address adds "
        f"{sys.getsizeof(longest_ipv4) - sys.getsizeof(LOOPBACK)} B; the longest IPv6 one "
        f"{sys.getsizeof(longest_ipv6) - sys.getsizeof('::ffff:127.0.0.1')} B, and a flow label "
        f"and a scope id of 256 or more (not cached small ints) {2 * sys.getsizeof(2**19)} B",
        flush=True,
    )
    for name, server_host, client_host, counted in COST_CASES:
        costs = [
            run_coroutine(queued_datagram_bytes(server_host, client_host, size)) for _ in range(2)
        ]
        print(
            f"queued {size} B datagram, {name}: {costs[-1]:,.0f} B (first run {costs[0]:,.0f}), "
            f"{costs[-1] - size:,.0f} B besides the payload; the formula counts {counted} B",
            flush=True,
        )


def open_gaps(port: int, senders: int, errors: Path, server: subprocess.Popen[bytes]) -> None:
    """Each sender (its own source port) sends counters 1, 3, 5, ...: every gap stays open.
    Paced at about 50,000 datagrams a second, and never more than :data:`GAP_CHUNK` ahead of
    what the server's status line says it has read, so that the kernel drops none of a
    sender's datagrams even when the machine is busy."""
    counters = range(1, 2 * MAX_GAPS_PER_SENDER + 2, 2)
    started = time.monotonic()
    sent = read = 0
    for sender in range(senders):
        if sent - read >= GAP_CHUNK:
            wait_for_line(errors, STATUS_READ, server, at_least=sent)
            read = sent  # read, or dropped by the kernel: out of the socket's buffer either way
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.connect((LOOPBACK, port))
            for counter in counters:
                sock.send(b"g%05d: pesan ke-%d" % (sender, counter))
        sent += len(counters)
        ahead_s = started + sent / GAP_DATAGRAMS_PER_S - time.monotonic()
        if ahead_s > 0:
            time.sleep(ahead_s)


def wait_for_line(
    path: Path,
    pattern: str,
    process: subprocess.Popen[bytes],
    timeout_s: float = READY_TIMEOUT_S,
    at_least: int | None = None,
) -> re.Match[str]:
    """The last line of ``path`` that matches, once there is one (and the numbers in its
    groups add up to at least ``at_least``, when given)."""
    deadline = time.monotonic() + timeout_s
    while True:
        text = path.read_text(errors="replace")
        matches = list(re.finditer(pattern, text))
        if matches and (at_least is None or sum(map(int, matches[-1].groups())) >= at_least):
            return matches[-1]
        if process.poll() is not None or time.monotonic() > deadline:
            status = re.findall(r"status: .*", text)
            last = status[-1] if status else "no status line"
            raise RuntimeError(f"{pattern!r} never appeared in {path}; last: {last}")
        time.sleep(0.05)


class Reader:
    """Reads the server's stdout from a pipe: at full speed, then slowly once :meth:`slow_down`
    is called, until the server closes it."""

    def __init__(self, pipe: int) -> None:
        self._pipe = pipe
        self._slow = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def slow_down(self) -> None:
        self._slow.set()

    def _read(self) -> None:
        while os.read(self._pipe, SLOW_READ_BYTES if self._slow.is_set() else 1 << 20):
            if self._slow.is_set():
                time.sleep(SLOW_READ_PERIOD_S)

    def finish(self) -> None:
        self._thread.join()
        os.close(self._pipe)


@contextmanager
def serving(
    scenario: Scenario, workdir: Path
) -> Iterator[tuple[subprocess.Popen[bytes], Path, Reader | None]]:
    """``udpchat serve`` for the scenario, its stdout to a file or to a :class:`Reader`, with
    its stderr's path; killed if still running at the end."""
    output, errors = workdir / "out.log", workdir / "err.log"
    command = [
        PYTHON, "-m", "udpchat", "serve", "--host", scenario.host, "--port", "0",
        "--stats-interval", "0.1", "--verbose", *scenario.serve_args,
    ]  # fmt: skip
    reader: Reader | None = None
    with output.open("wb") as out, errors.open("wb") as err:
        if scenario.slow_reader:
            read_end, write_end = os.pipe()
            server = subprocess.Popen(command, stdout=write_end, stderr=err)
            os.close(write_end)
            reader = Reader(read_end)
        else:
            server = subprocess.Popen(command, stdout=out, stderr=err)
    try:
        yield server, errors, reader
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
        if reader is not None:
            reader.finish()


def run(scenario: Scenario, workdir: Path) -> tuple[int, str]:
    """One run: (peak RSS in bytes, the server's summary line)."""
    with serving(scenario, workdir) as (server, errors, reader):
        port = int(wait_for_line(errors, r"listening on \S+ port (\d+)", server)[1])
        if scenario.gap_senders:
            open_gaps(port, scenario.gap_senders, errors, server)
            # The server may be busy writing their 650,000 lines on a loaded machine.
            wait_for_line(errors, rf"senders={scenario.gap_senders} ", server, GAPS_TIMEOUT_S)
        if reader is not None:
            reader.slow_down()
        flood = [PYTHON, "support/flood.py", LOOPBACK, str(port), str(scenario.flood_size)]
        flood += ["100000000", str(scenario.flood_seconds), "control"]
        floods = [
            subprocess.Popen(flood, stdout=subprocess.DEVNULL) for _ in range(FLOOD_PROCESSES)
        ]
        for process in floods:
            process.wait(scenario.flood_seconds + 30)
        peak = peak_rss_bytes(server.pid)
        server.send_signal(signal.SIGINT)
        server.wait(60)
    summary = re.findall(r'summary: .*|\{"summary": .{,300}', errors.read_text(errors="replace"))
    return peak, summary[-1] if summary else "(no summary)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--scenario", type=int, action="append", help="run only these (1-based; repeatable)"
    )
    parser.add_argument("--no-costs", action="store_true", help="skip the tracemalloc step")
    args = parser.parse_args()
    if not args.no_costs:
        report_datagram_costs()
    chosen = [SCENARIOS[number - 1] for number in args.scenario or range(1, len(SCENARIOS) + 1)]
    with tempfile.TemporaryDirectory(prefix="udpchat-memory-") as directory:
        for scenario in chosen:
            bound = ServerConfig(
                host=scenario.host, queue_size=scenario.queue_size,
                max_datagram_size=scenario.max_size, max_senders=DEFAULT_MAX_SENDERS,
                workers=DEFAULT_WORKERS,
            ).memory_bound_bytes()  # fmt: skip
            peaks = []
            for _ in range(args.runs):
                peak, summary = run(scenario, Path(directory))
                peaks.append(peak)
                print(f"  {peak / 2**20:6.1f} MiB  {summary}", file=sys.stderr, flush=True)
            within = max(peaks) <= min(bound, scenario.limit_bytes)
            print(
                f"{scenario.name}: peak RSS median {statistics.median(peaks) / 2**20:.1f} MiB "
                f"({min(peaks) / 2**20:.1f}-{max(peaks) / 2**20:.1f}) over {args.runs} runs; "
                f"bound {bound / 2**20:.1f} MiB; limit {scenario.limit_bytes / 2**20:.0f} MiB; "
                f"{'within both' if within else 'EXCEEDED'}",
                flush=True,
            )


if __name__ == "__main__":
    main()
