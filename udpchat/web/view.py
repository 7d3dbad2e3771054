"""What every browser view has in common: one aiohttp application on the server's own event
loop with the page, its static files, its WebSocket and the :class:`~udpchat.web.security.Guard`
around them, bounded pages (:class:`~udpchat.web.pages.Pages`), and its own listener when it
is not mounted in another application.

A view is embeddable: :meth:`View.application` is an ``aiohttp.web.Application`` that an
asyncio program mounts in its own (``app.add_subapp("/udpchat/", view.application())``); the
page's links are relative, so it works under any prefix.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
from collections import deque
from collections.abc import AsyncIterator, Coroutine
from pathlib import Path
from typing import Any, ClassVar

from aiohttp import WSMsgType, web

from udpchat.counters import Tally, WebStats
from udpchat.logs import RateLimitedLog
from udpchat.web.config import WebConfig, WebStartError
from udpchat.web.pages import WRITER_LIMIT_BYTES, Page, Pages, bound_send_buffer
from udpchat.web.security import Guard, ProtocolLog

logger = logging.getLogger("udpchat.web")

STATIC = Path(__file__).with_name("static")
MAX_PAGE_MESSAGE_BYTES = 8192
"""A page's message to the view (a join, a line, a change), at most: a datagram and its JSON."""
MAX_REQUEST_BYTES = 64 * 1024
"""An HTTP request's body, at most."""
HEARTBEAT_S = 30.0
"""WebSocket pings: a page whose machine vanished is noticed within a minute."""


class MalformedRequestError(ValueError):
    """A page sent what no page of ours sends."""


