"""An asyncio app with udpchat's chat room and metrics endpoint, from the config alone, served
until the app asks it to stop.

Run: python examples/room.py
"""

from __future__ import annotations

import asyncio
import urllib.request

import udpchat


def scrape(address: tuple[str, int]) -> list[str]:
    with urllib.request.urlopen(f"http://{address[0]}:{address[1]}/metrics") as answer:
        lines: list[str] = answer.read().decode().splitlines()
    return [line for line in lines if line.startswith("udpchat_relay_members")]


async def main() -> None:
    config = udpchat.ServerConfig(host="127.0.0.1", port=0, relay=True, metrics_port=0)
    server = udpchat.Server(config)
    await server.start()  # bound: the address and the metrics address are known
    serving = asyncio.create_task(server.serve())
    arrived = asyncio.Event()

    def on_text(text: str) -> None:  # ana's client: another member's message
        print(f"ana got: {text}")
        arrived.set()

    async with udpchat.Client(*server.address) as ana, udpchat.Client(*server.address) as budi:
        await ana.join_room(on_text)
        await budi.join_room(lambda text: None)
        budi.send("budi: halo")
        await asyncio.wait_for(arrived.wait(), timeout=5)
    assert server.metrics_address is not None
    print(*await asyncio.to_thread(scrape, server.metrics_address))
    server.request_stop()
    drained = await serving
    relay = server.stats().relay
    assert relay is not None
    print(f"drained={drained} joins={relay.joins} relayed_datagrams={relay.relayed_datagrams}")


if __name__ == "__main__":
    asyncio.run(main())
