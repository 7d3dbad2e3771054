"""``make bench-memory``: peak RSS under the worst traffic for memory, against the bound.

Two scenarios, each run several times against ``udpchat serve`` (output to a file):

- defaults: 10,000 senders each open the 64 counter gaps the accounting keeps, then a flood of
  1 KB datagrams of control bytes (the costliest to escape) fills the queue;
- ``--max-size 65507 --queue-size 100 --format json``: a flood of 64 KB control-byte datagrams
  (JSON writes a control byte as six).

The bound is :meth:`udpchat.ServerConfig.memory_bound_bytes` for the same settings: what
SECURITY.md states.
"""

from __future__ import annotations

import argparse
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks.run import peak_rss_bytes
from udpchat.accounting import DEFAULT_MAX_SENDERS, MAX_GAPS_PER_SENDER
from udpchat.server import DEFAULT_QUEUE_SIZE, DEFAULT_WORKERS, ServerConfig

PYTHON = sys.executable
LOOPBACK = "127.0.0.1"
FLOOD_PROCESSES = 2
READY_TIMEOUT_S = 30.0
GAP_DATAGRAMS_PER_S = 50_000


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


SCENARIOS = (
    Scenario(
        "defaults: 10,000 senders with gaps, then a 1 KB control-byte flood",
        (), DEFAULT_QUEUE_SIZE, 1024, DEFAULT_MAX_SENDERS, 1024, 6.0, 192 * 2**20,
    ),
    Scenario(
        "--max-size 65507 --queue-size 100 --format json, 64 KB control-byte flood",
        ("--max-size", "65507", "--queue-size", "100", "--format", "json"),
        100, 65507, 0, 65507, 6.0, 128 * 2**20,
    ),
)  # fmt: skip


def open_gaps(port: int, senders: int) -> None:
    """Each sender (its own source port) sends counters 1, 3, 5, ...: every gap stays open.
    Paced at about 50,000 datagrams a second, well below what the server takes in, so that the
    kernel drops none of a sender's datagrams even on a busy machine."""
    counters = range(1, 2 * MAX_GAPS_PER_SENDER + 2, 2)
    started = time.monotonic()
    for sender in range(senders):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.connect((LOOPBACK, port))
            for counter in counters:
                sock.send(b"g%05d: pesan ke-%d" % (sender, counter))
        ahead_s = started + (sender + 1) * len(counters) / GAP_DATAGRAMS_PER_S - time.monotonic()
        if ahead_s > 0:
            time.sleep(ahead_s)


def wait_for_line(path: Path, pattern: str, process: subprocess.Popen[bytes]) -> re.Match[str]:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        matches = list(re.finditer(pattern, path.read_text(errors="replace")))
        if matches:
            return matches[-1]
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{pattern!r} never appeared in {path}")
        time.sleep(0.05)


def run(scenario: Scenario, workdir: Path) -> tuple[int, str]:
    """One run: (peak RSS in bytes, the server's summary line)."""
    output, errors = workdir / "out.log", workdir / "err.log"
    command = [
        PYTHON, "-m", "udpchat", "serve", "--host", LOOPBACK, "--port", "0",
        "--stats-interval", "0.5", *scenario.serve_args,
    ]  # fmt: skip
    with output.open("wb") as out, errors.open("wb") as err:
        server = subprocess.Popen(command, stdout=out, stderr=err)
    try:
        port = int(wait_for_line(errors, r"listening on \S+ port (\d+)", server)[1])
        if scenario.gap_senders:
            open_gaps(port, scenario.gap_senders)
            wait_for_line(errors, rf"senders={scenario.gap_senders} ", server)
        flood = [PYTHON, "tests/flood.py", LOOPBACK, str(port), str(scenario.flood_size)]
        flood += ["100000000", str(scenario.flood_seconds), "control"]
        floods = [
            subprocess.Popen(flood, stdout=subprocess.DEVNULL) for _ in range(FLOOD_PROCESSES)
        ]
        for process in floods:
            process.wait(scenario.flood_seconds + 30)
        peak = peak_rss_bytes(server.pid)
        server.send_signal(signal.SIGINT)
        server.wait(60)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    summary = re.findall(r"summary: .*", errors.read_text(errors="replace"))
    return peak, summary[-1] if summary else "(no summary)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="udpchat-memory-") as directory:
        for scenario in SCENARIOS:
            bound = ServerConfig(
                queue_size=scenario.queue_size, max_datagram_size=scenario.max_size,
                max_senders=DEFAULT_MAX_SENDERS, workers=DEFAULT_WORKERS,
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
