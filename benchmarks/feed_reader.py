"""``python -m benchmarks.feed_reader URL``: the web view's WebSocket feed read and dropped.

What a page costs the server, without the browser: ``make bench-web`` puts it beside ``serve
--web`` so that the ceiling with a page (the browser drawing on the same cores) can be told from
the ceiling with the server's side of a page alone. It says ``connected`` once the first message
has come, then reads until it is killed.
"""

from __future__ import annotations

import asyncio
import sys

import aiohttp


async def read(url: str) -> None:
    async with aiohttp.ClientSession() as session, session.ws_connect(url) as socket:
        await socket.receive()
        print("connected", flush=True)
        async for _ in socket:
            pass


if __name__ == "__main__":
    asyncio.run(read(sys.argv[1]))
