"""``impair --web``: the link's page and its API, Toxiproxy's way: what each direction injected
over time, the settings and the seed, and changes while it runs.

``GET /api/impairment`` says the settings (each knob as its option writes it), the seed and the
latest changes; ``PUT /api/impairment`` with ``{"loss": "up:10%", "delay": "20ms"}`` sets the
knobs it names in the options' own grammar and keeps the others, from the next datagram on
(:meth:`~udpchat.impair.proxy.ImpairProxy.change`). A wrong value gets a 400 whose ``error``
is the command line's own line (``--delay: write a duration as 20ms, ...``). The page changes
the link through the same API.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from collections.abc import Coroutine
from dataclasses import fields
from typing import Any, Protocol

from aiohttp import web

from udpchat.counters import ImpairStats
from udpchat.impair.spec import Direction, Impairment, describe, option_flag, written
from udpchat.series import changes
from udpchat.settings import ConfigError
from udpchat.web.config import WebConfig
from udpchat.web.view import View

INJECTED = (
    ("forwarded", "forwarded"),
    ("dropped_loss", "lost"),
    ("dropped_rate", "rate-dropped"),
    ("dropped_full", "link full"),
    ("duplicated", "duplicated"),
    ("reordered", "reordered"),
    ("corrupted", "corrupted"),
)
"""The per-direction counters the charts show a second, with their names on the page."""


class Impaired(Protocol):
    """A started :class:`~udpchat.impair.proxy.ImpairProxy`."""

    seed: int
    changes: deque[dict[str, Any]]

    @property
    def address(self) -> tuple[str, int]: ...

    @property
    def impairments(self) -> dict[Direction, Impairment]: ...

    def change(self, request: dict[str, object]) -> dict[str, Any]: ...

    def stats(self) -> ImpairStats: ...


def knobs() -> list[dict[str, Any]]:
    """The settings the page offers, as the command line has them."""
    shown = []
    for each in fields(Impairment):
        flag, metavar, help, default = Impairment.option(each.name)
        shown.append({"name": flag[2:], "metavar": metavar, "help": help, "default": default})
    return shown


def chart_point(
    previous: ImpairStats, current: ImpairStats, elapsed_s: float, at_s: float
) -> dict[str, Any]:
    """What each direction injected a second over the interval, from the counters' changes."""
    delta = changes(previous, current)
    groups = {
        direction.value: {
            label: (delta.get(f"{name}.{direction.value}") or 0) / elapsed_s
            for name, label in INJECTED
        }
        for direction in Direction
    }
    return {"at_s": at_s, "groups": groups}


class ImpairView(View):
    """The link's page: charts per direction, its settings, its seed, and the form that
    changes them."""

    page_file = "impair.html"

    def __init__(self, config: WebConfig, proxy: Impaired) -> None:
        super().__init__(config)
        self._proxy = proxy

    def state(self) -> dict[str, Any]:
        """The settings (each knob by its option's name, as the option writes its value, per
        direction: what ``PUT`` takes back), the seed and the latest changes:
        ``GET /api/impairment``."""
        now = self._proxy.impairments
        return {
            "seed": self._proxy.seed,
            **{
                direction.value: {
                    option_flag(name)[2:]: value for name, value in written(now[direction]).items()
                }
                for direction in Direction
            },
            "described": {direction.value: describe(now[direction]) for direction in Direction},
            "changes": list(self._proxy.changes),
        }

    def hello(self) -> dict[str, Any]:
        host, port = self._proxy.address
        return {
            "type": "hello",
            "address": f"{host}:{port}",
            "knobs": knobs(),
            "charts": [
                {
                    "key": direction.value,
                    "title": f"{direction.value}: injected/s",
                    "unit": "/s",
                    "ranked": False,
                    "digits": 1,
                }
                for direction in Direction
            ],
            "history_s": self.config.history_s,
            "state": self.state(),
        }

    async def _sample_forever(self) -> None:
        previous, since = self._proxy.stats(), time.monotonic()
        while True:
            await asyncio.sleep(self.config.update_interval_s)
            current, now = self._proxy.stats(), time.monotonic()
            point = chart_point(previous, current, max(now - since, 1e-9), time.time())
            previous, since = current, now
            self.keep(json.dumps(point))
            if len(self.pages):
                self.pages.broadcast({"type": "update", "point": point})

    def background(self) -> list[Coroutine[Any, Any, None]]:
        return [self._sample_forever()]

    def add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_get("/api/impairment", self._get)
        router.add_put("/api/impairment", self._put)

    async def _get(self, request: web.Request) -> web.Response:
        return web.json_response(self.state())

    async def _put(self, request: web.Request) -> web.Response:
        """A change, in the options' grammar; 400 with the command line's line when wrong."""
        if request.content_type != "application/json":
            return self._refused(415, "send the change as JSON (Content-Type: application/json)")
        try:
            document = json.loads(await request.text())
        except ValueError:
            return self._refused(400, 'not JSON: send {"loss": "up:10%", "delay": "20ms"}')
        if not isinstance(document, dict):
            return self._refused(400, 'send a JSON object: {"loss": "up:10%"}')
        try:
            change = self._proxy.change(document)
        except ConfigError as error:
            return self._refused(400, error.describe(option_flag))
        self.pages.broadcast({"type": "state", "state": self.state()})
        return web.json_response({**self.state(), "change": change})

    def _refused(self, status: int, message: str) -> web.Response:
        """A change refused: counted, and said in the command line's words."""
        self.tally.add_reason("posts_refused", "bad_change")
        return web.json_response({"error": message}, status=status)


async def start_impair_view(config: WebConfig, proxy: Impaired) -> ImpairView:
    """The link's page on this loop; :class:`~udpchat.web.config.WebStartError` says why not."""
    view = ImpairView(config, proxy)
    await view.start()
    return view
