"""``--web``: the room in a browser. :mod:`udpchat.web.config` says what to serve (pure, so that
a config can name it without importing aiohttp); :mod:`udpchat.web.app` serves it on the
server's own event loop; ``static/`` is the page, with its vendored chart library (uPlot, MIT,
``static/uplot/LICENSE``), so that it works on a lab network with no internet.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from udpchat.web.config import WebConfig

if TYPE_CHECKING:
    from udpchat.web.server_view import ServerView, Watched

__all__ = ["WebConfig", "start_web"]


async def start_web(config: WebConfig, service: Watched) -> ServerView:
    """The server's web view on this loop, watching ``service`` (a started
    :class:`~udpchat.server.Server` or :class:`~udpchat.supervisor.Supervisor`); raises
    :class:`~udpchat.web.config.WebStartError` saying why not."""
    from udpchat.web.server_view import ServerView  # noqa: PLC0415 - aiohttp only here

    view = ServerView(config, service)
    await view.start()
    return view
