"""``make bench-web``: what ``serve --web`` costs with the page open in a browser.

The same server twice, interleaved trial by trial: ``udpchat serve`` alone, and ``udpchat serve
--web`` with its page open in headless Chromium (Debian's, driven by Playwright: one browser
for the run, a new page per trial, connected and updated once before the generator starts).
Two figures, each against the promise that the page changes it by at most 5%:

- **the ceiling**: both designs climb the ladder of ``make bench`` (:mod:`benchmarks.ladder`)
  at the same user count; the ratio of the highest rates passed, with the range the brackets
  allow;
- **the CPU per message** at a fixed rate below both ceilings, as ``make bench-cpu`` measures
  it (:mod:`benchmarks.cpu`): the server process's CPU over the messages written, the median
  of interleaved rounds and the per-round ratios.

The browser's own CPU is its process's, not the server's: what is measured is what the page
costs the server (its updates, its WebSocket, the sampler).

Usage: ``python -m benchmarks.web [--users 100] [--trials 3] [--duration 2] [--rounds 5]``.
"""

from __future__ import annotations

import argparse
import re
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from playwright.sync_api import Browser, expect, sync_playwright

from benchmarks import cpu
from benchmarks.harness import BLAST, UDPCHAT, WEB, Attach, RunningServer, build
from benchmarks.ladder import START_RATE, Climb, Progress, climb_all
from benchmarks.run import describe_ceiling, ratio

CHROMIUM = "/usr/bin/chromium"
PROMISE = 0.05
"""The page may change the ceiling and the CPU per message by at most this share."""
URL_TIMEOUT_S = 10.0
CPU_RATE = 50_000
CPU_MESSAGES = 200_000


def page_opener(browser: Browser) -> Attach:
    """Open the server's page in ``browser`` for the trial: connected, one update received."""

    @contextmanager
    def opened(server: RunningServer) -> Iterator[None]:
        deadline = time.monotonic() + URL_TIMEOUT_S
        while not (found := re.search(r"web view on (http://\S+)", server.stderr_so_far())):
            if time.monotonic() > deadline:
                raise RuntimeError("the server never said where its page is")
            time.sleep(0.02)
        page = browser.new_page()
        try:
            page.goto(found[1])
            expect(page.get_by_test_id("status")).to_have_text("connected")
            expect(page.get_by_test_id("chart-rates")).to_have_attribute(
                "data-points", re.compile(r"\d")
            )
            yield
        finally:
            page.close()

    return opened


def ceilings(
    browser: Browser, users: int, trials: int, duration_s: float, start: int, workdir: Path
) -> None:
    climbs = [Climb(design, start, 1.5) for design in (UDPCHAT, WEB)]
    climb_all(
        climbs, trials, duration_s, users, workdir, Progress(), attach={WEB: page_opener(browser)}
    )
    print(f"\nceilings, {users} users, {trials} trials per rate, interleaved:\n")
    print("| design | highest rate passed | first rate failed | loss there |")
    print("|---|---:|---:|---:|")
    for climb in climbs:
        print(f"| {climb.design} | {' | '.join(describe_ceiling(climb))} |")
    print(
        f"\nwith the page / without: {ratio(climbs[1], climbs[0])} (promise: within {PROMISE:.0%})"
    )


def cpu_per_message(browser: Browser, rounds: int, workdir: Path) -> None:
    per_message, _ = cpu.interleaved(
        (UDPCHAT, WEB), workdir, Progress(), rounds, CPU_MESSAGES, CPU_RATE,
        attach={WEB: page_opener(browser)},
    )  # fmt: skip
    print(
        f"\nwith the page / without, CPU per message: {cpu.ratios(per_message, WEB, UDPCHAT)}; "
        f"promise: within {PROMISE:.0%}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--duration", type=float, default=2.0)
    parser.add_argument("--start", type=int, default=START_RATE)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--skip", choices=("ceiling", "cpu"), action="append", default=[])
    args = parser.parse_args()
    build(BLAST)
    with (
        tempfile.TemporaryDirectory(prefix="udpchat-bench-") as directory,
        sync_playwright() as playwright,
    ):
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        if "ceiling" not in args.skip:
            ceilings(browser, args.users, args.trials, args.duration, args.start, Path(directory))
        if "cpu" not in args.skip:
            cpu_per_message(browser, args.rounds, Path(directory))
        browser.close()


if __name__ == "__main__":
    main()
