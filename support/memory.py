"""What one queued datagram costs a server, measured: the memory bound's queue term is checked
against it by the tests, and ``make bench-memory`` reports it."""

from __future__ import annotations

import socket
import threading
import tracemalloc

from support.waiting import eventually
from udpchat.handlers import Message
from udpchat.server import Server, ServerConfig

COST_DATAGRAMS = 20_000
COST_STEP = 500
"""Datagrams sent between two looks at the queue, so that none is dropped for lack of room in
the socket's buffer."""
READY_TIMEOUT_S = 30.0


async def queued_datagram_bytes(
    server_host: str, client_host: str, size: int, count: int = COST_DATAGRAMS
) -> float:
    """What one queued datagram of ``size`` bytes costs, as ``tracemalloc`` counts it: a
    server whose one worker is held by the first datagram queues the next ones, which are
    sent a few hundred at a time, each step waiting until the server has them all."""
    release = threading.Event()

    def hold(message: Message) -> None:
        release.wait()

    config = ServerConfig(
        host=server_host, port=0, workers=1, queue_size=count + 1, max_datagram_size=size
    )
    family = socket.AF_INET6 if ":" in client_host else socket.AF_INET
    payload = b"x" * size

    async def queued_at_least(datagrams: int) -> None:
        await eventually(
            lambda: server.stats(include_senders=False).queue_depth >= datagrams,
            READY_TIMEOUT_S,
            what=f"the server queues {datagrams} datagrams",
        )

    async with Server(config, hold) as server:
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.connect((client_host, server.address[1]))
            sock.send(payload)  # the worker takes this one and is held
            await queued_at_least(1)
            tracemalloc.start()
            try:
                before = tracemalloc.get_traced_memory()[0]
                for sent in range(1, count + 1):
                    sock.send(payload)
                    if sent % COST_STEP == 0:
                        await queued_at_least(1 + sent)
                after = tracemalloc.get_traced_memory()[0]
            finally:
                tracemalloc.stop()
                release.set()
    return (after - before) / count
