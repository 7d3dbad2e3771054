"""``make bench-saturation``: what udpchat and the bare baseline do, second by second, at the
offered rate where udpchat starts to lose.

Rounds alternate the two designs at one rate. Each second of each trial gives the CPU of every
thread (``/proc/PID/task/TID/stat``, utime + stime; thread names from ``py-spy dump`` when
py-spy is installed, else the kernel's ``comm``), the kernel's drops for the port
(``/proc/net/udp``), and from the design's own status line (udpchat ``--stats-interval 1``; the
baseline with ``BARE_STATS_INTERVAL_S=1``) the datagrams received and handled, batches, jobs
started and queue depth; a counter a design does not print shows as ``-``. With py-spy, one
more trial per design is sampled with ``py-spy record --gil --threads`` for each thread's
share of the GIL and where it spends it.

Usage: ``python -m benchmarks.saturation [--rate N] [--users 100]`` (3 rounds of 5 s);
without ``--rate`` a quick ladder (one trial per rate) finds udpchat's first failed rate.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.harness import (
    BARE,
    BLAST,
    CLOCK_TICKS_PER_S,
    SINK,
    UDPCHAT,
    RunningServer,
    Trial,
    build,
    kernel_drops,
    run_trial,
    thread_cpu_ticks,
)
from benchmarks.ladder import COARSE_FACTOR, START_RATE, Climb, Progress, climb_all

ROUNDS = 3
DURATION_S = 5.0
USERS = 100
PY_SPY_RATE_HZ = 100
STATUS_FIELDS = ("received", "handled", "batches", "jobs_started", "queued", "kernel_drops")
DESIGN_OPTIONS: dict[str, tuple[list[str], dict[str, str]]] = {
    UDPCHAT: (["--stats-interval", "1"], {}),
    BARE: ([], {"BARE_STATS_INTERVAL_S": "1"}),
}
"""How each design is asked for its per-second status line."""
STATUS_LINE = re.compile(r"^(?:udpchat|bare): status: (.*)$", re.MULTILINE)


def py_spy() -> str | None:
    """py-spy's path, in the venv or on PATH."""
    return shutil.which(
        "py-spy",
        path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', os.defpath)}",
    )


def estimate_s() -> float:
    """Seconds the saturation benchmark takes at its defaults, for the plan."""
    trials = ROUNDS * len(DESIGN_OPTIONS) + (len(DESIGN_OPTIONS) if py_spy() else 0)
    return trials * (DURATION_S + 2.0)


@dataclass
class Second:
    """One second of one trial."""

    thread_cpu: dict[str, float]
    """CPU share of each thread, by name."""
    kernel_drops: int | None
    status: dict[str, int | None]
    """The status line's counters, as differences over its second (``queued``: the level)."""


@dataclass
class Sampler:
    """Called once a second while the generator runs: reads ``/proc`` and the status line."""

    names: dict[int, str] = field(default_factory=dict)
    seconds: list[Second] = field(default_factory=list)
    _ticks: dict[int, tuple[str, int]] = field(default_factory=dict)
    _time: float = 0.0
    _drops: int | None = None
    _status_seen = 0

    def start(self, server: RunningServer) -> None:
        self._ticks = thread_cpu_ticks(server.pid)
        self.names.update(thread_names(server.pid))
        self._time = time.monotonic()
        self._drops = kernel_drops(server.port)
        statuses = STATUS_LINE.findall(server.stderr_so_far())
        self._status_seen = len(statuses)

    def __call__(self, server: RunningServer) -> None:
        if not self._time:
            self.start(server)
            return
        ticks, now = thread_cpu_ticks(server.pid), time.monotonic()
        if not set(ticks) <= set(self.names):
            self.names.update(thread_names(server.pid))
            ticks, now = thread_cpu_ticks(server.pid), time.monotonic()
        elapsed = now - self._time
        cpu = {}
        for tid, (comm, total) in ticks.items():
            before = self._ticks.get(tid, (comm, 0))[1]
            cpu[self.name(tid, comm, server.pid)] = (total - before) / CLOCK_TICKS_PER_S / elapsed
        drops = kernel_drops(server.port)
        dropped = None if drops is None or self._drops is None else drops - self._drops
        self._ticks, self._time, self._drops = ticks, now, drops
        statuses = STATUS_LINE.findall(server.stderr_so_far())
        status: dict[str, int | None] = dict.fromkeys(STATUS_FIELDS)
        if len(statuses) > self._status_seen:  # the newest line, against the one before it
            newest = parse_status(statuses[-1])
            previous = parse_status(statuses[-2]) if len(statuses) > 1 else dict.fromkeys(newest, 0)
            for name in STATUS_FIELDS:
                if name in newest:
                    level = name == "queued"
                    status[name] = newest[name] - (0 if level else previous.get(name, 0))
            self._status_seen = len(statuses)
        self.seconds.append(Second(cpu, dropped, status))

    def name(self, tid: int, comm: str, pid: int) -> str:
        if tid in self.names:
            return self.names[tid]
        return f"{comm} (main)" if tid == pid else f"{comm} {tid}"


