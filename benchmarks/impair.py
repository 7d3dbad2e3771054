"""``make bench-impair``: what ``udpchat impair`` costs, side by side with the server alone.

Three parts, each run as real subprocesses on loopback, trials interleaved and repeated so that
whatever else the machine does falls on every design alike (medians, with min-max):

- throughput: the C generator (``benchmarks/blast.c``) drives ``udpchat serve --quiet``
  directly, and through ``udpchat impair --loss 1% --duplicate 1%``, at rising rates. A trial's
  unintended loss is what vanished beyond the proxy's own drops: datagrams the proxy never read
  (its socket overflowed) plus those it forwarded that the server did not handle. A design
  passes a rate when the median unintended loss of its trials is under 0.1%.
- delay: ``udpchat impair --delay 20ms`` between a sender and a receiver in C
  (``benchmarks/stamp.c``) that compare each datagram's arrival with the send time stamped in
  it (one clock, CLOCK_MONOTONIC): the p99 of how far the delay was off, at each rate. Two
  floors in the same rounds: the path without the proxy (the instruments' own), and through
  the proxy with no impairment (what one more process on the path costs on this machine). A
  rate passes when the median p99 of its trials is within :data:`DELAY_P99_LIMIT_S`.
- memory: the proxy's peak RSS with its client table full, both links at their byte bound
  (64 KB datagrams, held by long delays) and datagrams still pouring in, against
  :meth:`udpchat.impair.ProxyConfig.memory_bound_bytes`, the bound SECURITY.md states.

Usage: ``python -m benchmarks.impair [--parts throughput,delay,memory] [--trials 3]``.
"""

from __future__ import annotations

import argparse
import enum
import os
import platform
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

from benchmarks.harness import (
    BLAST,
    STAMP,
    build,
    free_port,
    generate,
    peak_rss_bytes,
    process_cpu_s,
)
from udpchat.impair import ProxyConfig

PYTHON = sys.executable
LOOPBACK = "127.0.0.1"
MAX_LOSS = 0.001
READY_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 60.0
DEFAULT_RATES = (25_000, 50_000, 75_000, 100_000)
DEFAULT_DELAY_RATES = (1_000, 5_000, 10_000)
USERS = 100
DELAY_S = 0.020
DELAY_P99_LIMIT_S = 0.001


class Running:
    """A udpchat command in the background, its stderr in a file."""

    def __init__(self, args: list[str], workdir: Path) -> None:
        self.errors = workdir / f"err-{time.monotonic_ns()}.log"
        with self.errors.open("wb") as err:
            self.process = subprocess.Popen(
                [PYTHON, "-m", "udpchat", *args], stdout=subprocess.DEVNULL, stderr=err
            )

    def wait_for(self, pattern: str) -> re.Match[str]:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            found = re.search(pattern, self.errors.read_text(errors="replace"))
            if found is not None:
                return found
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{pattern!r} never appeared: {self.errors.read_text()}")
            time.sleep(0.02)

    def cpu_s(self) -> float:
        """User plus system CPU time so far."""
        return process_cpu_s(self.process.pid)

    def stop(self) -> str:
        """SIGINT, wait, and the stderr it wrote."""
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(STOP_TIMEOUT_S)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
        text = self.errors.read_text(errors="replace")
        self.errors.unlink()
        return text


def summary(text: str, marker: str) -> dict[str, int]:
    """The totals of the last ``marker`` line (``summary:``, ``impair summary:``)."""
    line = [line for line in text.splitlines() if marker in line][-1]
    return {key: int(value) for key, value in re.findall(r" (\w+)=(\d+)", line)}


# Throughput.


@dataclass
class Trial:
    sent: int
    unread: int = 0
    """Datagrams the proxy never read: its socket's buffer overflowed."""
    unhandled: int = 0
    """Datagrams sent to the server (by the generator, or forwarded) that it did not handle."""
    proxy_cpu_s: float = 0.0

    @property
    def unintended(self) -> int:
        """Datagrams lost beyond the proxy's own drops."""
        return self.unread + self.unhandled

    @property
    def loss(self) -> float:
        return self.unintended / self.sent if self.sent else 1.0


