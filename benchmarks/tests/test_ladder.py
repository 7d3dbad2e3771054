"""The bench's ladder brackets each design's ceiling within 10%, from any start, in either
mode, and says when the generator, not the design, stopped the climb."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from benchmarks.harness import Trial
from benchmarks.ladder import MAX_LOSS, STEP, Climb, Result
from benchmarks.run import ratio


def trial(rate: int, ceiling: int, generator_ceiling: int) -> Trial:
    """A design that handles everything up to ``ceiling`` and loses above it, driven by a
    generator that cannot send more than ``generator_ceiling``."""
    sent = min(rate, generator_ceiling)
    handled = sent if sent <= ceiling else ceiling
    return Trial("design", 100, rate, float(sent), sent, handled, handled, 0, "")


def climb_to(ceiling: int, start: int, bisect: bool, generator_ceiling: int = 10**9) -> Climb:
    climb = Climb("design", start, 1.5, bisect=bisect)
    for _ in range(60):
        if climb.done:
            return climb
        climb.record(Result([trial(climb.rate, ceiling, generator_ceiling)]))
    raise AssertionError(f"no end after 60 rates: {climb}")


@settings(max_examples=200, deadline=None)
@given(
    ceiling=st.integers(2_000, 400_000),
    start=st.sampled_from([5_000, 100_000, 300_000]),
    bisect=st.booleans(),
)
def test_the_bracket_holds_the_ceiling_and_is_at_most_a_step_wide(
    ceiling: int, start: int, bisect: bool
) -> None:
    climb = climb_to(ceiling, start, bisect)
    assert climb.stopped_by is None
    assert climb.passed is not None and climb.failed is not None
    assert climb.passed <= ceiling / (1 - MAX_LOSS) and ceiling < climb.failed
    assert climb.failed <= climb.passed * (1 + STEP) + 1


@pytest.mark.parametrize("bisect", [False, True])
def test_a_climb_the_generator_cannot_feed_stops_and_says_so(bisect: bool) -> None:
    climb = climb_to(ceiling=500_000, start=100_000, bisect=bisect, generator_ceiling=180_000)
    assert climb.stopped_by == "generator"
    assert climb.failed is None
    assert climb.passed is not None and climb.passed <= 180_000


def bracket(passed: int | None, failed: int | None) -> Climb:
    return Climb("design", 100_000, 1.5, passed=passed, failed=failed)


@pytest.mark.parametrize(
    ("first", "second", "reading"),
    [
        (bracket(200_000, 210_000), bracket(100_000, 105_000), "2.00x (bracket allows 1.90-2.10x)"),
        (
            bracket(200_000, None),
            bracket(100_000, 105_000),
            "≥ 1.90x (the first ceiling not bracketed)",
        ),
        (
            bracket(None, 100_000),
            bracket(100_000, 105_000),
            "none (the first ceiling not bracketed)",
        ),
        (
            bracket(200_000, 210_000),
            bracket(100_000, None),
            "≤ 2.10x (the second ceiling not bracketed)",
        ),
        (
            bracket(200_000, 210_000),
            bracket(None, 5_000),
            "none (the second design passed no rate)",
        ),
    ],
)
def test_a_ratio_reads_only_what_both_brackets_allow(
    first: Climb, second: Climb, reading: str
) -> None:
    assert ratio(first, second) == reading
