"""The bench's harness and a whole ``make bench`` run at a small rate (nothing here is timed)."""

from __future__ import annotations

import re
import resource
import socket
import subprocess
import sys
from pathlib import Path

from benchmarks import harness
from benchmarks import run as bench

LOOPBACK = "127.0.0.1"
ROOT = Path(__file__).resolve().parent.parent.parent


def test_bench_runs_end_to_end_at_a_small_rate() -> None:
    """The plan first, a progress line per trial, a table; and no ratio where neither ceiling
    was found (both designs pass at the only rate tried)."""
    result = subprocess.run(
        [
            sys.executable, "-m", "benchmarks.run", "--start", "500", "--max-rate", "500",
            "--duration", "0.5", "--trials", "2", "--users", "3",
            "--designs", f"udpchat serve;{harness.BARE}",
        ],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.index("plan:") < out.index("estimate:") < out.index("3 users, 2 trials per rate")
    progress = re.findall(r"^\s+\[\s*\d+\s+\d+s\] users\s+3 ", result.stderr, re.MULTILINE)
    assert len(progress) == 5  # the sink, then two trials of each design, each on its line
    assert "3 users, 2 trials per rate" in out
    assert re.search(r"\| udpchat serve \| 500/s \| not reached: 500/s is --max-rate \|", out)
    assert "ceiling / ceiling: none (the first ceiling not bracketed)" in out
    assert "generator flat out → C sink" in out


def test_bench_trial_counts_what_the_server_wrote(tmp_path: Path) -> None:
    trial = harness.run_trial("udpchat serve", 1000, 0.5, 2, tmp_path)
    assert trial.sent == trial.handled > 0
    assert trial.loss == 0.0
    assert trial.peak_rss_bytes > 0
    assert bench.accounts_balance(trial), trial.stderr


def test_the_bench_harness_waits_for_its_generator_without_spinning() -> None:
    """While the generator runs, the harness sleeps between polls whether or not it has a
    once-a-second callback: a harness that spun would take a core from the design measured
    (it did, and cost udpchat a quarter of its ceiling)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as receiver:
        receiver.bind((LOOPBACK, 0))
        before = resource.getrusage(resource.RUSAGE_SELF)
        sent, _ = harness.generate(receiver.getsockname()[1], 200, 2.5, 2)
        after = resource.getrusage(resource.RUSAGE_SELF)
    assert sent > 0
    harness_cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    assert harness_cpu_s < 0.3, f"the harness took {harness_cpu_s:.2f} s of CPU in 2.5 s"
