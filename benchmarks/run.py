"""``make bench``: the highest offered rate each design handles with under 0.1% loss, side by side.

Each trial starts the design as a subprocess with its per-message output going to a file, drives
it with ``udpchat load`` at one rate for a few seconds, stops it with SIGINT and counts the lines
it wrote. Designs share the load, the output handling and the machine in one run, so the ratios
mean something even where the absolute figures wander with the machine's other work.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

MAX_LOSS = 0.001
GENERATOR_SHORTFALL = 0.95
"""A trial whose generator sent under this share of the offered rate measured the generator."""
DEFAULT_RATES = (1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000, 200_000, 300_000, 400_000)
REFINE_STEPS = 2
"""Bisections between the last rate passed and the first failed."""
READY_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 60.0

PYTHON = sys.executable
DESIGNS: dict[str, list[str]] = {
    "udpchat serve": ["-m", "udpchat", "serve", "--host", "127.0.0.1", "--port", "{port}"],
    "udpchat serve --processes 2": [
        *("-m", "udpchat", "serve", "--host", "127.0.0.1", "--port", "{port}", "--processes", "2"),
    ],
    "seed: thread per datagram": ["-m", "benchmarks.baselines.seed_threads", "{port}"],
    "naive: run_in_executor per datagram": ["-m", "benchmarks.baselines.naive_executor", "{port}"],
}


@dataclass
class Trial:
    design: str
    offered_per_s: int
    achieved_per_s: float
    sent: int
    handled: int
    peak_rss_bytes: int

    @property
    def generator_limited(self) -> bool:
        return self.achieved_per_s < GENERATOR_SHORTFALL * self.offered_per_s

    @property
    def loss(self) -> float:
        return 1.0 - self.handled / self.sent if self.sent else 1.0

    @property
    def passed(self) -> bool:
        return self.sent > 0 and self.loss < MAX_LOSS


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def peak_rss_bytes(pid: int) -> int:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    found = re.search(r"VmHWM:\s+(\d+) kB", status)
    return int(found.group(1)) * 1024 if found else 0


def wait_for_banner(output: Path, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while b"Server menunggu..." not in output.read_bytes():
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"server did not start: {output}")
        time.sleep(0.02)


def run_load(port: int, rate: int, duration_s: float, users: int) -> tuple[int, float]:
    """Returns (sent, achieved rate) from a ``udpchat load`` process."""
    result = subprocess.run(
        [
            PYTHON, "-m", "udpchat", "load", "--port", str(port), "--rate", str(rate),
            "--duration", str(duration_s), "--users", str(users), "--no-progress",
        ],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    fields = dict(re.findall(r"(\w+)=([\d.]+)", result.stdout))
    return int(fields["sent"]), float(fields["rate_per_s"])


def run_trial(design: str, rate: int, duration_s: float, users: int, workdir: Path) -> Trial:
    port = free_port()
    output = workdir / f"out-{port}.log"
    errors = workdir / f"err-{port}.log"
    command = [PYTHON, *(part.format(port=port) for part in DESIGNS[design])]
    with output.open("wb") as out, errors.open("wb") as err:
        process = subprocess.Popen(command, stdout=out, stderr=err)
    try:
        wait_for_banner(output, process)
        sent, achieved = run_load(port, rate, duration_s, users)
        peak = peak_rss_bytes(process.pid)
        process.send_signal(signal.SIGINT)
        process.wait(STOP_TIMEOUT_S)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    with output.open("rb") as lines:
        handled = sum(1 for _ in lines) - 1
    output.unlink()
    errors.unlink()
    return Trial(design, rate, achieved, sent, handled, peak)


def generator_ceiling(duration_s: float, users: int, workdir: Path) -> tuple[float, int, int]:
    """The load generator flat out against a receive-only sink: (rate, sent, received)."""
    port = free_port()
    output = workdir / "sink.log"
    with output.open("wb") as out:
        process = subprocess.Popen(
            [PYTHON, "-m", "benchmarks.baselines.sink", str(port)],
            stdout=out, stderr=subprocess.PIPE,
        )  # fmt: skip
    wait_for_banner(output, process)
    sent, rate = run_load(port, 0, duration_s, users)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=STOP_TIMEOUT_S)
    received = int(re.findall(rb"received=(\d+)", stderr)[0])
    return rate, sent, received


def ladder(
    design: str, rates: list[int], duration_s: float, users: int, workdir: Path
) -> list[Trial]:
    """Trials at rising rates until one loses 0.1% or more, then a few bisections below it."""
    trials = []

    def attempt(rate: int) -> Trial:
        trial = run_trial(design, rate, duration_s, users, workdir)
        trials.append(trial)
        mark = "ok" if trial.passed else "LOSS"
        if trial.generator_limited:
            mark += f", generator reached only {trial.achieved_per_s:,.0f}/s"
        print(
            f"  {design:<38} offered {rate:>8,}/s  sent {trial.sent:>9,}  "
            f"handled {trial.handled:>9,}  loss {trial.loss:7.3%}  {mark}",
            file=sys.stderr,
            flush=True,
        )
        return trial

    passed, failed = 0, None
    for rate in rates:
        trial = attempt(rate)
        if not trial.passed:
            failed = rate
            break
        passed = rate
        if trial.generator_limited:
            break  # higher offers would measure the generator, not the design
    for _ in range(REFINE_STEPS if failed and passed else 0):
        assert failed is not None
        middle = (passed + failed) // 2
        if attempt(middle).passed:
            passed = middle
        else:
            failed = middle
    return trials


def best(trials: list[Trial]) -> Trial | None:
    """The highest rate handled without loss, by what was actually sent."""
    passed = [trial for trial in trials if trial.passed]
    return max(passed, key=handled_rate) if passed else None


def handled_rate(trial: Trial) -> float:
    """The offered rate, or the achieved one where the generator fell short of it."""
    return trial.achieved_per_s if trial.generator_limited else trial.offered_per_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=float, default=2.0, help="seconds per trial")
    parser.add_argument("--users", type=int, default=10)
    parser.add_argument("--rates", type=lambda text: [int(r) for r in text.split(",")])
    parser.add_argument("--designs", type=lambda text: text.split(","), default=list(DESIGNS))
    args = parser.parse_args()
    rates = args.rates or list(DEFAULT_RATES)
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
        f", {platform.system()} {platform.release()}",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="udpchat-bench-") as directory:
        workdir = Path(directory)
        ceiling, sent, received = generator_ceiling(args.duration, args.users, workdir)
        results = {
            design: ladder(design, rates, args.duration, args.users, workdir)
            for design in args.designs
        }
    print_table(results, ceiling, sent, received)


def print_table(results: dict[str, list[Trial]], ceiling: float, sent: int, received: int) -> None:
    winner = best(results.get("udpchat serve", []))
    print()
    print("| design | highest rate with < 0.1% loss | udpchat's ratio to it | peak RSS there |")
    print("|---|---:|---:|---:|")
    print(
        f"| load generator flat out into a receive-only sink | {ceiling:,.0f}/s sent, "
        f"{received / sent:.2%} received | — | — |"
    )
    for design, trials in results.items():
        top = best(trials)
        rate = f"{handled_rate(top):,.0f}/s" if top else f"< {trials[0].offered_per_s:,}/s"
        if top and top.generator_limited:
            rate = f"≥ {rate} (the generator's limit)"
        ratio = "—"
        if winner and design != "udpchat serve":
            ratio = f"{handled_rate(winner) / handled_rate(top):.1f}x" if top else "> ladder"
        rss = f"{top.peak_rss_bytes / 2**20:.0f} MiB" if top else "—"
        print(f"| {design} | {rate} | {ratio} | {rss} |")


if __name__ == "__main__":
    main()
