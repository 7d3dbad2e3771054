"""``make bench``: the highest rate each design handles with under 0.1% loss, side by side.

Each trial starts a design as a subprocess with its per-message output going to a file, drives
it with the C generator (``benchmarks/blast.c``, built by ``make bench``; ``udpchat load``
where no C compiler is found) at one rate for a few seconds, stops it with SIGINT and counts
the lines it wrote. At each rate every design still in the race runs once per round, and the
rounds repeat, so that the machine's other work falls on all designs alike; a design passes a
rate when the median loss of its trials is under 0.1%. Then udpchat is offered 2x and 4x the
rate it sustained, to show what overload costs it.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

MAX_LOSS = 0.001
GENERATOR_SHORTFALL = 0.95
"""A trial whose generator sent under this share of the offered rate measured the generator."""
DEFAULT_RATES = (5_000, 10_000, 50_000, 100_000, 150_000, 175_000, 200_000, 225_000, 250_000)
DEFAULT_USERS = (10, 100)
READY_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 60.0
OVERLOAD_FACTORS = (2, 4)

PYTHON = sys.executable
BLAST = Path(__file__).with_name("blast")
UDPCHAT = "udpchat serve"
BARE = "bare: uvloop, batch per iteration, 2 threads"
DESIGNS: dict[str, list[str]] = {
    UDPCHAT: ["-m", "udpchat", "serve", "--host", "127.0.0.1", "--port", "{port}"],
    BARE: ["-m", "benchmarks.baselines.bare_uvloop", "{port}"],
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
    elapsed_s: float
    stderr: str

    @property
    def generator_limited(self) -> bool:
        return self.achieved_per_s < GENERATOR_SHORTFALL * self.offered_per_s

    @property
    def loss(self) -> float:
        return 1.0 - self.handled / self.sent if self.sent else 1.0

    @property
    def handled_per_s(self) -> float:
        return self.handled / self.elapsed_s if self.elapsed_s else 0.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def peak_rss_bytes(pid: int) -> int:
    """The process's peak RSS, or with ``--processes`` its children's largest."""
    peaks = []
    for candidate in [pid, *child_pids(pid)]:
        try:
            status = Path(f"/proc/{candidate}/status").read_text()
        except OSError:
            continue
        found = re.search(r"VmHWM:\s+(\d+) kB", status)
        if found:
            peaks.append(int(found.group(1)) * 1024)
    return max(peaks, default=0)


def child_pids(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(child) for child in text.split()]


def wait_for_banner(output: Path, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while b"Server menunggu..." not in output.read_bytes():
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"server did not start: {output}")
        time.sleep(0.02)


def generate(port: int, rate: int, duration_s: float, users: int) -> tuple[int, float]:
    """Send at ``rate`` for ``duration_s``; returns (sent, achieved rate)."""
    if BLAST.exists():
        command = [str(BLAST), str(port), str(rate), str(duration_s), str(users)]
    else:
        command = [
            PYTHON, "-m", "udpchat", "load", "--port", str(port), "--rate", str(rate),
            "--duration", str(duration_s), "--users", str(users), "--no-progress",
        ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, check=True)
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
        started = time.monotonic()
        sent, achieved = generate(port, rate, duration_s, users)
        peak = peak_rss_bytes(process.pid)
        process.send_signal(signal.SIGINT)
        process.wait(STOP_TIMEOUT_S)
        elapsed_s = time.monotonic() - started
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    with output.open("rb") as lines:
        handled = sum(chunk.count(b"\n") for chunk in iter(lambda: lines.read(1 << 20), b"")) - 1
    stderr = errors.read_text(errors="replace")
    output.unlink()
    errors.unlink()
    return Trial(design, rate, achieved, sent, handled, peak, elapsed_s, stderr)


@dataclass
class Result:
    """One design's trials at one rate."""

    trials: list[Trial]

    @property
    def median_loss(self) -> float:
        return statistics.median(trial.loss for trial in self.trials)

    @property
    def passed(self) -> bool:
        return self.median_loss < MAX_LOSS

    @property
    def generator_limited(self) -> bool:
        return statistics.median(trial.achieved_per_s for trial in self.trials) < (
            GENERATOR_SHORTFALL * self.trials[0].offered_per_s
        )

    def spread(self) -> str:
        losses = sorted(trial.loss for trial in self.trials)
        return f"{self.median_loss:.3%} ({losses[0]:.3%}-{losses[-1]:.3%})"


def race(
    designs: list[str], rates: list[int], trials: int, duration_s: float, users: int, workdir: Path
) -> dict[str, dict[int, Result]]:
    """Rates rising; at each, ``trials`` rounds of one trial per design still in; a design is
    out after the first rate it fails, or once the generator could not offer more."""
    results: dict[str, dict[int, Result]] = {design: {} for design in designs}
    running = list(designs)
    for rate in rates:
        if not running:
            break
        at_rate: dict[str, list[Trial]] = {design: [] for design in running}
        for round_ in range(trials):
            for design in running:
                trial = run_trial(design, rate, duration_s, users, workdir)
                at_rate[design].append(trial)
                print(
                    f"  users {users:>3}  {design:<46} offered {rate:>8,}/s  round {round_ + 1}  "
                    f"sent {trial.sent:>9,}  handled {trial.handled:>9,}  loss {trial.loss:7.3%}",
                    file=sys.stderr,
                    flush=True,
                )
        for design, design_trials in at_rate.items():
            results[design][rate] = Result(design_trials)
        running = [
            design
            for design in running
            if results[design][rate].passed and not results[design][rate].generator_limited
        ]
    return results


