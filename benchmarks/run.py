"""``make bench`` / ``make bench-full``: each design's ceiling, bracketed, side by side.

The ceiling is the highest offered rate a design handles with a median loss under 0.1% (what
is not written within a grace period after the generator stops counts as lost). Each design
climbs on its own: from ``--start`` the rate is multiplied by 1.5 until the design fails (or
divided until it passes), then rises from its highest pass in steps of at most 10% until it
fails again, so the ceiling lies between the highest rate passed and the first rate failed, at
most 10% apart. A design whose generator fell short of the offered
rate stops there, reported as the generator's limit, which is measured first against a C
receive-only sink. Trials of all designs alternate, so the machine's other work falls on all
alike. udpchat's ratio to the bare baseline is read only when both ceilings are bracketed.

``make bench`` runs up to three trials per rate, stopping once two agree, halves each bracket,
and starts the second user count at the first one's ceiling; ``make bench-full`` runs three
trials of 3 s, rises in 10% steps, climbs each user count from the start, and adds
overload, the dashboard's cost, the saturation benchmark and the CPU per message
(``--skip`` leaves any of these out).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from benchmarks import cpu, saturation
from benchmarks.harness import (
    BARE,
    BLAST,
    C_SINK,
    DASHBOARD,
    DESIGNS,
    GENERATOR_SHORTFALL,
    GRACE_S,
    PROTOTYPE,
    QUIET,
    SINK,
    UDPCHAT,
    Trial,
    build,
    run_trial,
)
from benchmarks.ladder import (
    COARSE_FACTOR,
    MAX_LOSS,
    START_RATE,
    STEP,
    Climb,
    Progress,
    Result,
    climb_all,
    round_rate,
)
from support.summary import balanced, summary_counts

__all__ = ["accounts_balance", "main"]
"""What benchmarks/tests/test_harness.py imports from here."""

DEFAULT_USERS = (100, 10)
OVERLOAD_FACTORS = (2, 4)
SECTIONS = ("overload", "dashboard", "saturation", "cpu")
TRIAL_OVERHEAD_S = 1.5
"""Start, grace and drain around each trial's generator run, for the estimate."""


@dataclass(frozen=True)
class Profile:
    """What ``make bench`` and ``make bench-full`` run."""

    designs: tuple[str, ...]
    trials: int
    duration_s: float
    decide_early: bool
    """Stop a rate's trials once two agree."""
    bisect: bool
    """Halve the bracket rather than rise in steps of at most 10%."""
    reuse_ceiling: bool
    """Start the next user count's climb at this one's highest pass, in 10% steps."""
    sections: tuple[str, ...]
    """Which of :data:`SECTIONS` follow the ladder."""

    @property
    def sink_trials(self) -> int:
        """Runs of the generator against the C sink, per user count."""
        return 1 if self.decide_early else self.trials

    @property
    def per_trial_s(self) -> float:
        return self.duration_s + TRIAL_OVERHEAD_S


QUICK = Profile(
    (UDPCHAT, PROTOTYPE, BARE),
    trials=3,
    duration_s=2.0,
    decide_early=True,
    bisect=True,
    reuse_ceiling=True,
    sections=(),
)
FULL = Profile(
    (UDPCHAT, PROTOTYPE, BARE, "udpchat serve --processes 2"),
    trials=3,
    duration_s=3.0,
    decide_early=False,
    bisect=False,
    reuse_ceiling=False,
    sections=SECTIONS,
)


def climb_rates(ceiling: float, start: int, factor: float, bisect: bool) -> int:
    """Rates a :class:`Climb` tries for a design whose ceiling is ``ceiling``, for the
    estimate printed before the run."""
    climb = Climb("estimate", start, factor, bisect)
    tried = 0
    while not climb.done and tried < 50:
        tried += 1
        handled = 1 if climb.rate <= ceiling else 0
        trial = Trial("estimate", 0, climb.rate, climb.rate, 1, handled, handled, 0, "")
        climb.record(Result([trial]))
    return tried


EXPECTED_TRIALS_DECIDING_EARLY = 2.3
"""Trials per rate, on average, when they stop once two agree (seen on the 2-core box)."""


