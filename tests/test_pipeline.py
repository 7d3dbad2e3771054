"""The queue and its jobs, driven directly: what does not fit is counted as ``queue_full`` to
the datagram, what breaks inside is counted as ``internal_error``, and every moment adds up."""

from __future__ import annotations

import threading
from collections.abc import Callable

from support.waiting import EVENT_TIMEOUT_S, eventually_sync
from tests.helpers import assert_balanced
from udpchat.counters import ServerTally, StatsSnapshot
from udpchat.handlers import Batch
from udpchat.pipeline import (
    COALESCE_FROM,
    COALESCE_S,
    MAX_BATCH_BYTES,
    MAX_BATCH_DATAGRAMS,
    Dispatcher,
    batch_limit,
    coalesce_pause,
)

ADDRESS = ("127.0.0.1", 40000)


def seed(*counters: int) -> list[tuple[bytes, object]]:
    return [(b"alice: pesan ke-%d" % counter, ADDRESS) for counter in counters]


class Gate:
    """A batch handler that holds its first batch until released."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.batches: list[int] = []

    def handle_batch(self, batch: Batch) -> int:
        self.entered.set()
        assert self.release.wait(EVENT_TIMEOUT_S)
        self.batches.append(len(batch))
        return 0


def dispatcher(
    handler: object, tally: ServerTally, queue_size: int = 10, max_datagram_size: int = 1024
) -> Dispatcher:
    return Dispatcher(
        handler,  # type: ignore[arg-type]
        tally,
        workers=1,
        queue_size=queue_size,
        max_datagram_size=max_datagram_size,
        max_senders=100,
        ipv6_socket=False,
    )


def wait_for_handled(tally: ServerTally, count: int) -> None:
    """Until ``count`` are handled, with a deadline."""
    wait_for(tally, lambda stats: stats.handled >= count)


def wait_for(tally: ServerTally, done: Callable[[StatsSnapshot], bool]) -> None:
    """Until the tally's snapshot is ``done``, with a deadline."""
    eventually_sync(lambda: done(tally.snapshot()), what=f"{done.__qualname__}: {tally.snapshot()}")


def test_what_does_not_fit_the_queue_is_counted_as_queue_full_to_the_datagram() -> None:
    tally, gate = ServerTally(), Gate()
    pipeline = dispatcher(gate, tally, queue_size=10)
    pipeline.submit(seed(1, 2, 3, 4), 0.0)
    assert gate.entered.wait(EVENT_TIMEOUT_S)
    pipeline.submit(seed(*range(5, 25)), 0.0)  # 20 arrive, 6 fit
    stats = tally.snapshot()
    assert (stats.received, stats.queue_depth, stats.dropped["queue_full"]) == (24, 10, 14)
    assert pipeline.full
    pipeline.submit(seed(25), 0.0)
    assert tally.snapshot().dropped["queue_full"] == 15
    assert_balanced(tally.snapshot())
    gate.release.set()
    wait_for_handled(tally, 10)
    stats = tally.snapshot()
    assert (stats.handled, stats.queue_depth, stats.batches) == (10, 0, 2)
    assert gate.batches == [4, 6]
    assert_balanced(stats)


def test_what_arrives_before_a_batch_is_taken_joins_it_up_to_the_batch_limit() -> None:
    tally, gate = ServerTally(), Gate()
    pipeline = dispatcher(gate, tally, queue_size=100, max_datagram_size=MAX_BATCH_BYTES // 4)
    assert pipeline.max_batch == 4
    pipeline.submit(seed(1, 2, 3), 0.0)
    assert gate.entered.wait(EVENT_TIMEOUT_S)  # taken: what comes next starts a batch
    pipeline.submit(seed(4, 5), 1.0)
    pipeline.submit(seed(6), 2.0)  # joins the untaken batch: 3 of 4
    pipeline.submit(seed(7, 8), 3.0)  # would make 5: a batch of its own
    pipeline.submit(seed(9, 10, 11, 12, 13), 4.0)  # more than the limit alone: kept whole
    stats = tally.snapshot()
    assert (stats.received, stats.queue_depth, stats.batches) == (13, 13, 4)
    assert_balanced(stats)
    gate.release.set()
    wait_for_handled(tally, 13)
    stats = tally.snapshot()
    assert gate.batches == [3, 3, 2, 5]
    assert (stats.handled, stats.queue_depth, stats.batches) == (13, 0, 4)
    assert_balanced(stats)


def test_a_job_woken_soon_after_idle_for_a_dense_batch_waits_for_more_and_only_then() -> None:
    dense = COALESCE_FROM
    assert coalesce_pause(0.0, dense) == coalesce_pause(COALESCE_S / 2, 100) == COALESCE_S
    assert coalesce_pause(COALESCE_S, dense) == coalesce_pause(1.0, 100) == 0.0
    assert coalesce_pause(0.0, dense - 1) == coalesce_pause(0.0, 0) == 0.0  # a slow stream


def test_an_error_in_parsing_or_accounting_is_counted_and_the_worker_goes_on() -> None:
    tally = ServerTally()
    handled: list[int] = []
    done = threading.Event()

    class Recorder:
        def handle_batch(self, batch: Batch) -> int:
            handled.append(len(batch))
            done.set()
            return 0

    pipeline = dispatcher(Recorder(), tally)
    unhashable: list[tuple[bytes, object]] = [(b"alice: pesan ke-1", ["127.0.0.1", 1])]
    pipeline.submit(unhashable, 0.0)  # the accounting cannot key a list: a bug, not a loss
    wait_for(tally, lambda stats: stats.dropped["internal_error"] == 1)  # before the next joins
    pipeline.submit(seed(1, 2), 0.0)
    assert done.wait(EVENT_TIMEOUT_S)
    stats = tally.snapshot()
    assert stats.dropped["internal_error"] == 1
    assert handled == [2]
    assert stats.handled == 2
    assert_balanced(stats)


def test_a_batch_handlers_failures_are_handler_errors_and_its_raise_fails_them_all() -> None:
    tally = ServerTally()
    calls = threading.Semaphore(0)

    class Flaky:
        def __init__(self) -> None:
            self.first = True

        def handle_batch(self, batch: Batch) -> int:
            calls.release()
            if self.first:
                self.first = False
                return 1  # one message of the batch failed
            raise ValueError("broken")

    pipeline = dispatcher(Flaky(), tally)
    pipeline.submit(seed(1, 2, 3), 0.0)
    assert calls.acquire(timeout=EVENT_TIMEOUT_S)
    pipeline.submit(seed(4, 5), 0.0)
    assert calls.acquire(timeout=EVENT_TIMEOUT_S)
    wait_for_handled(tally, 5)
    stats = tally.snapshot()
    assert (stats.handled, stats.handler_errors) == (5, 3)
    assert_balanced(stats)


def test_a_batch_holds_at_most_what_one_recvmmsg_takes_however_small_the_datagrams() -> None:
    assert batch_limit(1) == MAX_BATCH_DATAGRAMS
    assert batch_limit(1024) == MAX_BATCH_BYTES // 1024
    assert batch_limit(10 * MAX_BATCH_BYTES) == 1