def best(by_rate: dict[int, Result]) -> tuple[int, Result] | None:
    passed = [(rate, result) for rate, result in by_rate.items() if result.passed]
    return max(passed, key=lambda item: item[0]) if passed else None


def print_table(users: int, results: dict[str, dict[int, Result]], trials: int) -> None:
    reference = best(results.get(UDPCHAT, {}))
    print(f"\n{users} users, {trials} trials per rate (median loss, min-max across trials):\n")
    print("| design | highest rate with median loss < 0.1% | loss there | "
          "udpchat's ratio to it | peak RSS there |")  # fmt: skip
    print("|---|---:|---:|---:|---:|")
    for design, by_rate in results.items():
        top = best(by_rate)
        if top is None:
            first = min(by_rate) if by_rate else 0
            print(f"| {design} | < {first:,}/s | {by_rate[first].spread()} | — | — |")
            continue
        rate, result = top
        shown = f"{rate:,}/s"
        if result.generator_limited:
            achieved = statistics.median(t.achieved_per_s for t in result.trials)
            shown = f"≥ {achieved:,.0f}/s (the generator's limit)"
        ratio = "—" if design == UDPCHAT or reference is None else f"{reference[0] / rate:.2f}x"
        rss = max(trial.peak_rss_bytes for trial in result.trials) / 2**20
        print(f"| {design} | {shown} | {result.spread()} | {ratio} | {rss:.0f} MiB |")


def overload(sustained: int, trials: int, duration_s: float, users: int, workdir: Path) -> None:
    """udpchat offered more than it sustains: goodput, and whether every datagram adds up."""
    print(f"\noverload, {users} users, udpchat serve (sustained {sustained:,}/s):\n")
    print("| offered | handled/s median (min-max) | share of sustained | accounts balance |")
    print("|---:|---:|---:|---|")
    for factor in OVERLOAD_FACTORS:
        rate = sustained * factor
        runs = [run_trial(UDPCHAT, rate, duration_s, users, workdir) for _ in range(trials)]
        goodput = sorted(trial.handled / duration_s for trial in runs)
        balanced = all(accounts_balance(trial) for trial in runs)
        sent = statistics.median(trial.achieved_per_s for trial in runs)
        print(
            f"| {factor}x = {rate:,}/s (sent median {sent:,.0f}/s) "
            f"| {statistics.median(goodput):,.0f}/s ({goodput[0]:,.0f}-{goodput[-1]:,.0f}) "
            f"| {statistics.median(goodput) / sustained:.0%} | {'yes' if balanced else 'NO'} |"
        )


def accounts_balance(trial: Trial) -> bool:
    """``sent == received + kernel_drops`` and ``received == handled + dropped + queued``, from
    the summary udpchat printed at exit."""
    found = re.search(
        r"summary: received=(\d+) handled=(\d+) dropped=(\d+).*? queued=(\d+) kernel_drops=(\d+)",
        trial.stderr,
    )
    if found is None:
        return False
    received, handled, dropped, queued, kernel = map(int, found.groups())
    return trial.sent == received + kernel and received == handled + dropped + queued


def build_generator() -> None:
    """Compile ``blast.c`` when a C compiler is here and the binary is missing or stale."""
    source = BLAST.with_suffix(".c")
    compiler = shutil.which(os.environ.get("CC", "cc"))
    if compiler is None:
        print("no C compiler: using `udpchat load` as the generator", file=sys.stderr)
        return
    if BLAST.exists() and BLAST.stat().st_mtime >= source.stat().st_mtime:
        return
    subprocess.run([compiler, "-O2", "-o", str(BLAST), str(source)], check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per trial")
    parser.add_argument("--trials", type=int, default=3, help="trials per design and rate")
    parser.add_argument("--users", type=lambda text: [int(u) for u in text.split(",")])
    parser.add_argument("--rates", type=lambda text: [int(r) for r in text.split(",")])
    parser.add_argument("--designs", type=lambda text: text.split(";"), default=list(DESIGNS))
    parser.add_argument("--no-overload", action="store_true", help="skip the overload trials")
    args = parser.parse_args()
    build_generator()
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
        f", {platform.system()} {platform.release()}; generator: "
        f"{'blast (C, sendmmsg)' if BLAST.exists() else 'udpchat load'}",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="udpchat-bench-") as directory:
        workdir = Path(directory)
        for users in args.users or DEFAULT_USERS:
            results = race(
                args.designs, args.rates or list(DEFAULT_RATES), args.trials, args.duration,
                users, workdir,
            )  # fmt: skip
            print_table(users, results, args.trials)
            sustained = best(results.get(UDPCHAT, {}))
            if sustained and not args.no_overload:
                overload(sustained[0], args.trials, args.duration, users, workdir)


if __name__ == "__main__":
    main()
