"""The feature-less baseline udpchat must keep up with: uvloop, the datagrams of each loop
iteration handed as one batch to a 2-thread pool, formatted ``[ip] text`` and written with one
call per batch. No accounting, no counters, no escaping, no bounds.

Usage: ``python -m benchmarks.baselines.bare_uvloop PORT``. Prints the seed's lines to stdout.
With ``BARE_STATS_INTERVAL_S`` set (the saturation benchmark sets it), a counting protocol and
pool job take the place of the plain ones and a status line goes to stderr at that interval;
without it nothing is counted, so the baseline runs as fast as ever.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import uvloop

from benchmarks.baselines.prototype import Prototype
from udpchat.sockets import set_receive_buffer

RCVBUF = 4 * 1024 * 1024
"""As much as udpchat asks for, so that both meet the same kernel."""


def handle(batch: list[tuple[bytes, Any]]) -> None:
    sys.stdout.write(
        "".join(f"[{address[0]}] {data.decode('utf-8', 'replace')}\n" for data, address in batch)
    )
    sys.stdout.flush()


class BatchingProtocol(Prototype):
    """The prototype's protocol, with a flush after every batch."""

    handle = staticmethod(handle)


class CountingProtocol(BatchingProtocol):
    """The same, counting datagrams and batches in, and messages handled by the pool."""

    def __init__(self, pool: ThreadPoolExecutor) -> None:
        super().__init__(pool)
        self.received = 0
        self.batches = 0
        self.handled = 0
        self._handled_lock = threading.Lock()

    def hand_over(self) -> None:
        batch, self.batch = self.batch, []
        self.received += len(batch)
        self.batches += 1
        self.pool.submit(self.handle_counted, batch)

    def handle_counted(self, batch: list[tuple[bytes, Any]]) -> None:
        handle(batch)
        with self._handled_lock:
            self.handled += len(batch)

    def status(self) -> str:
        return (
            f"bare: status: received={self.received} handled={self.handled} "
            f"queued={self.received - self.handled} batches={self.batches} "
            f"jobs_started={self.batches}"
        )


async def report(protocol: CountingProtocol, interval_s: float) -> None:
    while True:
        await asyncio.sleep(interval_s)
        print(protocol.status(), file=sys.stderr, flush=True)


async def main(port: int) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    interval_s = float(os.environ.get("BARE_STATS_INTERVAL_S") or 0)
    with ThreadPoolExecutor(max_workers=2) as pool:
        counting = CountingProtocol(pool) if interval_s else None
        protocol = counting or BatchingProtocol(pool)
        transport, _ = await loop.create_datagram_endpoint(
            lambda: protocol, local_addr=("127.0.0.1", port)
        )
        set_receive_buffer(transport.get_extra_info("socket"), RCVBUF)
        print("Server menunggu...", flush=True)
        reporter = counting and asyncio.create_task(report(counting, interval_s))
        await stop.wait()
        transport.close()
    if counting is not None and reporter:
        reporter.cancel()
        print(counting.status(), file=sys.stderr, flush=True)


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1])))