IMPAIRMENT = ("--loss", "1%", "--duplicate", "1%", "--seed", "1")


def serve(workdir: Path) -> tuple[Running, int]:
    port = free_port()
    server = Running(["serve", "--host", LOOPBACK, "--port", str(port), "--quiet", "-v"], workdir)
    server.wait_for("listening on")
    return server, port


def alone(rate: int, duration_s: float, workdir: Path) -> Trial:
    server, port = serve(workdir)
    sent, _ = generate(port, rate, duration_s, USERS)
    handled = summary(server.stop(), "summary:")["handled"]
    return Trial(sent, unhandled=sent - handled)


def through_proxy(rate: int, duration_s: float, workdir: Path) -> Trial:
    server, port = serve(workdir)
    listen = free_port()
    proxy = Running(
        ["impair", "--listen", f"{LOOPBACK}:{listen}", "--to", f"{LOOPBACK}:{port}", "--verbose",
         *IMPAIRMENT],
        workdir,
    )  # fmt: skip
    try:
        proxy.wait_for("listening on")
        cpu_before = proxy.cpu_s()
        sent, _ = generate(listen, rate, duration_s, USERS)
        cpu_s = proxy.cpu_s() - cpu_before
        counts = summary(proxy.stop(), "impair summary:")
    finally:
        handled = summary(server.stop(), "summary:")["handled"]
    return Trial(sent, sent - counts["received"], counts["forwarded"] - handled, cpu_s)


def throughput(rates: list[int], trials: int, duration_s: float, workdir: Path) -> None:
    print(f"\nthroughput: {USERS} users, {duration_s:g} s a trial, {trials} trials a rate")
    print(f"proxy: udpchat impair {' '.join(IMPAIRMENT)}\n")
    print("| offered | server alone: unintended loss | through impair: unintended loss "
          "| impair CPU (share of one core) |")  # fmt: skip
    print("|---:|---:|---:|---:|")
    for rate in rates:
        results: dict[str, list[Trial]] = {"alone": [], "proxy": []}
        for round_ in range(trials):
            results["alone"].append(alone(rate, duration_s, workdir))
            results["proxy"].append(through_proxy(rate, duration_s, workdir))
            proxied = results["proxy"][-1]
            print(
                f"  {rate:>7,}/s round {round_ + 1}: alone {results['alone'][-1].loss:.3%}, "
                f"through impair {proxied.loss:.3%} (unread by the proxy {proxied.unread}, "
                f"unhandled by the server {proxied.unhandled})",
                file=sys.stderr,
                flush=True,
            )
        cpu = sorted(trial.proxy_cpu_s / duration_s for trial in results["proxy"])
        print(
            f"| {rate:,}/s | {spread([t.loss for t in results['alone']])} "
            f"| {spread([t.loss for t in results['proxy']])} "
            f"| {statistics.median(cpu):.0%} ({cpu[0]:.0%}-{cpu[-1]:.0%}) |",
            flush=True,
        )


def spread(losses: list[float]) -> str:
    ordered = sorted(losses)
    median = statistics.median(ordered)
    verdict = "pass" if median < MAX_LOSS else "FAIL"
    return f"{median:.3%} ({ordered[0]:.3%}-{ordered[-1]:.3%}) {verdict}"


# Delay: the C sender and receiver, directly and through the proxy.


class Route(enum.Enum):
    """What stands between the stamped sender and the receiver in a delay trial."""

    DIRECT = "direct"
    FORWARD = "through impair, no impairment"
    DELAYED = f"through impair --delay {DELAY_S * 1000:g}ms"