def estimate_s(profile: Profile, users: Sequence[int], start: int) -> tuple[float, float]:
    """The ladder's seconds for ceilings between 100,000/s and 300,000/s."""
    counts = []
    for ceiling in (100_000, 150_000, 200_000, 250_000, 300_000):
        rates = climb_rates(ceiling, start, COARSE_FACTOR, profile.bisect)
        if profile.reuse_ceiling:
            again = climb_rates(ceiling, round_rate(ceiling), 1 + STEP, profile.bisect)
        else:
            again = rates
        counts.append(rates + again * (len(users) - 1))
    trials = EXPECTED_TRIALS_DECIDING_EARLY if profile.decide_early else profile.trials
    per_rate = profile.per_trial_s * trials * len(profile.designs)
    return min(counts) * per_rate, max(counts) * per_rate


def generator_ceiling(
    users: int, trials: int, duration_s: float, workdir: Path, progress: Progress
) -> list[Trial]:
    """The generator flat out against the C sink: the most it can offer on this box."""
    runs = []
    for _ in range(trials):
        runs.append(run_trial(C_SINK, 0, duration_s, users, workdir))
        progress(runs[-1], "  generator ceiling")
    return runs


def describe_ceiling(climb: Climb) -> tuple[str, str, str]:
    """(highest passed, first failed, the loss there) as table cells."""
    passed = f"{climb.passed:,}/s" if climb.passed is not None else "none"
    if climb.stopped_by == "generator":
        last = list(climb.results)[-1]
        result = climb.results[last]
        failed = f"not reached: generator sent {result.achieved_per_s:,.0f}/s of {last:,}"
        return passed, failed, result.spread()
    if climb.stopped_by == "floor":
        lowest = min(climb.results)
        return passed, f"{lowest:,}/s (the floor)", climb.results[lowest].spread()
    if climb.stopped_by == "max rate":
        top = max(climb.results)
        return passed, f"not reached: {top:,}/s is --max-rate", climb.results[top].spread()
    assert climb.failed is not None
    result = climb.results[climb.failed]
    failed = f"{climb.failed:,}/s"
    if result.generator_limited:
        failed += f" (the generator sent {result.achieved_per_s:,.0f}/s)"
    return passed, failed, result.spread()


def ratio(first: Climb, second: Climb) -> str:
    """The first design's ceiling over the second's, read only when both are bracketed: the
    passes' ratio, with the range the two brackets allow; otherwise the bound the brackets give."""
    if not first.bracketed:
        reason = "the first ceiling not bracketed"
        if second.bracketed and first.passed is not None and second.failed is not None:
            return f"≥ {first.passed / second.failed:.2f}x ({reason})"
        return f"none ({reason})"
    assert first.passed is not None and first.failed is not None
    if not second.bracketed:
        if second.passed is None:
            return "none (the second design passed no rate)"
        return f"≤ {first.failed / second.passed:.2f}x (the second ceiling not bracketed)"
    assert second.passed is not None and second.failed is not None
    low, high = first.passed / second.failed, first.failed / second.passed
    return f"{first.passed / second.passed:.2f}x (bracket allows {low:.2f}-{high:.2f}x)"


def print_ladder(users: int, climbs: list[Climb], trials: int, sink: list[Trial]) -> None:
    generator = statistics.median(trial.achieved_per_s for trial in sink)
    received = statistics.median(trial.handled / trial.sent for trial in sink if trial.sent)
    plural = "trial" if trials == 1 else "trials"
    print(f"\n{users} users, {trials} {plural} per rate, pass: median loss < {MAX_LOSS:.1%}:\n")
    print("| design | highest rate passed | first rate failed | loss there | tried |")
    print("|---|---:|---:|---:|---|")
    for climb in climbs:
        passed, failed, loss = describe_ceiling(climb)
        tried = ", ".join(
            f"{rate // 1000}k{'' if result.passed else '✗'}"
            for rate, result in sorted(climb.results.items())
        )
        print(f"| {climb.design} | {passed} | {failed} | {loss} | {tried} |")
    sent = sorted(trial.achieved_per_s for trial in sink)
    print(
        f"| generator flat out → C sink | {generator:,.0f}/s sent "
        f"({sent[0]:,.0f}-{sent[-1]:,.0f}), {received:.1%} received | | | |"
    )
    print_ratios(users, climbs)


