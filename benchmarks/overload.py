"""Goodput at overload, side by side: what each design writes when it is offered more than the
Python designs sustain.

Each round offers a rate for :data:`DURATION_S` from :data:`USERS` users (the C generator)
to every design in turn, and the rounds alternate the designs, so that the machine's
other work falls on all of them alike. A design's goodput is the lines it wrote, its queue
drained, over the duration. The designs:

- the C ``recvmmsg`` sink, which only counts: the kernel's limit on this box, with the
  generator on the same cores;
- the strongest Python peer (``benchmarks/baselines/prototype.py``): uvloop, each loop
  iteration's datagrams as one batch to a 2-thread pool, no flush per batch, nothing else;
- the weak baseline (``benchmarks/baselines/bare_uvloop.py``): the same with a flush per batch;
- ``udpchat serve`` with every default feature on; with ``--full`` also on its pure-Python
  loops (``UDPCHAT_PURE=1``) and with ``--processes 2`` (on a 2-core box the two processes and
  the generator share the cores, so this says what a third process costs, not what a bigger
  box gains).

It runs at each of :data:`RATES`: the issue's 300,000/s, and twice that, because on a quiet
2-core box the prototype itself sustains about 300,000/s (a ratio read where both designs pass
is not a ratio), while at 600,000/s every Python design is past its ceiling. It prints, per
rate, each design's median goodput with its range, its ratio to the prototype's and the
sink's medians, and whether udpchat's accounts balanced in every round. Usage: ``python -m
benchmarks.overload [--rates 300000 600000] [--rounds 5] [--duration 3] [--full]``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.harness import BARE, BLAST, C_SINK, PROTOTYPE, SINK, UDPCHAT, Trial, build
from benchmarks.harness import run_trial as harness_trial
from benchmarks.ladder import Progress
from benchmarks.run import accounts_balance

RATES = (300_000, 600_000)
ROUNDS = 5
DURATION_S = 3.0
USERS = 100
TRIAL_OVERHEAD_S = 1.5
PURE = "udpchat serve, pure Python (UDPCHAT_PURE=1)"
PROCESSES = "udpchat serve --processes 2"


@dataclass(frozen=True)
class Design:
    """A row of the table: which harness design runs, with what environment."""

    name: str
    harness_design: str
    env: dict[str, str] = field(default_factory=dict)
    accounted: bool = False
    """udpchat: its exit summary must balance."""


QUICK = (
    Design(C_SINK, C_SINK),
    Design(PROTOTYPE, PROTOTYPE),
    Design(BARE, BARE),
    Design(UDPCHAT, UDPCHAT, accounted=True),
)
FULL = (
    *QUICK,
    Design(PURE, UDPCHAT, {"UDPCHAT_PURE": "1"}, accounted=True),
    Design(PROCESSES, PROCESSES),
)


def estimate_s(designs: tuple[Design, ...], rounds: int, duration_s: float) -> float:
    return len(designs) * rounds * (duration_s + TRIAL_OVERHEAD_S)


def run_rounds(
    designs: tuple[Design, ...], rate: int, rounds: int, duration_s: float, progress: Progress
) -> dict[str, list[Trial]]:
    trials: dict[str, list[Trial]] = {design.name: [] for design in designs}
    with tempfile.TemporaryDirectory(prefix="udpchat-bench-") as directory:
        for _ in range(rounds):
            for design in designs:
                trial = harness_trial(
                    design.harness_design, rate, duration_s, USERS, Path(directory), env=design.env
                )
                progress(trial, f"  overload, {design.name}")
                trials[design.name].append(trial)
    return trials


def goodput(trials: list[Trial], duration_s: float) -> list[float]:
    return sorted(trial.handled / duration_s for trial in trials)


def print_table(
    designs: tuple[Design, ...], trials: dict[str, list[Trial]], rate: int, duration_s: float
) -> None:
    medians = {name: statistics.median(goodput(runs, duration_s)) for name, runs in trials.items()}
    prototype, sink = medians[PROTOTYPE], medians[C_SINK]
    rounds = len(trials[PROTOTYPE])
    print(
        f"\ngoodput at overload: {rate:,}/s offered for {duration_s:g} s, {USERS} users, "
        f"{rounds} interleaved rounds (lines written, queue drained, per second):\n"
    )
    print("| design | goodput median | min-max | / prototype | / C sink | generator sent |")
    print("|---|---:|---:|---:|---:|---:|")
    for design in designs:
        rates = goodput(trials[design.name], duration_s)
        sent = statistics.median(trial.achieved_per_s for trial in trials[design.name])
        print(
            f"| {design.name} | {medians[design.name]:,.0f}/s | {rates[0]:,.0f}-{rates[-1]:,.0f} "
            f"| {medians[design.name] / prototype:.2f}x | {medians[design.name] / sink:.2f}x "
            f"| {sent:,.0f}/s |"
        )
    for design in designs:
        if design.accounted:
            balanced = sum(accounts_balance(trial) for trial in trials[design.name])
            print(f"\n{design.name}: accounts balanced in {balanced} of {rounds} rounds")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rates", type=int, nargs="+", default=list(RATES))
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--duration", type=float, default=DURATION_S)
    parser.add_argument("--full", action="store_true", help="pure Python and --processes 2 too")
    args = parser.parse_args()
    if not (build(BLAST) and build(SINK)):
        raise SystemExit("the overload benchmark needs a C compiler (cc) for its generator")
    designs = FULL if args.full else QUICK
    seconds = estimate_s(designs, args.rounds, args.duration) * len(args.rates)
    print(f"overload: about {seconds / 60:.1f} minutes", flush=True)
    for rate in args.rates:
        trials = run_rounds(designs, rate, args.rounds, args.duration, Progress())
        print_table(designs, trials, rate, args.duration)


if __name__ == "__main__":
    main()
