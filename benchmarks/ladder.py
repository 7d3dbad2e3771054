"""The ladder: a design's ceiling, bracketed between the highest rate it passed and the first
it failed, at most :data:`STEP` apart.

From a start rate, the rate is multiplied by :data:`COARSE_FACTOR` until the design fails (or
divided until it passes); then, between its highest pass and its first failure, it either
rises from the pass in steps of :data:`STEP` (``make bench-full``) or halves the bracket
(``make bench``, fewer trials) until the two are at most :data:`STEP` apart. A verdict is the
median of up to ``trials`` trials; with ``decide_early`` trials stop once the majority is
settled (two of three agreeing), which gives the same verdict for less time.
"""

from __future__ import annotations

import math
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.harness import GENERATOR_SHORTFALL, Attach, Trial, run_trial

MAX_LOSS = 0.001
START_RATE = 100_000
COARSE_FACTOR = 1.5
STEP = 0.10
FLOOR_RATE = 1_000
"""A design failing here is reported as below it, and climbs no further down."""


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
    def achieved_per_s(self) -> float:
        return statistics.median(trial.achieved_per_s for trial in self.trials)

    @property
    def generator_limited(self) -> bool:
        return self.achieved_per_s < GENERATOR_SHORTFALL * self.trials[0].offered_per_s

    def spread(self) -> str:
        losses = sorted(trial.loss for trial in self.trials)
        if len(losses) == 1:
            return f"{losses[0]:.3%}"
        return f"{self.median_loss:.3%} ({losses[0]:.3%}-{losses[-1]:.3%})"


def round_rate(rate: float) -> int:
    """Down to three significant figures (1,000s from 100,000/s), so a step never grows past
    its bound and a bracket can always be halved."""
    unit: int = 10 ** max(0, int(math.log10(max(rate, 1))) - 2)
    return max(unit, int(rate // unit) * unit)


@dataclass
class Climb:
    """One design's search for its ceiling at one user count."""

    design: str
    rate: int
    factor: float
    bisect: bool = False
    """Halve the bracket in the fine phase instead of rising in steps of :data:`STEP`."""
    max_rate: int | None = None
    results: dict[int, Result] = field(default_factory=dict)
    passed: int | None = None
    failed: int | None = None
    """The lowest rate failed; the search never tries above it, so it stays above the pass."""
    stopped_by: str | None = None
    """Why it ended without a bracket: the generator's limit, the floor or ``max_rate``."""

    @property
    def done(self) -> bool:
        return self.stopped_by is not None or self.bracketed

    @property
    def bracketed(self) -> bool:
        return (
            self.passed is not None
            and self.failed is not None
            and self.failed <= self.passed * (1 + STEP) + 1
        )

    def record(self, result: Result) -> None:
        """The verdict at the current rate moves the bracket; then the next rate, or the end."""
        rate = self.rate
        self.results[rate] = result
        self._note(rate, result)
        if self.done:
            return
        if self.passed is not None and self.failed is not None:
            self.rate = self._inside(self.passed, self.failed)
        elif self.failed is None:
            self._up_from(rate)
        else:
            self._down_from(rate)

    def _note(self, rate: int, result: Result) -> None:
        if not result.passed:
            if self.failed is None or rate < self.failed:
                self.failed = rate  # even when the generator fell short: the table says so
        elif result.generator_limited:  # it passed what the generator could send
            self.passed = max(self.passed or 0, round_rate(result.achieved_per_s))
            self.stopped_by = "generator"
        else:
            self.passed = max(self.passed or 0, rate)

    def _inside(self, passed: int, failed: int) -> int:
        """The fine phase: the bracket halved, or a step of at most :data:`STEP` up."""
        if self.bisect:
            middle = round_rate(math.sqrt(passed * failed))
            return middle if passed < middle < failed else failed
        return min(round_rate(passed * (1 + STEP)), failed)

    def _up_from(self, rate: int) -> None:
        """Nothing failed yet: up by the factor, to ``max_rate`` at most, and no further."""
        self.rate = round_rate(rate * self.factor)
        if self.max_rate is not None and self.rate > self.max_rate:
            self.rate = self.max_rate
            if rate >= self.max_rate:
                self.stopped_by = "max rate"

    def _down_from(self, rate: int) -> None:
        """Nothing passed yet: down by the factor, to :data:`FLOOR_RATE`."""
        self.rate = round_rate(rate / self.factor)
        if self.rate < FLOOR_RATE or self.rate == rate:
            self.stopped_by = "floor"


class Progress:
    """One line per trial on stderr, with the time since the start."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.count = 0

    def __call__(self, trial: Trial, note: str = "") -> None:
        self.count += 1
        elapsed = time.monotonic() - self.started
        print(
            f"  [{self.count:>3} {elapsed:5.0f}s] users {trial.users:>3}  {trial.design:<46} "
            f"offered {trial.offered_per_s:>8,}/s  sent {trial.achieved_per_s:>9,.0f}/s  "
            f"loss {trial.loss:7.3%} (drained {trial.drained_loss:7.3%}){note}",
            file=sys.stderr,
            flush=True,
        )


def settled(trials: list[Trial], most: int) -> bool:
    """Whether more trials, up to ``most``, could still change the median's verdict."""
    failures = sum(trial.loss >= MAX_LOSS for trial in trials)
    return max(failures, len(trials) - failures) > most // 2


def climb_all(
    climbs: list[Climb],
    trials: int,
    duration_s: float,
    users: int,
    workdir: Path,
    progress: Progress,
    decide_early: bool = False,
    attach: dict[str, Attach] | None = None,
) -> None:
    """Every design's climb at once: a round is one trial of each design still climbing at its
    own rate, up to ``trials`` rounds per step; ``attach`` puts something beside a design's
    server in each of its trials (a browser on its page)."""
    while running := [climb for climb in climbs if not climb.done]:
        at_rate: dict[str, list[Trial]] = {climb.design: [] for climb in running}
        for _ in range(trials):
            for climb in running:
                done = at_rate[climb.design]
                if decide_early and settled(done, trials):
                    continue
                trial = run_trial(
                    climb.design,
                    climb.rate,
                    duration_s,
                    users,
                    workdir,
                    attach=(attach or {}).get(climb.design),
                )
                done.append(trial)
                verdict = "pass" if trial.loss < MAX_LOSS else "FAIL"
                progress(trial, f"  {verdict}")
        for climb in running:
            climb.record(Result(at_rate[climb.design]))
