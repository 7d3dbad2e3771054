"""The pages connected to a view over WebSockets: bounded in number, each fed by its own
writer task, so that a page that reads slowly waits alone and never slows the server.

What waits for one page is bounded: the messages its writer has not yet handed to the socket
by ``max_client_buffer_bytes`` (a page that falls further behind is disconnected and counted;
reloading it starts afresh), aiohttp's buffer by :data:`WRITER_LIMIT_BYTES` (beyond it the
writer waits for the socket), and the kernel's send buffer by the same bound as the queue (Linux
doubles it), so that a page that stops reading is found out within seconds of updates rather
than after megabytes. The event loop only ever appends to a queue; no server work waits on a
browser.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
from collections import deque
from typing import Any

from aiohttp import web

from udpchat.counters import Tally, WebStats
from udpchat.logs import RateLimitedLog

logger = logging.getLogger("udpchat.web")


WRITER_LIMIT_BYTES = 64 * 1024
"""aiohttp's own write buffer per page before its writer waits for the socket to drain."""


def bound_send_buffer(request: web.Request, max_bytes: int) -> None:
    """Ask the kernel to hold at most ``max_bytes`` (doubled by Linux) unsent for the page."""
    transport = request.transport
    sock = None if transport is None else transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, max_bytes)


class Page:
    """One connected page: its WebSocket, what waits for it, and the task that writes it."""

    def __init__(self, socket: web.WebSocketResponse, request: web.Request, max_bytes: int):
        self.socket = socket
        self.remote = request.remote or "?"
        self._transport = request.transport
        self._max_bytes = max_bytes
        self._waiting: deque[str] = deque()
        self._waiting_bytes = 0
        self._wake = asyncio.Event()
        self._writer = asyncio.ensure_future(self._write())
        self.member: Any = None
        """The page's member of the room (:class:`~udpchat.web.room.PageMember`), once it
        joined."""

    def offer(self, text: str) -> bool:
        """Queue ``text`` for the page; False when that would pass the page's bound. A message
        to a page with nothing waiting always goes (the first, with the charts' history, may be
        larger than the bound)."""
        if self._waiting and self._waiting_bytes + len(text) > self._max_bytes:
            return False
        self._waiting.append(text)
        self._waiting_bytes += len(text)
        self._wake.set()
        return True

    async def _write(self) -> None:
        with contextlib.suppress(ConnectionError, RuntimeError):
            while True:
                await self._wake.wait()
                self._wake.clear()
                while self._waiting:
                    text = self._waiting.popleft()
                    self._waiting_bytes -= len(text)
                    await self.socket.send_str(text)

    def abort(self) -> None:
        """Cut the connection at once: a page that cannot keep up gets no goodbye to wait on."""
        if self._transport is not None:
            self._transport.abort()

    def close(self) -> None:
        self._writer.cancel()


class Pages:
    """Every page of a view, at most ``max_clients``; updates go to all, events to one."""

    def __init__(self, max_clients: int, max_client_buffer_bytes: int, tally: Tally[WebStats]):
        self._max_clients = max_clients
        self._max_bytes = max_client_buffer_bytes
        self._tally = tally
        self._pages: set[Page] = set()
        self._slow_log = RateLimitedLog(logger, level=logging.WARNING)

    def __len__(self) -> int:
        return len(self._pages)

    def __iter__(self) -> Any:
        return iter(list(self._pages))

    @property
    def full(self) -> bool:
        return len(self._pages) >= self._max_clients

    def open(self, socket: web.WebSocketResponse, request: web.Request) -> Page:
        page = Page(socket, request, self._max_bytes)
        self._pages.add(page)
        return page

    def close(self, page: Page) -> None:
        self._pages.discard(page)
        page.close()

    def send(self, page: Page, message: dict[str, Any] | str) -> None:
        """One message to one page; a page past its bound is dropped."""
        text = message if isinstance(message, str) else json.dumps(message)
        if page in self._pages and not page.offer(text):
            self._drop(page)

    def broadcast(self, message: dict[str, Any] | str) -> None:
        """One message to every page, encoded once."""
        text = message if isinstance(message, str) else json.dumps(message)
        for page in list(self._pages):
            self.send(page, text)

    def _drop(self, page: Page) -> None:
        self._pages.discard(page)
        self._tally.add("slow_clients_dropped")
        self._slow_log.record(
            f"web: dropped a page at {page.remote}: more than {self._max_bytes} bytes waited for it"
        )
        page.abort()
        page.close()
