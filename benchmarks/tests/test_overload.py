"""Goodput at overload: the table reads each design's median over the rounds, and udpchat's
ratios to the prototype's and the sink's medians, and says whether its accounts balanced."""

from __future__ import annotations

import pytest

from benchmarks import overload
from benchmarks.harness import BARE, C_SINK, PROTOTYPE, UDPCHAT, Trial

SUMMARY = "udpchat: summary: received={} handled={} dropped={} queued=0 kernel_drops={}"


def trial(design: str, handled: int, stderr: str = "") -> Trial:
    return Trial(design, 100, 1000, 1000.0, 1000, handled, handled, 0, stderr)


def test_the_table_reads_medians_and_ratios(capsys: pytest.CaptureFixture[str]) -> None:
    balanced = SUMMARY.format(900, 600, 300, 100)  # 1000 sent: 900 read + 100 dropped by the kernel
    broken = SUMMARY.format(900, 600, 200, 100)
    trials = {
        C_SINK: [trial(C_SINK, 1000), trial(C_SINK, 800), trial(C_SINK, 900)],
        PROTOTYPE: [trial(PROTOTYPE, 400), trial(PROTOTYPE, 300), trial(PROTOTYPE, 500)],
        BARE: [trial(BARE, 200), trial(BARE, 200), trial(BARE, 200)],
        UDPCHAT: [
            trial(UDPCHAT, 600, balanced),
            trial(UDPCHAT, 700, broken),
            trial(UDPCHAT, 500, balanced),
        ],
    }
    overload.print_table(overload.QUICK, trials, 1000, 2.0)
    out = capsys.readouterr().out
    rows = {
        line.split(" | ")[0].lstrip("| "): line.split(" | ")
        for line in out.splitlines()
        if line.startswith("| ") and "---" not in line
    }
    assert rows[UDPCHAT][1:5] == ["300/s", "250-350", "1.50x", "0.67x"]
    assert rows[PROTOTYPE][1:5] == ["200/s", "150-250", "1.00x", "0.44x"]
    assert rows[C_SINK][3:5] == ["2.25x", "1.00x"]
    assert "udpchat serve: accounts balanced in 2 of 3 rounds" in out


def test_the_full_run_adds_the_pure_loops_and_two_processes() -> None:
    assert [design.name for design in overload.FULL[len(overload.QUICK) :]] == [
        overload.PURE,
        overload.PROCESSES,
    ]
    (pure,) = [design for design in overload.FULL if design.name == overload.PURE]
    assert pure.env == {"UDPCHAT_PURE": "1"} and pure.accounted
