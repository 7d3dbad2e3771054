"""The worker pool: a ``ThreadPoolExecutor`` whose threads do not keep the interpreter alive.

The standard executor joins its threads at exit, so one handler stuck forever would hang the
process after the server stopped; here what the drain timeout gave up on is abandoned. This
needs CPython's private ``_worker`` and ``_idle_semaphore``; where they are not the ones this
was written against (CPython 3.11-3.13), the pool falls back to the standard, joined threads
rather than break.
"""

from __future__ import annotations

import concurrent.futures
import inspect
import threading
import weakref
from concurrent.futures import thread as executor_internals
from typing import Any, cast

_worker = getattr(executor_internals, "_worker", None)
DAEMON_THREADS_SUPPORTED = _worker is not None and list(inspect.signature(_worker).parameters) == [
    "executor_reference",
    "work_queue",
    "initializer",
    "initargs",
]
"""Whether this CPython's executor internals are the ones :class:`DaemonThreadPool` knows."""


class DaemonThreadPool(concurrent.futures.ThreadPoolExecutor):
    """A ``ThreadPoolExecutor`` of daemon threads (see the module's docstring)."""

    daemon_threads = DAEMON_THREADS_SUPPORTED

    def _adjust_thread_count(self) -> None:
        if not self.daemon_threads:  # another CPython's internals: the standard threads
            super()._adjust_thread_count()
            return
        if self._idle_semaphore.acquire(timeout=0):
            return
        threads = cast(set[threading.Thread], self._threads)
        if len(threads) >= self._max_workers:
            return
        work_queue = self._work_queue

        def wake_on_collect(_: object, queue: Any = work_queue) -> None:
            queue.put(None)

        thread = threading.Thread(
            name=f"{self._thread_name_prefix}_{len(threads)}",
            target=_worker,
            args=(
                weakref.ref(self, wake_on_collect),
                work_queue,
                self._initializer,
                self._initargs,
            ),
            daemon=True,
        )
        thread.start()
        threads.add(thread)
