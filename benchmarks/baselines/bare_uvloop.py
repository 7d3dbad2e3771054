"""The feature-less baseline udpchat must keep up with: uvloop, the datagrams of each loop
iteration handed as one batch to a 2-thread pool, formatted ``[ip] text`` and written with one
call per batch. No accounting, no counters, no escaping, no bounds.

Usage: ``python -m benchmarks.baselines.bare_uvloop PORT``. Prints the seed's lines to stdout.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import uvloop

from udpchat.sockets import set_receive_buffer

RCVBUF = 4 * 1024 * 1024
"""As much as udpchat asks for, so that both meet the same kernel."""


def handle(batch: list[tuple[bytes, Any]]) -> None:
    sys.stdout.write(
        "".join(f"[{address[0]}] {data.decode('utf-8', 'replace')}\n" for data, address in batch)
    )
    sys.stdout.flush()


class BatchingProtocol(asyncio.DatagramProtocol):
    def __init__(self, pool: ThreadPoolExecutor) -> None:
        self.pool = pool
        self.batch: list[tuple[bytes, Any]] = []
        self.loop = asyncio.get_running_loop()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.batch.append((data, addr))
        if len(self.batch) == 1:
            self.loop.call_soon(self.hand_over)

    def hand_over(self) -> None:
        batch, self.batch = self.batch, []
        self.pool.submit(handle, batch)


async def main(port: int) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    with ThreadPoolExecutor(max_workers=2) as pool:
        transport, _ = await loop.create_datagram_endpoint(
            lambda: BatchingProtocol(pool), local_addr=("127.0.0.1", port)
        )
        set_receive_buffer(transport.get_extra_info("socket"), RCVBUF)
        print("Server menunggu...", flush=True)
        await stop.wait()
        transport.close()


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1])))
