"""What a browser view serves, and on which address: checked when built, as every config is.

Pure (no aiohttp), so that :class:`~udpchat.server.ServerConfig` and the proxy's config can
carry a :class:`WebConfig` without loading the HTTP stack.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import secrets
from dataclasses import dataclass

from udpchat.settings import ConfigError, check_bounds, secret, setting
from udpchat.sockets import MAX_PORT

DEFAULT_WEB_HOST = "127.0.0.1"
"""Loopback by default: the page shows who talks to the server and lets a visitor post."""
DEFAULT_MAX_CLIENTS = 16
"""Pages connected at once, at most: a class on a projector, a few students posting."""
MAX_CLIENTS = 1024
DEFAULT_MAX_CLIENT_BUFFER_BYTES = 128 * 1024
"""Bytes of updates waiting for one page, at most (some tens of seconds of them): beyond it the
page is too slow to follow, and it is dropped rather than slow the server."""
DEFAULT_UPDATE_INTERVAL_S = 1.0
"""How often pages get the sender table and a chart point: at least once a second."""
DEFAULT_HISTORY_S = 900.0
"""Seconds of chart points kept for a page that opens late: the longest window it offers."""
TOKEN_PATTERN = re.compile(r"[A-Za-z0-9._~-]{16,128}\Z")
"""A token as it rides in a URL unescaped; long enough not to be guessed."""
TOKEN_BYTES = 24
"""Random bytes in a generated token (32 characters in URL-safe base64)."""


def member_target(address: tuple[str, int]) -> tuple[str, int]:
    """Where a member on this machine sends: the server's own address, or loopback when the
    server listens on every address."""
    host, port = address[0], address[1]
    if host in ("0.0.0.0", ""):
        return "127.0.0.1", port
    if host == "::":
        return "::1", port
    return host, port


class WebStartError(OSError):
    """A view could not listen on its address (the message says which, and why)."""


class WebAddressError(ValueError):
    """``--web`` got something that is not ``[HOST:]PORT``."""


def parse_web_address(text: str, default_host: str = DEFAULT_WEB_HOST) -> tuple[str, int]:
    """``8080``, ``0.0.0.0:8080`` or ``[::1]:0`` as (host, port); the host defaults to
    loopback."""
    host, separator, port_text = text.strip().rpartition(":")
    if not separator:
        host = default_host
    elif host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif not host or ":" in host:
        raise WebAddressError(
            f"'{text}' is not [HOST:]PORT (write an IPv6 address in brackets: [::1]:8080)"
        )
    if not port_text.isdigit() or int(port_text) > MAX_PORT:
        raise WebAddressError(f"'{text}' is not [HOST:]PORT: the port must be 0 to {MAX_PORT}")
    return host, int(port_text)


def is_loopback(host: str) -> bool:
    """An address only this machine reaches: ``127.0.0.0/8``, ``::1`` or ``localhost``."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True, slots=True)
class WebConfig:
    """A browser view: where it listens, who may open it, and its bounds."""

    host: str = DEFAULT_WEB_HOST
    port: int = setting(0, minimum=0, maximum=MAX_PORT)
    """TCP port; 0 picks a free one (the URL is logged)."""
    token: str | None = secret()
    """What a visitor must present (in the URL, then a cookie, or ``Authorization: Bearer``).
    Bound beyond loopback, a view always has one: generated when not given (:meth:`secured`)."""
    max_clients: int = setting(DEFAULT_MAX_CLIENTS, minimum=1, maximum=MAX_CLIENTS)
    """Pages connected at once (WebSockets); more are refused with 503 and counted."""
    max_client_buffer_bytes: int = setting(DEFAULT_MAX_CLIENT_BUFFER_BYTES, minimum=4096)
    """What may wait for one page; a page that falls further behind is dropped and counted."""
    update_interval_s: float = setting(DEFAULT_UPDATE_INTERVAL_S, minimum=0.02, maximum=1.0)
    history_s: float = setting(DEFAULT_HISTORY_S, minimum=10, maximum=3600)

    def __post_init__(self) -> None:
        check_bounds(self)
        if not self.host:
            raise ConfigError("host", "must not be empty")
        if self.token is not None and not TOKEN_PATTERN.match(self.token):
            raise ConfigError(
                "token", "must be 16 to 128 letters, digits or . _ ~ - (what a URL carries as is)"
            )

    @property
    def loopback(self) -> bool:
        return is_loopback(self.host)

    def secured(self) -> WebConfig:
        """This config with the token it needs: its own, or a new random one when it is bound
        beyond loopback without one (as Jupyter does)."""
        if self.token is not None or self.loopback:
            return self
        return dataclasses.replace(self, token=secrets.token_urlsafe(TOKEN_BYTES))
