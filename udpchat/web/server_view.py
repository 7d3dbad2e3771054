"""``serve --web``: the server's page. Every update interval it sends each page the sender
table (the dashboard's columns, in every one of its orders) and the totals; with ``--relay``
it shows the room's lines as the view's own member receives them, and lets a page join and
post as a member of its own (:mod:`udpchat.web.room`).

It watches a :class:`Watched` service: a :class:`~udpchat.server.Server`, or the
:class:`~udpchat.supervisor.Supervisor` of several processes, whose children's latest reports
it shows added up, each sender with its process.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Coroutine, Sequence
from typing import Any, Protocol

from aiohttp import web

from udpchat.counters import StatsSnapshot, add_up
from udpchat.report import idle_after_s
from udpchat.series import Sampler
from udpchat.web import feed
from udpchat.web.config import WebConfig, member_target
from udpchat.web.pages import Page
from udpchat.web.room import PageMember, PostRefusedError, RoomWatch
from udpchat.web.view import MalformedRequestError, View
from udpchat.wire import sender_address

logger = logging.getLogger("udpchat.web")


class WatchedConfig(Protocol):
    """What the view reads of the service's config."""

    @property
    def relay(self) -> bool: ...

    @property
    def max_datagram_size(self) -> int: ...

    @property
    def peer_timeout_s(self) -> float: ...


class Watched(Protocol):
    """A started service: a :class:`~udpchat.server.Server` or a
    :class:`~udpchat.supervisor.Supervisor`."""

    @property
    def config(self) -> WatchedConfig: ...

    @property
    def address(self) -> tuple[str, int]: ...

    def per_process(self) -> tuple[StatsSnapshot, ...]: ...


class ServerView(View):
    """The server's page: its senders, its charts and its room."""

    page_file = "index.html"

    def __init__(self, config: WebConfig, service: Watched) -> None:
        super().__init__(config)
        self._service = service
        service_config = service.config
        self._relay = service_config.relay
        self._max_text_bytes = service_config.max_datagram_size
        self._idle_after_s = idle_after_s(service_config.relay, service_config.peer_timeout_s)
        self._target = member_target(service.address)
        self._watch = RoomWatch(self._target, self.pages.broadcast) if self._relay else None
        self._started_s = time.monotonic()
        first = service.per_process()
        self._sampler = Sampler(add_up(first), top_senders=feed.CHART_SENDERS, max_events=0)

    def _update(self, per_process: Sequence[StatsSnapshot]) -> dict[str, Any]:
        """The sender table and the totals now."""
        return {
            "type": "update",
            "table": feed.sender_table(per_process, time.time(), self._idle_after_s),
            "totals": feed.totals(per_process),
            "point": None,
        }

    def _sample(self, per_process: Sequence[StatsSnapshot], pages: bool) -> tuple[str, str | None]:
        """The interval's chart point, and the update for the pages open now (None when there
        are none: ranking senders takes a while), both encoded. Off the loop."""
        interval = self._sampler.sample(add_up(per_process), time.monotonic() - self._started_s)
        point = feed.chart_point(interval, time.time())
        update = json.dumps({**self._update(per_process), "point": point}) if pages else None
        return json.dumps(point), update

    async def _sample_forever(self) -> None:
        """Every update interval: a chart point (kept while no page is open, so that one that
        opens later sees the last minutes), and the update to every page, built and encoded
        off the loop, once for all of them."""
        while True:
            await asyncio.sleep(self.config.update_interval_s)
            per_process = self._service.per_process()
            point, update = await asyncio.to_thread(
                self._sample, per_process, bool(len(self.pages))
            )
            self.keep(point)
            if update is not None:
                self.pages.broadcast(update)

    def background(self) -> list[Coroutine[Any, Any, None]]:
        work = [self._sample_forever()]
        if self._watch is not None:
            work.append(self._watch.run())
        return work

    def hello(self) -> dict[str, Any]:
        return {
            "type": "hello",
            "address": sender_address(*self._service.address),
            "columns": feed.columns(),
            "sorts": feed.sort_keys(),
            "relay": self._relay,
            "room": None if self._watch is None else list(self._watch.lines),
            "watch": None if self._watch is None else self._watch.state,
            "max_text_bytes": self._max_text_bytes,
            "update_interval_s": self.config.update_interval_s,
            "history_s": self.config.history_s,
            "charts": feed.CHARTS,
            "update": self._update(self._service.per_process()),
        }

    def add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_get("/api/state", self._state)

    async def _state(self, request: web.Request) -> web.Response:
        """The latest update as JSON: what the page shows, for scripts."""
        return web.json_response(self._update(self._service.per_process()))

    def members(self) -> int:
        return sum(page.member is not None for page in self.pages)

    async def on_message(self, page: Page, message: dict[str, Any]) -> None:
        kind = message.get("type")
        try:
            if kind == "join":
                await self._join(page, _text(message, "username"))
            elif kind == "post":
                self._post(page, _text(message, "text"))
            elif kind == "leave":
                self._leave(page)
            else:
                raise MalformedRequestError(f"unknown request {kind!r}")
        except PostRefusedError as refused:
            self.refuse(page, refused.reason, str(refused))

    async def _join(self, page: Page, username: str) -> None:
        if not self._relay:
            raise PostRefusedError("not_in_room", "this server has no room (start it with --relay)")
        if page.member is not None:
            raise PostRefusedError("malformed", f"already in the room as {page.member.username}")
        member = await PageMember.join(
            self._target, username, self._max_text_bytes, lambda event: self.pages.send(page, event)
        )
        if page not in set(self.pages):  # the page left while its member joined
            member.close()
            return
        page.member = member
        self.pages.send(
            page,
            {"type": "member", "username": member.username, "address": member.address},
        )

    def _post(self, page: Page, line: str) -> None:
        member: PageMember | None = page.member
        if member is None:
            raise PostRefusedError("not_in_room", "join the room first")
        member.post(line)
        self.tally.add("posts")

    def _leave(self, page: Page) -> None:
        member: PageMember | None = page.member
        if member is not None:
            member.close()
            page.member = None
            self.pages.send(page, {"type": "member", "username": None, "address": None})

    def on_close(self, page: Page) -> None:
        self._leave(page)

    def on_stop(self) -> None:
        if self._watch is not None:
            self._watch.close()


def _text(message: dict[str, Any], key: str) -> str:
    value = message.get(key)
    if not isinstance(value, str):
        raise MalformedRequestError(f"{key!r} must be a string")
    return value
