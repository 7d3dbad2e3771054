"""``make bench-micro``: microseconds per message for each stage of the pipeline, on one thread.

Stages, as a pool worker runs them: receive (the protocol's ``datagram_received`` and the
hand-off of a batch, on the loop thread), parse, account, format and write (the line printer,
to /dev/null). Seed text from 100 users in batches of 64. Then the worst case per byte: 1 KB
datagrams that are printable, control bytes or invalid UTF-8, through decode, escape and format.
Each figure is the median of several repeats, with the spread (min-max), under the same
garbage-collector settings as ``serve``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from collections.abc import Callable

from udpchat.accounting import DeliveryAccounting
from udpchat.counters import ServerTally
from udpchat.handlers import Batch
from udpchat.output import LinePrinter
from udpchat.pipeline import Dispatcher, parse
from udpchat.protocol import DropNotices, Receiver
from udpchat.tuning import tune_for_throughput
from udpchat.wire import decode, format_line

USERS = 100
BATCH = 64
MESSAGES = 200_000
REPEATS = 7


def seed_batches(messages: int = MESSAGES) -> list[list[tuple[bytes, tuple[str, int]]]]:
    datagrams = [
        (f"user{n % USERS}: pesan ke-{n // USERS + 1}".encode(), ("127.0.0.1", 40000 + n % USERS))
        for n in range(messages)
    ]
    return [datagrams[i : i + BATCH] for i in range(0, messages, BATCH)]


def measure(run: Callable[[], float], count: int) -> tuple[float, float, float]:
    """(median, min, max) of microseconds per message over the repeats; ``run`` returns the
    seconds its measured part took, so that it can leave its set-up out."""
    samples = [run() / count * 1e6 for _ in range(REPEATS)]
    return statistics.median(samples), min(samples), max(samples)


def timed(work: Callable[[], object]) -> float:
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


def fresh(raw: list[list[tuple[bytes, tuple[str, int]]]]) -> list[Batch]:
    return [Batch(time.time(), list(datagrams)) for datagrams in raw]


class _NullDispatcher(Dispatcher):
    """Takes batches and forgets them: the receive stage alone."""

    def submit(self, datagrams: list[tuple[bytes, object]], received_at: float) -> None:
        """Nothing: the batch is forgotten."""


async def receive_stage(raw: list[list[tuple[bytes, tuple[str, int]]]]) -> float:
    counters = ServerTally()
    dispatcher = _NullDispatcher(
        None,
        counters,
        workers=1,
        queue_size=1 << 30,
        max_datagram_size=1024,
        max_senders=10_000,
        ipv6_socket=False,
    )
    notices = DropNotices(max_datagram_size=1024, queue_size=1 << 30, rate_limit_per_s=None)
    receiver = Receiver(
        dispatcher, counters, max_datagram_size=1024, admission=None, notices=notices
    )
    received = receiver.datagram_received
    started = time.perf_counter()
    for datagrams in raw:
        for data, address in datagrams:
            received(data, address)
        receiver.dispatch()
    return time.perf_counter() - started


def stages(raw: list[list[tuple[bytes, tuple[str, int]]]]) -> dict[str, tuple[float, float, float]]:
    total = sum(len(datagrams) for datagrams in raw)
    results = {"receive (loop thread)": measure(lambda: asyncio.run(receive_stage(raw)), total)}

    def parse_stage() -> float:
        batches = fresh(raw)

        def parse_all() -> None:
            for batch in batches:
                parse(batch, False)

        return timed(parse_all)

    def parsed() -> list[Batch]:
        batches = fresh(raw)
        for batch in batches:
            parse(batch, False)
        return batches

    def account_stage() -> float:
        batches, accounting = parsed(), DeliveryAccounting()

        def account() -> None:
            for batch in batches:
                batch.verdicts = accounting.record_batch(
                    batch.senders, batch.seeds, batch.received_at
                )

        return timed(account)

    with open(os.devnull, "w") as devnull:
        printer = LinePrinter(devnull)

        def format_and_write_stage() -> float:
            batches, accounting = parsed(), DeliveryAccounting()
            for batch in batches:
                batch.verdicts = accounting.record_batch(
                    batch.senders, batch.seeds, batch.received_at
                )
            return timed(lambda: [printer.handle_batch(batch) for batch in batches])

        results["parse"] = measure(parse_stage, total)
        results["account"] = measure(account_stage, total)
        results["format + write"] = measure(format_and_write_stage, total)
    worker = [results[name] for name in ("parse", "account", "format + write")]
    results["worker path (the three added up)"] = (
        sum(median for median, _, _ in worker),
        sum(low for _, low, _ in worker),
        sum(high for _, _, high in worker),
    )
    return results


def worst_case_per_byte() -> dict[str, tuple[float, float, float]]:
    """Decode, escape and format one 1 KB datagram of each kind, in microseconds."""
    kinds = {
        "printable": b"a" * 1024,
        "control bytes": bytes(range(32)) * 32,
        "invalid UTF-8": bytes(range(128, 256)) * 8,
        "alternating control": b"a\x01" * 512,
    }
    results = {}
    for name, data in kinds.items():

        def one_kind(data: bytes = data) -> float:
            started = time.perf_counter()
            for _ in range(2000):
                text, _ = decode(data)
                format_line("127.0.0.1", text).encode()
            return time.perf_counter() - started

        results[name] = measure(one_kind, 2000)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.parse_args()
    tune_for_throughput()  # as ``serve`` runs
    raw = seed_batches()
    print(f"per stage, {MESSAGES:,} seed datagrams from {USERS} users in batches of {BATCH}, "
          f"one thread, median of {REPEATS} (min-max), microseconds per message:")  # fmt: skip
    for name, (median, low, high) in stages(raw).items():
        print(f"  {name:<48} {median:6.3f}  ({low:.3f}-{high:.3f})")
    print("\nworst case per byte: one 1 KB datagram through decode, escape and format (us):")
    costs = worst_case_per_byte()
    printable = costs["printable"][0]
    for name, (median, low, high) in costs.items():
        print(f"  {name:<24} {median:7.2f}  ({low:.2f}-{high:.2f})  {median / printable:5.1f}x")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
