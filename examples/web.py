"""An aiohttp application of your own with udpchat's web view mounted under /udpchat/, on the
same event loop as the server and its room; a page's member joins and posts through it.

Run: python examples/web.py
"""

from __future__ import annotations

import asyncio

import aiohttp
from aiohttp import web

import udpchat
from udpchat.web.config import WebConfig
from udpchat.web.server_view import ServerView


async def own_page(request: web.Request) -> web.Response:
    return web.Response(text="the application's own page")


async def main() -> None:
    config = udpchat.ServerConfig(host="127.0.0.1", port=0, relay=True)
    async with udpchat.Server(config) as server:
        app = web.Application()
        app.router.add_get("/", own_page)
        app.add_subapp("/udpchat/", ServerView(WebConfig(), server).application())
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        base = f"http://127.0.0.1:{runner.addresses[0][1]}"
        try:
            async with aiohttp.ClientSession() as session:
                async with session.get(f"{base}/") as answer:
                    print(await answer.text())
                async with session.ws_connect(f"{base}/udpchat/ws") as page:
                    hello = await page.receive_json()
                    print(f"page: relay={hello['relay']} columns={len(hello['columns'])}")
                    await page.send_json({"type": "join", "username": "budi"})
                    await page.send_json({"type": "post", "text": "halo dari web"})
                    async for frame in page:  # until the room confirms the line
                        message = frame.json()
                        if message["type"] == "sent":
                            print(f"sent: {message['text']}")
                            break
        finally:
            await runner.cleanup()
    relay = server.stats().relay
    assert relay is not None
    print(f"joins={relay.joins} confirmations={relay.confirmations}")


if __name__ == "__main__":
    asyncio.run(main())