def print_ratios(users: int, climbs: list[Climb]) -> None:
    """udpchat's ceiling over each peer's that climbed beside it."""
    by_design = {climb.design: climb for climb in climbs}
    for peer, called in ((PROTOTYPE, "prototype"), (BARE, "bare baseline")):
        if UDPCHAT in by_design and peer in by_design:
            read = ratio(by_design[UDPCHAT], by_design[peer])
            print(f"\nudpchat / {called}, {users} users, ceiling / ceiling: {read}")


def overload(
    sustained: int, trials: int, duration_s: float, users: int, workdir: Path, progress: Progress
) -> None:
    """udpchat offered more than it sustains: goodput, and whether every datagram adds up."""
    rows = []
    for factor in OVERLOAD_FACTORS:
        rate = sustained * factor
        runs = []
        for _ in range(trials):
            runs.append(run_trial(UDPCHAT, rate, duration_s, users, workdir))
            progress(runs[-1], "  overload")
        goodput = sorted(trial.handled / duration_s for trial in runs)
        balance_held = all(accounts_balance(trial) for trial in runs)
        sent = statistics.median(trial.achieved_per_s for trial in runs)
        rows.append(
            f"| {factor}x = {rate:,}/s (sent median {sent:,.0f}/s) "
            f"| {statistics.median(goodput):,.0f}/s ({goodput[0]:,.0f}-{goodput[-1]:,.0f}) "
            f"| {statistics.median(goodput) / sustained:.0%} | {'yes' if balance_held else 'NO'} |"
        )
    print(f"\noverload, {users} users, udpchat serve (sustained {sustained:,}/s):\n")
    print("| offered | handled/s median (min-max) | share of sustained | accounts balance |")
    print("|---:|---:|---:|---|")
    print("\n".join(rows))


def dashboard_cost(
    trials: int, duration_s: float, users: int, workdir: Path, progress: Progress
) -> None:
    """``--quiet --dashboard`` against ``--quiet`` with the generator flat out, more than
    either sustains, in interleaved rounds: the view's cost shows as lower goodput."""
    goodput: dict[str, list[float]] = {QUIET: [], DASHBOARD: []}
    for _ in range(trials):
        for design, rates in goodput.items():
            trial = run_trial(design, 0, duration_s, users, workdir)
            progress(trial, "  dashboard cost")
            rates.append(trial.handled / duration_s)
    quiet, dashboard = (statistics.median(goodput[design]) for design in (QUIET, DASHBOARD))
    print(f"\n--dashboard cost, {users} users, generator flat out, {trials} rounds:\n")
    print("| design | handled/s median (min-max) |")
    print("|---|---:|")
    for design, rates in goodput.items():
        print(f"| {design} | {statistics.median(rates):,.0f}/s "
              f"({min(rates):,.0f}-{max(rates):,.0f}) |")  # fmt: skip
    print(f"\n--dashboard --quiet / --quiet: {dashboard / quiet:.3f}")


def accounts_balance(trial: Trial) -> bool:
    """``sent == received + kernel_drops`` and ``received == handled + dropped + queued``, from
    the summary udpchat printed at exit."""
    try:
        counts = summary_counts(trial.stderr)
    except ValueError:  # no summary: it did not stop cleanly
        return False
    return balanced(counts, trial.sent)


