"""The worker pool: daemon threads where this CPython's executor internals are known, the
standard joined threads elsewhere; both run every job."""

from __future__ import annotations

import sys
import threading

import pytest

from udpchat.pool import DAEMON_THREADS_SUPPORTED, DaemonThreadPool


def thread_of_a_job(pool: DaemonThreadPool) -> threading.Thread:
    return pool.submit(threading.current_thread).result(timeout=10)


def test_this_interpreters_executor_is_the_one_the_pool_knows() -> None:
    """Written against CPython 3.11-3.13's internals; elsewhere it falls back, and this says so
    rather than let the fallback pass unnoticed."""
    assert DAEMON_THREADS_SUPPORTED or sys.version_info >= (3, 14)


@pytest.mark.skipif(not DAEMON_THREADS_SUPPORTED, reason="another CPython's executor")
def test_the_pool_runs_jobs_on_daemon_threads_up_to_its_size() -> None:
    pool = DaemonThreadPool(max_workers=2, thread_name_prefix="test-pool")
    try:
        thread = thread_of_a_job(pool)
        assert thread.daemon
        assert thread.name.startswith("test-pool_")
        gate = threading.Event()
        blocked = [pool.submit(gate.wait, 10) for _ in range(3)]
        assert len(pool._threads) == 2  # bounded by max_workers
        gate.set()
        assert all(future.result(timeout=10) for future in blocked)
    finally:
        pool.shutdown(wait=True)


def test_the_fallback_runs_jobs_on_the_standard_threads() -> None:
    pool = DaemonThreadPool(max_workers=2, thread_name_prefix="test-pool")
    pool.daemon_threads = False  # what another CPython's internals lead to
    try:
        thread = thread_of_a_job(pool)
        assert not thread.daemon
        assert [future.result(timeout=10) for future in [pool.submit(pow, 2, 10)]] == [1024]
    finally:
        pool.shutdown(wait=True)
