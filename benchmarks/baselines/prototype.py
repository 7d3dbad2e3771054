"""The strongest Python peer udpchat is held against: a feature-less 40-line uvloop prototype.

Each loop iteration's datagrams go as one batch to a 2-thread pool, which writes the seed's
``[ip] text`` lines with one call per batch and no flush (the stream's own buffer decides).
No accounting, no counters, no escaping, no bounds, no drain: what a careful person writes in
an afternoon. Usage: ``python -m benchmarks.baselines.prototype PORT``.
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


def write(batch: list[tuple[bytes, Any]]) -> None:
    sys.stdout.write(
        "".join(f"[{ip}] {data.decode(errors='replace')}\n" for data, (ip, _) in batch)
    )


class Prototype(asyncio.DatagramProtocol):
    handle = staticmethod(write)

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
        self.pool.submit(self.handle, batch)


async def main(port: int) -> None:
    loop, stop = asyncio.get_running_loop(), asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    with ThreadPoolExecutor(max_workers=2) as pool:
        transport, _ = await loop.create_datagram_endpoint(
            lambda: Prototype(pool), local_addr=("127.0.0.1", port)
        )
        set_receive_buffer(transport.get_extra_info("socket"), RCVBUF)
        print("Server menunggu...", flush=True)
        await stop.wait()
        transport.close()
    sys.stdout.flush()


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1])))