def delay_trial(
    rate: int, duration_s: float, route: Route, workdir: Path
) -> tuple[list[float], int]:
    """Each datagram's latency minus the delay asked for, in seconds; and how many did not
    arrive (the receiver's buffer overflowed)."""
    count = int(rate * duration_s)
    port = free_port()
    receiver = subprocess.Popen(
        [str(STAMP), "receive", str(port), str(count)], stdout=subprocess.PIPE, text=True
    )
    assert receiver.stdout is not None
    receiver.stdout.readline()
    proxy = None
    target = port
    if route is not Route.DIRECT:
        target = free_port()
        delay = ["--delay", f"{DELAY_S * 1000:g}ms"] if route is Route.DELAYED else []
        proxy = Running(
            ["impair", "--listen", f"{LOOPBACK}:{target}", "--to", f"{LOOPBACK}:{port}", *delay],
            workdir,
        )
        proxy.wait_for("listening on")
    try:
        subprocess.run([str(STAMP), "send", str(target), str(rate), str(count)], check=True)
        output, _ = receiver.communicate(timeout=STOP_TIMEOUT_S)
    finally:
        if proxy is not None:
            proxy.stop()
        if receiver.poll() is None:
            receiver.kill()
    latencies = [int(each) / 1e9 for each in output.split()]
    if len(latencies) < 2:
        raise RuntimeError(f"{route.value}: {len(latencies)} of {count} datagrams arrived")
    offset = DELAY_S if route is Route.DELAYED else 0.0
    return [latency - offset for latency in latencies], count - len(latencies)


def delay(rates: list[int], trials: int, duration_s: float, workdir: Path) -> None:
    print(f"\ndelay: udpchat impair --delay {DELAY_S * 1000:g}ms, {duration_s:g} s a trial, "
          f"{trials} trials a rate, each path in turn; how far each datagram's latency was off "
          "the delay asked for (the direct path, and the proxy with no impairment, are the "
          f"floors); a rate passes when the median p99 is within "
          f"{DELAY_P99_LIMIT_S * 1000:g} ms\n")  # fmt: skip
    print("| rate | direct p99 | no impairment p99 | --delay: p50 off | p99 off | max off "
          "| missing (all paths) | verdict |")  # fmt: skip
    print("|---:|---:|---:|---:|---:|---:|---:|---|")
    for rate in rates:
        p99: dict[Route, list[float]] = {route: [] for route in Route}
        p50, worst, missing = [], [], 0
        for _ in range(trials):
            for route in Route:
                errors, lost = delay_trial(rate, duration_s, route, workdir)
                percentiles = statistics.quantiles(errors, n=100)
                p99[route].append(percentiles[98])
                missing += lost
                if route is Route.DELAYED:
                    p50.append(percentiles[49])
                    worst.append(max(errors))
            print(
                f"  {rate:>6,}/s: p99 " + ", ".join(
                    f"{route.value} {p99[route][-1] * 1e3:.3f} ms" for route in Route
                ) + f"; missing so far {missing}",
                file=sys.stderr,
                flush=True,
            )  # fmt: skip
        delayed = statistics.median(p99[Route.DELAYED])
        verdict = "pass" if delayed <= DELAY_P99_LIMIT_S else "FAIL"
        print(
            f"| {rate:,}/s | {ms(p99[Route.DIRECT])} | {ms(p99[Route.FORWARD])} | {ms(p50)} "
            f"| {ms(p99[Route.DELAYED])} | {ms(worst)} | {missing} | {verdict} |",
            flush=True,
        )


def ms(values: list[float]) -> str:
    ordered = sorted(values)
    return (
        f"{statistics.median(ordered) * 1e3:.3f} ms "
        f"({ordered[0] * 1e3:.3f}-{ordered[-1] * 1e3:.3f})"
    )


# Memory.

MEMORY_CLIENTS = 300
"""Sources flooding at once: more than the default client table holds (256)."""
MEMORY_FLOOD_S = 6.0
MEMORY_DATAGRAM = 65507


