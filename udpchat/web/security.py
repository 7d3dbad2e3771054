"""Who may use a browser view, and what a page may do: checked for every request.

- **Token**: a view bound beyond loopback always has one (:meth:`WebConfig.secured`); it comes
  in the URL once (``?token=``, then a cookie, as Jupyter does) or as ``Authorization: Bearer``
  for scripts. Without it: 403.
- **Host**: a loopback view without a token answers only to a loopback name (``localhost``,
  ``127.0.0.1``, ``[::1]``), so that a site whose name a visitor's browser was made to resolve
  to 127.0.0.1 (DNS rebinding) cannot read it.
- **Origin**: a WebSocket upgrade, and any request that changes something, from a page of
  another origin is refused (no cross-site WebSocket hijacking, no cross-site change).
- **Headers**: a Content-Security-Policy that allows scripts and styles only from the view's
  own files (the page has no inline script), no framing, no referrer (the token stays here).

- **Malformed requests**: what aiohttp cannot parse (a bad request line, a header past its
  bound, a TLS hello) gets its 400 from aiohttp, counted here and logged in one line at most
  every 10 s (:class:`ProtocolLog`), never a traceback per request.

Every refusal is counted in :class:`~udpchat.counters.WebStats` and logged rate-limited.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import hdrs, web
from aiohttp.http_exceptions import HttpProcessingError
from yarl import URL

from udpchat.counters import Tally, WebStats
from udpchat.logs import RateLimitedLog
from udpchat.web.config import WebConfig, is_loopback
from udpchat.wire import sanitize

logger = logging.getLogger("udpchat.web")

CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ]
)
"""Scripts and styles from the view's own files only: an inline script or handler, such as one
a hostile name might smuggle in, does not run."""
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
TOKEN_COOKIE = "udpchat-token"
"""The cookie's name, before the view's port: views on one host (several ports) keep theirs."""
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def cookie_name(request: web.Request) -> str:
    return f"{TOKEN_COOKIE}-{request.url.port}"


def _is_upgrade(request: web.Request) -> bool:
    return request.headers.get(hdrs.UPGRADE, "").lower() == "websocket"


def _presented_tokens(request: web.Request) -> list[str]:
    """Every token the request carries: the header's, the cookie's and the URL's."""
    presented = []
    scheme, _, credential = request.headers.get(hdrs.AUTHORIZATION, "").partition(" ")
    if scheme.lower() in ("bearer", "token") and credential:
        presented.append(credential.strip())
    for value in (request.cookies.get(cookie_name(request)), request.query.get("token")):
        if value:
            presented.append(value)
    return presented


class Guard:
    """The checks above, as an aiohttp middleware and a response hook for one view."""

    def __init__(self, config: WebConfig, tally: Tally[WebStats]) -> None:
        self._token = None if config.token is None else config.token.encode()
        self._check_host = config.token is None and config.loopback
        self._tally = tally
        self._log = RateLimitedLog(logger, level=logging.WARNING)

    def _refuse(self, request: web.Request, reason: str, why: str) -> web.Response:
        self._tally.add_reason("refused", reason)
        self._log.record(
            f"web: refused {request.method} {request.path} from {request.remote}: {why}"
        )
        return web.Response(status=403, text=f"{why}\n")

    def _token_ok(self, request: web.Request) -> bool:
        assert self._token is not None
        return any(
            hmac.compare_digest(presented.encode(), self._token)
            for presented in _presented_tokens(request)
        )

    def _foreign_origin(self, request: web.Request) -> bool:
        """A browser's request from a page of another origin (a missing Origin is a script's,
        which no hostile page can make a browser send)."""
        origin = request.headers.get(hdrs.ORIGIN)
        if origin is None:
            return False
        try:
            url = URL(origin)
        except ValueError:
            return True
        return (
            url.scheme not in ("http", "https")
            or url.host is None
            or (
                f"{url.host}:{url.port}".lower() != f"{request.url.host}:{request.url.port}".lower()
            )
        )

    def refusal(self, request: web.Request) -> web.Response | None:
        """The 403 a request gets, or None when it may go on."""
        if self._check_host and not is_loopback(request.url.host or ""):
            return self._refuse(request, "host", "this view answers to a loopback name only")
        if self._token is not None and not self._token_ok(request):
            return self._refuse(
                request, "token", "a token is needed: open the URL the server printed"
            )
        if (_is_upgrade(request) or request.method not in SAFE_METHODS) and self._foreign_origin(
            request
        ):
            return self._refuse(request, "origin", "a page of another origin may not do this")
        return None

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        refused = self.refusal(request)
        if refused is not None:
            return refused
        if self._token is not None and "token" in request.query and request.method == "GET":
            # The token came in the URL: keep it in a cookie, and take it out of the address
            # bar and the history.
            location = str(request.rel_url.without_query_params("token"))
            response = web.Response(status=303, headers={hdrs.LOCATION: location})
            response.set_cookie(
                cookie_name(request),
                self._token.decode(),
                httponly=True,
                samesite="Strict",
                path="/",
            )
            return response
        return await handler(request)

    @staticmethod
    async def add_headers(request: web.Request, response: web.StreamResponse) -> None:
        """An ``on_response_prepare`` hook: the security headers on every answer."""
        response.headers.update(SECURITY_HEADERS)


class ProtocolLog(logging.LoggerAdapter[logging.Logger]):
    """aiohttp's server log for one view (``AppRunner(logger=...)``): a request it could not
    parse, which anyone who reaches the port can send, is counted as ``refused`` by reason
    ``bad_request`` and logged in one line, rate-limited; anything else (a bug of ours) goes to
    aiohttp's log as it would."""

    def __init__(self, tally: Tally[WebStats]) -> None:
        super().__init__(logging.getLogger("aiohttp.server"))
        self._tally = tally
        self._malformed_log = RateLimitedLog(logger, level=logging.WARNING)

    def log(self, level: int, msg: object, *args: object, **kwargs: Any) -> None:
        error = kwargs.get("exc_info")
        if not isinstance(error, HttpProcessingError):
            super().log(level, msg, *args, **kwargs)
            return
        self._tally.add_reason("refused", "bad_request")
        source = f" from {args[0]}" if args else ""  # aiohttp's "... from %s", the peer
        self._malformed_log.record(
            f"web: refused a malformed request{source} (bad_request): "
            f"{sanitize(' '.join(error.message.split()))}"
        )
