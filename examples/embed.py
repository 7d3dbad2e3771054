"""Embedding udpchat in an asyncio app: a server with its own handler, and a client sending to it.

Run: python examples/embed.py
"""

from __future__ import annotations

import asyncio
import threading

import udpchat

COUNT = 3


async def main() -> None:
    done = asyncio.Event()
    loop = asyncio.get_running_loop()
    seen: list[udpchat.Message] = []

    def on_message(message: udpchat.Message) -> None:
        # Runs in a pool thread: keep the loop free, hand results back thread-safely.
        seen.append(message)
        print(f"handled {message.username} #{message.counter} in {threading.current_thread().name}")
        if len(seen) == COUNT:
            loop.call_soon_threadsafe(done.set)

    config = udpchat.ServerConfig(host="127.0.0.1", port=0)
    async with udpchat.Server(config, on_message) as server:
        async with udpchat.Client(*server.address) as client:
            await client.send_every("embedded", interval_s=0.1, count=COUNT)
        await asyncio.wait_for(done.wait(), timeout=5)
    stats = server.stats()  # read after the server stopped: final, every message counted
    print(f"received={stats.received} handled={stats.handled}")


if __name__ == "__main__":
    asyncio.run(main())
