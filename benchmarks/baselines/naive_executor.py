"""The naive card design, for comparison: ``datagram_received`` calls ``run_in_executor`` once
per datagram, on asyncio's default loop and executor.

Usage: ``python -m benchmarks.baselines.naive_executor PORT``. Prints the seed's lines to stdout.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from typing import Any


def handle(data: bytes, address: tuple[str, int]) -> None:
    print(f"[{address[0]}] {data.decode('utf-8', 'replace')}")


class NaiveProtocol(asyncio.DatagramProtocol):
    def datagram_received(self, data: bytes, addr: Any) -> None:
        asyncio.get_running_loop().run_in_executor(None, handle, data, addr)


async def main(port: int) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    transport, _ = await loop.create_datagram_endpoint(
        NaiveProtocol, local_addr=("127.0.0.1", port)
    )
    print("Server menunggu...", flush=True)
    await stop.wait()
    transport.close()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
