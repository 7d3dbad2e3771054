"""``make bench-cpu``: CPU time per message at a fixed rate, udpchat against the strongest Python
peer (the prototype) and the bare baseline.

Each round starts every design in turn, offers each :data:`MESSAGES` at :data:`RATE` (below
both ceilings), waits until every message is written (or :data:`WRITTEN_TIMEOUT_S`), and
divides the server process's CPU time over that span (utime + stime of all its threads, from
``/proc/PID/stat``) by the messages written; the loss is shown beside it, as a trial that lost
some did less work. Rounds alternate the designs; the median, min-max and the ratio per round
are reported.

Usage: ``python -m benchmarks.cpu [--rounds 3] [--messages 500000] [--rate 100000]``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from benchmarks.harness import (
    BARE,
    BLAST,
    PROTOTYPE,
    UDPCHAT,
    Attach,
    Trial,
    build,
    generate,
    peak_rss_bytes,
    process_cpu_s,
    serving,
)
from benchmarks.ladder import Progress

RATE = 100_000
MESSAGES = 500_000
ROUNDS = 3
USERS = 100
WRITTEN_TIMEOUT_S = 30.0
TRIAL_OVERHEAD_S = 1.5
DESIGNS = (UDPCHAT, PROTOTYPE, BARE)


def estimate_s(rounds: int = ROUNDS, messages: int = MESSAGES, rate: int = RATE) -> float:
    return rounds * len(DESIGNS) * (messages / rate + TRIAL_OVERHEAD_S)


def measure(
    design: str, rate: int, messages: int, workdir: Path, attach: Attach | None = None
) -> tuple[float, Trial]:
    """(CPU microseconds per message, the trial) for one design, with ``attach`` beside it."""
    with serving(design, workdir, attach=attach) as server:
        before = process_cpu_s(server.pid)
        sent, achieved = generate(server.port, rate, messages / rate, USERS)
        deadline = time.monotonic() + WRITTEN_TIMEOUT_S
        while (written := server.handled_so_far()) < sent and time.monotonic() < deadline:
            time.sleep(0.05)
        after = process_cpu_s(server.pid)
        peak = peak_rss_bytes(server.pid)
        handled, stderr = server.stop()
    trial = Trial(design, USERS, rate, achieved, sent, written, handled, peak, stderr)
    return (after - before) / max(written, 1) * 1e6, trial


Costs = dict[str, list[float]]
"""Per design, one figure per round, in the designs' order."""


def interleaved(
    designs: Sequence[str],
    workdir: Path,
    progress: Progress,
    rounds: int = ROUNDS,
    messages: int = MESSAGES,
    rate: int = RATE,
    attach: dict[str, Attach] | None = None,
) -> tuple[Costs, Costs]:
    """(CPU microseconds per message, loss) of each design, round by round, the designs taking
    turns in each round; ``attach`` puts something beside a design's server."""
    per_message: Costs = {design: [] for design in designs}
    losses: Costs = {design: [] for design in designs}
    for _ in range(rounds):
        for design in designs:
            cost_us, trial = measure(design, rate, messages, workdir, (attach or {}).get(design))
            per_message[design].append(cost_us)
            losses[design].append(trial.loss)
            progress(trial, f"  CPU {cost_us:.2f} us/message")
    print(
        f"\nCPU per message at {rate:,}/s, {messages:,} messages, {USERS} users, {rounds} "
        "interleaved rounds (utime + stime of the server process, all threads):\n"
    )
    print("| design | us/message median | min-max | rounds | loss per round |")
    print("|---|---:|---:|---|---|")
    for design, costs in per_message.items():
        each = ", ".join(f"{cost:.2f}" for cost in costs)
        lost = ", ".join(f"{loss:.2%}" for loss in losses[design])
        print(
            f"| {design} | {statistics.median(costs):.2f} | "
            f"{min(costs):.2f}-{max(costs):.2f} | {each} | {lost} |"
        )
    return per_message, losses


def ratios(per_message: Costs, design: str, peer: str) -> str:
    """``design``'s CPU per message over ``peer``'s: the median of the rounds' ratios, with
    their range."""
    each = [a / b for a, b in zip(per_message[design], per_message[peer], strict=True)]
    spread = f"{min(each):.3f}-{max(each):.3f}"
    return f"{statistics.median(each):.3f} median of the rounds' ratios ({spread})"


def run(
    workdir: Path,
    progress: Progress,
    rounds: int = ROUNDS,
    messages: int = MESSAGES,
    rate: int = RATE,
) -> None:
    per_message, _ = interleaved(DESIGNS, workdir, progress, rounds, messages, rate)
    for peer, called in ((PROTOTYPE, "prototype"), (BARE, "bare")):
        print(f"\nudpchat / {called}, CPU per message: {ratios(per_message, UDPCHAT, peer)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--messages", type=int, default=MESSAGES)
    parser.add_argument("--rate", type=int, default=RATE)
    args = parser.parse_args()
    build(BLAST)
    seconds = estimate_s(args.rounds, args.messages, args.rate)
    print(f"CPU per message: about {seconds / 60:.1f} minutes", flush=True)
    with tempfile.TemporaryDirectory(prefix="udpchat-bench-") as directory:
        run(Path(directory), Progress(), args.rounds, args.messages, args.rate)


if __name__ == "__main__":
    main()