def print_plan(profile: Profile, users: Sequence[int], start: int) -> None:
    low_s, high_s = estimate_s(profile, users, start)
    trials = profile.trials
    per_trial = profile.per_trial_s
    sink_s = len(users) * profile.sink_trials * per_trial
    extras_s = {
        "overload": len(users) * trials * len(OVERLOAD_FACTORS) * per_trial,
        "dashboard": len(users) * trials * 2 * per_trial,
        "saturation": saturation.estimate_s(),
        "cpu": cpu.estimate_s(),
    }
    sections_s = sum(extras_s[section] for section in profile.sections)
    print("plan:")
    print(f"  designs: {'; '.join(profile.designs)}")
    print(f"  users: {', '.join(map(str, users))}")
    print(
        f"  ladder: from {start:,}/s, x{COARSE_FACTOR} until a design fails (/{COARSE_FACTOR} "
        "until it passes), then "
        + (
            "the bracket between its highest pass and first failure halved"
            if profile.bisect
            else f"up from its highest pass in steps of at most {STEP:.0%}"
        )
        + f" until the two are at most {STEP:.0%} apart; a design that passes while the "
        f"generator falls short (< {GENERATOR_SHORTFALL:.0%} of the offered rate) stops there, "
        "its ceiling not reached"
    )
    if profile.reuse_ceiling and len(users) > 1:
        print(
            f"  after {users[0]} users each design starts at its highest pass there, in "
            f"{STEP:.0%} steps"
        )
    counted = f"up to {trials}, stopping once two agree," if profile.decide_early else trials
    print(
        f"  {counted} trial(s) per design and rate, {profile.duration_s:g} s each (plus about "
        f"{TRIAL_OVERHEAD_S:g} s to start, wait {GRACE_S:g} s and stop); pass: median loss < "
        f"{MAX_LOSS:.1%} within {GRACE_S:g} s of the generator's end"
    )
    print(
        "  first, per user count: the generator flat out against the C sink, "
        f"{profile.sink_trials}x"
    )
    described = {
        "overload": "per user count, udpchat offered "
        f"{' and '.join(f'{f}x' for f in OVERLOAD_FACTORS)} its ceiling",
        "dashboard": "per user count, --dashboard's cost with the generator flat out",
        "saturation": "the saturation benchmark at udpchat's first failed rate, at the first "
        f"user count where it failed ({saturation.ROUNDS} rounds of "
        f"{saturation.DURATION_S:g} s per design"
        f"{', then py-spy' if saturation.py_spy() else ''})",
        "cpu": f"CPU per message at {cpu.RATE:,}/s ({cpu.ROUNDS} rounds of "
        f"{cpu.MESSAGES:,} messages per design)",
    }
    for section in profile.sections:
        print(f"  then: {described[section]}")
    total_low = sink_s + low_s + sections_s
    total_high = sink_s + high_s + sections_s
    print(
        f"  estimate: {total_low / 60:.1f}-{total_high / 60:.1f} minutes on an idle machine "
        "(ceilings between 100,000/s and 300,000/s); more when the machine is busy",
        flush=True,
    )


def parse_list(convert: Callable[[str], int]) -> Callable[[str], list[int]]:
    return lambda text: [convert(part) for part in text.split(",")]


@dataclass(frozen=True)
class Plan:
    """What one run climbs: the profile as the options change it, the user counts, and the
    rates to start at and not to pass."""

    profile: Profile
    users: list[int]
    start: int
    max_rate: int | None


def parse_plan(argv: Sequence[str] | None = None) -> Plan:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--full", action="store_true", help="the make bench-full profile")
    parser.add_argument("--duration", type=float, help="seconds per trial")
    parser.add_argument("--trials", type=int, help="trials per design and rate")
    parser.add_argument("--users", type=parse_list(int), help="e.g. 100,10")
    parser.add_argument("--start", type=int, default=START_RATE, help="the first rate offered")
    parser.add_argument("--max-rate", type=int, help="climb no higher (for a quick check)")
    parser.add_argument("--designs", type=lambda text: text.split(";"), help="';'-separated")
    parser.add_argument(
        "--skip", type=lambda text: text.split(","), default=[], help=f"of {','.join(SECTIONS)}"
    )
    args = parser.parse_args(argv)
    profile = chosen_profile(args)
    unknown = [design for design in profile.designs if design not in DESIGNS]
    if unknown:
        parser.error(f"unknown designs {unknown}; known: {'; '.join(DESIGNS)}")
    return Plan(profile, args.users or list(DEFAULT_USERS), args.start, args.max_rate)


