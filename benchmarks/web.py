"""``make bench-web``: what ``serve --web`` costs with the page open in a browser.

Three designs, interleaved trial by trial: ``udpchat serve`` alone; ``udpchat serve --web``
with its page open in headless Chromium (Debian's, driven by Playwright: one browser for the
run, a new page per trial, connected and updated once before the generator starts); and
``udpchat serve --web`` with its feed read by :mod:`benchmarks.feed_reader`, a WebSocket client
that draws nothing. Each waits :data:`SETTLE_S` after its banner before the load. Two figures,
each against the promise that the page changes it by at most 5%:

- **the ceiling**: the designs climb the ladder of ``make bench`` (:mod:`benchmarks.ladder`)
  at the same user count; the ratio of the highest rates passed, with the range the brackets
  allow;
- **the CPU per message** at a fixed rate below every ceiling, as ``make bench-cpu`` measures
  it (:mod:`benchmarks.cpu`): the server process's CPU over the messages written, the median
  of interleaved rounds and the per-round ratios.

The CPU per message is the server process's: what the page costs the server (its updates,
its WebSocket, the sampler). The ceiling is the whole machine's: on a machine whose every core
the server and the generator fill, the browser drawing the charts takes its share of them, and
the feed reader's row shows what is left when nothing draws.

Usage: ``python -m benchmarks.web [--users 100] [--trials 3] [--duration 2] [--rounds 5]``.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

from playwright.sync_api import Browser, expect, sync_playwright

from benchmarks import cpu
from benchmarks.harness import (
    BLAST,
    PYTHON,
    UDPCHAT,
    WEB,
    WEB_FEED,
    Attach,
    RunningServer,
    build,
)
from benchmarks.ladder import START_RATE, Climb, Progress, climb_all
from benchmarks.run import describe_ceiling, ratio

CHROMIUM = "/usr/bin/chromium"
PROMISE = 0.05
"""The page may change the ceiling and the CPU per message by at most this share."""
URL_TIMEOUT_S = 10.0
CPU_RATE = 50_000
CPU_MESSAGES = 200_000
SETTLE_S = 2.0
"""Both designs wait this long after their banner before the load starts: a server loaded at
once costs less CPU per message than one that sat idle for a second first (the page takes
about a second to open), so the two must start alike."""


def settled(attach: Attach | None = None) -> Attach:
    """``attach`` beside the server, then a wait until :data:`SETTLE_S` after it was entered."""

    @contextmanager
    def entered(server: RunningServer) -> Iterator[None]:
        until = time.monotonic() + SETTLE_S
        with attach(server) if attach else nullcontext():
            time.sleep(max(0.0, until - time.monotonic()))
            yield

    return entered


def page_url(server: RunningServer) -> str:
    """Where the server said its page is."""
    deadline = time.monotonic() + URL_TIMEOUT_S
    while not (found := re.search(r"web view on (http://\S+)", server.stderr_so_far())):
        if time.monotonic() > deadline:
            raise RuntimeError("the server never said where its page is")
        time.sleep(0.02)
    return found[1]


@contextmanager
def feed_read(server: RunningServer) -> Iterator[None]:
    """The page's feed read by :mod:`benchmarks.feed_reader` for the trial, its first message
    received."""
    url = "ws" + page_url(server).removeprefix("http").split("?")[0].rstrip("/") + "/ws"
    with subprocess.Popen(
        [PYTHON, "-m", "benchmarks.feed_reader", url], stdout=subprocess.PIPE, text=True
    ) as reader:
        try:
            if reader.stdout is None or reader.stdout.readline().strip() != "connected":
                raise RuntimeError(f"the feed reader did not connect to {url}")
            yield
        finally:
            reader.kill()


def page_opener(browser: Browser) -> Attach:
    """Open the server's page in ``browser`` for the trial: connected, one update received."""

    @contextmanager
    def opened(server: RunningServer) -> Iterator[None]:
        page = browser.new_page()
        try:
            page.goto(page_url(server))
            expect(page.get_by_test_id("status")).to_have_text("connected")
            expect(page.get_by_test_id("chart-rates")).to_have_attribute(
                "data-points", re.compile(r"\d")
            )
            yield
        finally:
            page.close()

    return opened


DESIGNS = (UDPCHAT, WEB, WEB_FEED)


def beside(browser: Browser) -> dict[str, Attach]:
    """What each design has beside it (the page, the feed reader), settled alike."""
    return {
        UDPCHAT: settled(),
        WEB: settled(page_opener(browser)),
        WEB_FEED: settled(feed_read),
    }


def ceilings(
    browser: Browser, users: int, trials: int, duration_s: float, start: int, workdir: Path
) -> None:
    climbs = [Climb(design, start, 1.5) for design in DESIGNS]
    climb_all(climbs, trials, duration_s, users, workdir, Progress(), attach=beside(browser))
    print(f"\nceilings, {users} users, {trials} trials per rate, interleaved:\n")
    print("| design | highest rate passed | first rate failed | loss there |")
    print("|---|---:|---:|---:|")
    for climb in climbs:
        print(f"| {climb.design} | {' | '.join(describe_ceiling(climb))} |")
    alone = climbs[0]
    for climb, called in zip(climbs[1:], ("the page", "the feed read"), strict=True):
        print(f"\nwith {called} / without: {ratio(climb, alone)} (promise: within {PROMISE:.0%})")


def cpu_per_message(browser: Browser, rounds: int, workdir: Path) -> None:
    per_message, _ = cpu.interleaved(
        DESIGNS, workdir, Progress(), rounds, CPU_MESSAGES, CPU_RATE, attach=beside(browser)
    )
    for design, called in ((WEB, "the page"), (WEB_FEED, "the feed read")):
        print(
            f"\nwith {called} / without, CPU per message: "
            f"{cpu.ratios(per_message, design, UDPCHAT)}; promise: within {PROMISE:.0%}"
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
