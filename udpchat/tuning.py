"""Process-wide settings for a process that serves datagrams: the garbage collector and the GIL's
switch interval, set once at start-up."""

from __future__ import annotations

import gc
import sys

GC_YOUNG_THRESHOLD = 50_000
"""Allocations between two collections of the youngest generation (CPython's default: 700)."""
SWITCH_INTERVAL_S = 0.001
"""How long a thread may hold the GIL while another waits (CPython's default: 5 ms)."""


def tune_for_throughput() -> None:
    """Process-wide settings for a server process; the ``serve`` command calls it, an
    embedding application may.

    The hot path allocates a few short-lived tuples per datagram and frees them by reference
    count; with the default thresholds the cyclic garbage collector, which walks every queued
    datagram and every sender, costs as much as the work itself. What start-up made is frozen
    out of its sight, and it runs 70 times less often. A shorter switch interval lets the
    event loop take the GIL back from a busy worker sooner, before the socket buffer fills.
    """
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, 10, 10)
    sys.setswitchinterval(SWITCH_INTERVAL_S)