def chosen_profile(args: argparse.Namespace) -> Profile:
    """``make bench``'s or ``make bench-full``'s profile with what the options change."""
    base = FULL if args.full else QUICK
    return replace(
        base,
        designs=tuple(args.designs or base.designs),
        trials=args.trials or base.trials,
        duration_s=args.duration or base.duration_s,
        sections=tuple(section for section in base.sections if section not in args.skip),
    )


def print_machine() -> None:
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
        f", {platform.system()} {platform.release()}; load average "
        f"{', '.join(f'{load:.2f}' for load in os.getloadavg())}; generator: "
        f"{'blast (C, sendmmsg)' if build(BLAST) else 'udpchat load'}",
        flush=True,
    )


def climb_each_user_count(plan: Plan, workdir: Path, progress: Progress) -> tuple[int, int] | None:
    """The ladder for each user count, each followed by the sections run per user count.
    Returns udpchat's first failed rate and its user count, at the first user count where it
    failed: where the saturation benchmark looks."""
    profile = plan.profile
    saturation_at = None
    previous: dict[str, int] = {}
    for users in plan.users:
        sink = generator_ceiling(users, profile.sink_trials, profile.duration_s, workdir, progress)
        climbs = [first_climb(design, previous, plan) for design in profile.designs]
        climb_all(
            climbs, profile.trials, profile.duration_s, users, workdir, progress,
            profile.decide_early,
        )  # fmt: skip
        print_ladder(users, climbs, profile.trials, sink)
        sys.stdout.flush()
        if profile.reuse_ceiling:
            previous = {climb.design: climb.passed for climb in climbs if climb.passed is not None}
        udpchat = next((climb for climb in climbs if climb.design == UDPCHAT), None)
        if saturation_at is None and udpchat is not None and udpchat.failed is not None:
            saturation_at = (udpchat.failed, users)
        per_user_count(profile, udpchat, users, workdir, progress)
    return saturation_at


def first_climb(design: str, previous: dict[str, int], plan: Plan) -> Climb:
    """A design's climb: from its highest pass at the user count before, in small steps, when
    the profile reuses it; else from ``--start``, in coarse steps."""
    if design in previous:
        return Climb(design, previous[design], 1 + STEP, plan.profile.bisect, plan.max_rate)
    return Climb(design, plan.start, COARSE_FACTOR, plan.profile.bisect, plan.max_rate)


def per_user_count(
    profile: Profile, udpchat: Climb | None, users: int, workdir: Path, progress: Progress
) -> None:
    """The sections that follow each user count's ladder: overload and the dashboard's cost."""
    if "overload" in profile.sections and udpchat is not None and udpchat.passed is not None:
        overload(
            udpchat.passed, profile.trials, profile.duration_s, users, workdir, progress
        )  # fmt: skip
    if "dashboard" in profile.sections:
        dashboard_cost(profile.trials, profile.duration_s, users, workdir, progress)
    sys.stdout.flush()


def after_the_ladders(
    profile: Profile, saturation_at: tuple[int, int] | None, workdir: Path, progress: Progress
) -> None:
    """The sections that run once: saturation at udpchat's first failed rate, the CPU cost."""
    if "saturation" in profile.sections:
        if saturation_at is None:
            print("\nsaturation: skipped, udpchat failed at no rate the generator could send")
        else:
            rate, users = saturation_at
            saturation.run(rate, users, workdir, progress, "udpchat's first failed rate")
    if "cpu" in profile.sections:
        cpu.run(workdir, progress)


def main(argv: Sequence[str] | None = None) -> None:
    plan = parse_plan(argv)
    started = time.monotonic()
    print_machine()
    if not build(SINK):
        sys.exit("the C sink needs a C compiler (cc)")
    print_plan(plan.profile, plan.users, plan.start)
    progress = Progress()
    with tempfile.TemporaryDirectory(prefix="udpchat-bench-") as directory:
        workdir = Path(directory)
        saturation_at = climb_each_user_count(plan, workdir, progress)
        after_the_ladders(plan.profile, saturation_at, workdir, progress)
    minutes = (time.monotonic() - started) / 60
    print(f"\nbench took {minutes:.1f} minutes ({progress.count} trials)")


if __name__ == "__main__":
    main()