class View:
    """A browser view; subclasses say what the page shows and what it may ask."""

    page_file: ClassVar[str] = "index.html"

    def __init__(self, config: WebConfig) -> None:
        self.config = config.secured()
        self.tally = Tally(WebStats)
        self._guard = Guard(self.config, self.tally)
        self.pages = Pages(self.config.max_clients, self.config.max_client_buffer_bytes, self.tally)
        self._runner: web.AppRunner | None = None
        self._refusal_log = RateLimitedLog(logger, level=logging.WARNING)
        self.history: deque[str] = deque(
            maxlen=math.ceil(self.config.history_s / self.config.update_interval_s)
        )
        """The chart points kept for a page that opens late, each encoded once as it is taken
        (:meth:`keep`): the hello carries them without encoding them again."""

    # What a view says and does; subclasses fill these in.

    def hello(self) -> dict[str, Any]:
        """The first message to a page: what it needs to lay itself out (the view adds the
        ``points`` of its :attr:`history`)."""
        return {"type": "hello"}

    async def on_message(self, page: Page, message: dict[str, Any]) -> None:
        """A page's request; raise :class:`MalformedRequestError` for what no page sends."""
        raise MalformedRequestError(f"unknown request {message.get('type')!r}")

    def on_close(self, page: Page) -> None:
        """The page left."""

    def on_stop(self) -> None:
        """The view stops: after its pages are gone."""

    def background(self) -> list[Coroutine[Any, Any, None]]:
        """What runs while the view serves (the updates, the room's watch)."""
        return []

    def add_routes(self, router: web.UrlDispatcher) -> None:
        """The view's own API routes."""

    def members(self) -> int:
        return 0

    # The machinery.

    def keep(self, point: str) -> None:
        """Keep a chart point, encoded as JSON (once, off the loop where it is large), for the
        pages that open later."""
        self.history.append(point)

    def _hello_text(self) -> str:
        """:meth:`hello` with the history spliced in as it was encoded: a page that opens
        late costs the loop the hello's own encoding only, not the minutes of points."""
        text = json.dumps(self.hello())
        return f'{text[:-1]}, "points": [{", ".join(self.history)}]}}'

    def stats(self) -> WebStats:
        return self.tally.snapshot(clients=len(self.pages), members=self.members())

    def application(self) -> web.Application:
        """The view as an aiohttp application: serve it, or mount it in your own."""
        app = web.Application(
            middlewares=[self._guard.middleware], client_max_size=MAX_REQUEST_BYTES
        )
        app.on_response_prepare.append(Guard.add_headers)
        app.router.add_get("/", self._index)
        app.router.add_get("/ws", self._socket)
        app.router.add_static("/static/", STATIC, follow_symlinks=False)
        self.add_routes(app.router)
        app.on_shutdown.append(self._close_pages)
        app.cleanup_ctx.append(self._running)
        return app

    async def _close_pages(self, app: web.Application) -> None:
        """Cut every page as the view stops, before aiohttp waits for their handlers to end
        (a second, then it cancels them): a stop stays within the drain timeout."""
        for page in list(self.pages):
            page.abort()
            self.pages.close(page)
            self.on_close(page)

    async def _running(self, app: web.Application) -> AsyncIterator[None]:
        tasks = [asyncio.ensure_future(work) for work in self.background()]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            self.on_stop()

    async def _index(self, request: web.Request) -> web.StreamResponse:
        return web.FileResponse(STATIC / self.page_file)

    async def _socket(self, request: web.Request) -> web.StreamResponse:
        if self.pages.full:
            self.tally.add_reason("refused", "full")
            self._refusal_log.record(
                f"web: refused a page from {request.remote}: "
                f"{self.config.max_clients} pages are connected (--web-max-clients)"
            )
            return web.Response(status=503, text="too many pages are open\n")
        socket = web.WebSocketResponse(
            max_msg_size=MAX_PAGE_MESSAGE_BYTES,
            heartbeat=HEARTBEAT_S,
            compress=False,
            writer_limit=WRITER_LIMIT_BYTES,
        )
        bound_send_buffer(request, self.config.max_client_buffer_bytes)
        await socket.prepare(request)
        page = self.pages.open(socket, request)
        self.pages.send(page, self._hello_text())
        try:
            async for frame in socket:
                if frame.type is WSMsgType.TEXT:
                    await self._request(page, frame.data)
                    continue
                # A binary frame, or one past MAX_PAGE_MESSAGE_BYTES (an ERROR that aiohttp
                # has answered by closing with 1009): no page of ours sends either.
                self.tally.add_reason("posts_refused", "malformed")
                if frame.type is WSMsgType.ERROR:
                    break
        finally:
            self.pages.close(page)
            self.on_close(page)
        return socket

    async def _request(self, page: Page, data: str) -> None:
        try:
            message = json.loads(data)
            if not isinstance(message, dict):
                raise MalformedRequestError("not a JSON object")
            await self.on_message(page, message)
        except (ValueError, TypeError) as error:  # JSON's errors and MalformedRequestError
            self.refuse(page, "malformed", f"not understood: {error}")

    def refuse(self, page: Page, reason: str, text: str) -> None:
        """Tell a page that its request was refused, and count why."""
        self.tally.add_reason("posts_refused", reason)
        self.pages.send(page, {"type": "refused", "reason": reason, "text": text})

    async def start(self) -> None:
        """Listen on the config's address; :class:`WebStartError` says why not."""
        runner = web.AppRunner(
            self.application(),
            access_log=None,
            handle_signals=False,
            shutdown_timeout=1.0,
            logger=ProtocolLog(self.tally),
        )
        await runner.setup()
        site = web.TCPSite(runner, self.config.host, self.config.port)
        try:
            await site.start()
        except OSError as error:
            await runner.cleanup()
            where = f"{self.config.host} port {self.config.port}"
            why = os.strerror(error.errno) if error.errno else str(error)
            raise WebStartError(
                error.errno, f"cannot serve the web view on {where}: {why}"
            ) from None
        self._runner = runner

    async def close(self) -> None:
        if self._runner is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner.cleanup()
            self._runner = None

    @property
    def address(self) -> tuple[str, int]:
        """The bound (host, port); with port 0 in the config, the one the OS chose."""
        if self._runner is None:
            raise RuntimeError("the web view is not started")
        host, port = self._runner.addresses[0][:2]
        return str(host), int(port)

    @property
    def url(self) -> str:
        """Where a browser opens the view, with its token when it has one."""
        host, port = self.address
        shown = f"[{host}]" if ":" in host else host
        token = "" if self.config.token is None else f"?token={self.config.token}"
        return f"http://{shown}:{port}/{token}"