def parse_status(line: str) -> dict[str, int]:
    return {name: int(value) for name, value in re.findall(r"(\w+)=(\d+)(?!\.)", line)}


def thread_names(pid: int) -> dict[int, str]:
    """Thread id to Python thread name, from ``py-spy dump --nonblocking``; empty without it."""
    command = py_spy()
    if command is None:
        return {}
    dump = subprocess.run(
        [command, "dump", "--nonblocking", "--pid", str(pid)],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    ).stdout
    return {
        int(tid): name for tid, name in re.findall(r'^Thread (\d+) \(.*?\): "(.*)"', dump, re.M)
    }


def cell(value: float | None, form: str = "{:,.0f}") -> str:
    return "-" if value is None else form.format(value)


def print_seconds(design: str, round_: int, seconds: list[Second]) -> None:
    print(f"\n{design}, round {round_}:\n")
    print(
        "| s | CPU per thread | CPU total | received/s | handled/s | batches/s | mean batch | "
        "jobs started/s | queued | kernel drops/s |"
    )
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for number, second in enumerate(seconds, 1):
        busy = sorted(second.thread_cpu.items(), key=lambda item: -item[1])
        threads = ", ".join(f"{name} {share:.0%}" for name, share in busy if share >= 0.005)
        status = second.status
        batch = None
        if status["batches"] and status["received"] is not None:
            batch = status["received"] / status["batches"]
        print(
            f"| {number} | {threads or 'idle'} | {sum(second.thread_cpu.values()):.0%} | "
            f"{cell(status['received'])} | {cell(status['handled'])} | "
            f"{cell(status['batches'])} | {cell(batch, '{:,.1f}')} | "
            f"{cell(status['jobs_started'])} | {cell(status['queued'])} | "
            f"{cell(second.kernel_drops)} |"
        )


def median_of(values: list[float | None]) -> float | None:
    present = [value for value in values if value is not None]
    return statistics.median(present) if present else None


def summary_row(design: str, trials: list[tuple[Trial, Sampler]]) -> str:
    """Medians over every second sampled in every round."""
    seconds = [second for _, sampler in trials for second in sampler.seconds]
    fields = {
        name: median_of([second.status[name] for second in seconds]) for name in STATUS_FIELDS
    }
    losses = ", ".join(f"{trial.loss:.2%}" for trial, _ in trials)
    total = statistics.median(sum(second.thread_cpu.values()) for second in seconds)
    drops = median_of([second.kernel_drops for second in seconds])
    return (
        f"| {design} | {losses} | {thread_shares(seconds)} | {total:.0%} | "
        f"{cell(fields['handled'])} | {cell(mean_batch(seconds), '{:,.1f}')} | "
        f"{cell(fields['jobs_started'])} | {cell(fields['queued'])} | {cell(drops)} |"
    )


def thread_shares(seconds: list[Second]) -> str:
    """Each thread's median share of a core, busiest first, those under half a percent left
    out."""
    by_thread: dict[str, list[float]] = collections.defaultdict(list)
    for second in seconds:
        for name, share in second.thread_cpu.items():
            by_thread[name].append(share)
    return ", ".join(
        f"{name} {statistics.median(shares):.0%}"
        for name, shares in sorted(by_thread.items(), key=lambda item: -sum(item[1]))
        if statistics.median(shares) >= 0.005
    )


def mean_batch(seconds: list[Second]) -> float | None:
    """The median over the seconds of the datagrams read per batch."""
    return median_of(
        [
            second.status["received"] / second.status["batches"]
            for second in seconds
            if second.status["batches"] and second.status["received"] is not None
        ]
    )


def print_summary(rate: int, users: int, runs: dict[str, list[tuple[Trial, Sampler]]]) -> None:
    print(f"\nsaturation summary, {rate:,}/s offered, {users} users, medians of all seconds:\n")
    print(
        "| design | loss (per round) | CPU per thread | CPU total | handled/s | "
        "mean batch | jobs started/s | queued | kernel drops/s |"
    )
    print("|---|---|---|---:|---:|---:|---:|---:|---:|")
    for design, trials in runs.items():
        if any(sampler.seconds for _, sampler in trials):
            print(summary_row(design, trials))


