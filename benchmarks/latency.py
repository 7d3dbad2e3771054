"""Latency from ``sendto`` to the start of the per-message handler, at a steady rate.

One process, one clock: a sender thread stamps ``time.perf_counter()`` before each send, and the
handler (in a pool worker) stamps it again on entry. Usage:
``python -m benchmarks.latency [--rate 10000] [--duration 3]``.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import time

from udpchat import Message, Server, ServerConfig
from udpchat.eventloop import LoopChoice, run_coroutine


def send_steadily(address: tuple[str, int], rate: float, count: int, stamps: list[float]) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect(address)
        start = time.perf_counter()
        for counter in range(1, count + 1):
            delay = start + counter / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)  # releases the GIL: a spinning sender would starve the server
            stamps[counter - 1] = time.perf_counter()
            sock.send(b"latency: pesan ke-%d" % counter)


async def measure(rate: float, duration_s: float) -> list[float]:
    count = int(rate * duration_s)
    stamps = [0.0] * count
    latencies: list[float] = []
    done = asyncio.Event()
    loop = asyncio.get_running_loop()

    def handler(message: Message) -> None:
        latencies.append(time.perf_counter() - stamps[(message.counter or 1) - 1])
        if len(latencies) == count:
            loop.call_soon_threadsafe(done.set)

    async with Server(ServerConfig(host="127.0.0.1", port=0), handler) as server:
        await asyncio.to_thread(send_steadily, server.address, rate, count, stamps)
        try:
            await asyncio.wait_for(done.wait(), timeout=10)
        except TimeoutError:
            raise SystemExit(f"not every message was handled: {server.stats()}") from None
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rate", type=float, default=10_000)
    parser.add_argument("--duration", type=float, default=3.0)
    args = parser.parse_args()
    latencies = sorted(run_coroutine(measure(args.rate, args.duration), LoopChoice.AUTO))
    percentiles = statistics.quantiles(latencies, n=100)
    print(
        f"latency sendto -> handler at {args.rate:,.0f} msg/s over {len(latencies):,} messages: "
        f"p50 {percentiles[49] * 1e6:.0f} us, p99 {percentiles[98] * 1e6:.0f} us, "
        f"max {latencies[-1] * 1e6:.0f} us"
    )


if __name__ == "__main__":
    main()