def echo(port: int, seconds: float) -> None:
    """A target that sends every datagram back to where it came from, for ``seconds``."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((LOOPBACK, port))
        sock.settimeout(0.5)
        print("ready", flush=True)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                data, address = sock.recvfrom(65535)
                sock.sendto(data, address)
            except OSError:
                continue


def flood(port: int, sources: int, seconds: float) -> None:
    """64 KB datagrams from ``sources`` sockets in turn, for ``seconds``; loopback only."""
    payload = bytes(MEMORY_DATAGRAM)
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(sources)]
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            for sock in sockets:
                try:
                    sock.sendto(payload, (LOOPBACK, port))
                except OSError:
                    continue
            time.sleep(0.01)
    finally:
        for sock in sockets:
            sock.close()


def memory(trials: int, workdir: Path) -> None:
    bound = ProxyConfig().memory_bound_bytes()
    print(
        f"\nmemory: {MEMORY_CLIENTS} sources flooding 64 KB datagrams for {MEMORY_FLOOD_S:g} s "
        "at udpchat impair --delay up:2s --delay down:30s (defaults otherwise: 256 clients, "
        "8 MiB a direction), the target echoing each one back\n"
    )
    peaks = []
    for _ in range(trials):
        port = free_port()
        target = subprocess.Popen(
            [PYTHON, "-m", "benchmarks.impair", "--role", "echo", str(port),
             str(MEMORY_FLOOD_S + 5)],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert target.stdout is not None
        target.stdout.readline()
        listen = free_port()
        proxy = Running(
            ["impair", "--listen", f"{LOOPBACK}:{listen}", "--to", f"{LOOPBACK}:{port}",
             "--delay", "up:2s", "--delay", "down:30s", "--stats-interval", "0.5", "--verbose"],
            workdir,
        )  # fmt: skip
        try:
            proxy.wait_for("listening on")
            flood(listen, MEMORY_CLIENTS, MEMORY_FLOOD_S)
            peak = peak_rss_bytes(proxy.process.pid)
            counts = summary(proxy.errors.read_text(errors="replace"), "impair status:")
        finally:
            proxy.stop()
            target.kill()
            target.wait()
        peaks.append(peak)
        print(
            f"  peak {peak / 2**20:.1f} MiB; status: clients={counts['clients']} "
            f"clients_refused={counts['clients_refused']} queued={counts['queued']} "
            f"dropped_full={counts['dropped_full']}",
            file=sys.stderr,
            flush=True,
        )
    print(
        f"peak RSS median {statistics.median(peaks) / 2**20:.1f} MiB "
        f"({min(peaks) / 2**20:.1f}-{max(peaks) / 2**20:.1f}) over {trials} runs; "
        f"bound {bound / 2**20:.1f} MiB; {'within' if max(peaks) <= bound else 'EXCEEDED'}",
        flush=True,
    )


ROLES = {"echo": lambda args: echo(int(args[0]), float(args[1]))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--parts", default="throughput,delay,memory")
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per trial")
    parser.add_argument("--rates", type=lambda text: [int(r) for r in text.split(",")])
    parser.add_argument("--delay-rates", type=lambda text: [int(r) for r in text.split(",")])
    parser.add_argument("--role", choices=ROLES, help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args()
    if args.role is not None:
        ROLES[args.role](rest)
        return
    parts = args.parts.split(",")
    build_for(parts)
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, {platform.system()} {platform.release()}; "
        f"load average at start {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="udpchat-bench-impair-") as directory:
        run_parts(parts, args, Path(directory))


def build_for(parts: list[str]) -> None:
    """The C programs the parts need, built; or an exit saying which part lacks a compiler."""
    if "throughput" in parts and not build(BLAST):
        raise SystemExit("the throughput part needs the C generator (a C compiler)")
    if "delay" in parts and not build(STAMP):
        raise SystemExit("the delay part needs the C sender and receiver (a C compiler)")


def run_parts(parts: list[str], args: argparse.Namespace, workdir: Path) -> None:
    if "throughput" in parts:
        throughput(args.rates or list(DEFAULT_RATES), args.trials, args.duration, workdir)
    if "delay" in parts:
        rates = args.delay_rates or list(DEFAULT_DELAY_RATES)
        delay(rates, args.trials, args.duration, workdir)
    if "memory" in parts:
        memory(args.trials, workdir)


if __name__ == "__main__":
    main()