@dataclass
class Recorder:
    """Starts ``py-spy record`` on the server at its first call, a second into the load."""

    command: str
    record_s: int
    output: Path
    process: subprocess.Popen[bytes] | None = None

    def __call__(self, server: RunningServer) -> None:
        if self.process is not None:
            return
        self.process = subprocess.Popen(
            [
                self.command, "record", "--gil", "--threads", "--nonblocking",
                "--format", "raw", "--rate", str(PY_SPY_RATE_HZ),
                "--duration", str(self.record_s), "--pid", str(server.pid),
                "--output", str(self.output),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip


def gil_profile(rate: int, users: int, workdir: Path, progress: Progress) -> None:
    """One trial per design under ``py-spy record --gil --threads``: each thread's share of
    the samples in which it held the GIL, and its busiest frames there."""
    command = py_spy()
    if command is None:
        print("\nGIL profile: skipped, py-spy is not installed (pip install py-spy)")
        return
    record_s = int(DURATION_S) - 2
    print(
        f"\nGIL profile, {rate:,}/s offered, {users} users: `py-spy record --gil --threads "
        f"--nonblocking --format raw --rate {PY_SPY_RATE_HZ} --duration {record_s} --pid PID`, "
        "started 1 s into the load; share = samples holding the GIL / samples taken:"
    )
    for design, (extra, env) in DESIGN_OPTIONS.items():
        recorder = Recorder(command, record_s, workdir / "py-spy.txt")
        trial = run_trial(design, rate, DURATION_S, users, workdir, extra, recorder, env)
        progress(trial, "  saturation, py-spy")
        if recorder.process is None:
            continue
        recorder.process.wait(30)
        samples = record_s * PY_SPY_RATE_HZ
        print(f"\n{design} (loss {trial.loss:.2%}):\n")
        print("| thread | GIL share | busiest frames while holding it (share of its samples) |")
        print("|---|---:|---|")
        for thread, count, frames in read_profile(recorder.output):
            top = ", ".join(f"{frame} {share:.0%}" for frame, share in frames)
            print(f"| {thread} | {count / samples:.0%} | {top} |")
        recorder.output.unlink(missing_ok=True)


def read_profile(raw: Path) -> list[tuple[str, int, list[tuple[str, float]]]]:
    """Per thread: its samples, and its five busiest leaf frames with their shares."""
    totals: collections.Counter[str] = collections.Counter()
    leaves: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    if not raw.exists():
        return []
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        thread = re.sub(r"^thread \(\d+\): ", "", frames[0])
        totals[thread] += int(count)
        leaves[thread][re.sub(r" \(.*", "", frames[-1])] += int(count)
    return [
        (
            thread,
            count,
            [(frame, n / count) for frame, n in leaves[thread].most_common(5)],
        )
        for thread, count in totals.most_common()
    ]


def run(rate: int, users: int, workdir: Path, progress: Progress, reason: str) -> None:
    """Interleaved rounds at ``rate``, the per-second tables, the summary, the GIL profile."""
    runs: dict[str, list[tuple[Trial, Sampler]]] = {design: [] for design in DESIGN_OPTIONS}
    for _ in range(ROUNDS):
        for design, (extra, env) in DESIGN_OPTIONS.items():
            sampler = Sampler()
            trial = run_trial(design, rate, DURATION_S, users, workdir, extra, sampler, env)
            progress(trial, "  saturation")
            runs[design].append((trial, sampler))
    print(
        f"\nsaturation: {rate:,}/s offered ({reason}), {users} users, {ROUNDS} interleaved "
        f"rounds of {DURATION_S:g} s; row s covers second s to s+1 of the load; CPU per thread "
        "from /proc (100% is one core); counters from each design's own status line, on its "
        "own clock (up to 1 s out of phase with the CPU samples)"
    )
    for design, trials in runs.items():
        for round_, (_, sampler) in enumerate(trials, 1):
            print_seconds(design, round_, sampler.seconds)
    print_summary(rate, users, runs)
    gil_profile(rate, users, workdir, progress)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rate", type=int, help="the offered rate (default: found by a ladder)")
    parser.add_argument("--users", type=int, default=USERS)
    args = parser.parse_args()
    build(BLAST)
    build(SINK)
    progress = Progress()
    with tempfile.TemporaryDirectory(prefix="udpchat-bench-") as directory:
        workdir = Path(directory)
        rate = args.rate
        if rate is None:
            print("finding udpchat's first failed rate: a ladder, one trial per rate", flush=True)
            climb = Climb(UDPCHAT, START_RATE, COARSE_FACTOR)
            climb_all([climb], 1, 2.5, args.users, workdir, progress)
            if climb.failed is None:
                raise SystemExit(f"udpchat did not fail below the generator's limit: {climb}")
            rate = climb.failed
        estimate = estimate_s()
        print(f"saturation at {rate:,}/s: about {estimate / 60:.1f} minutes", flush=True)
        reason = "given" if args.rate else "udpchat's first failed rate"
        run(rate, args.users, workdir, progress, reason)


if __name__ == "__main__":
    main()
