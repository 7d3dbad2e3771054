"""``udpchat impair``: a UDP proxy that puts a lossy, slow, jittery, reordering link between the
clients and a server, so that the delivery accounting has something to count on loopback.

Each direction is one :class:`Link`: ``up`` carries every client's datagrams to the server,
``down`` the server's answers back. The modules follow the datagrams: :mod:`~udpchat.impair.spec`
says what to do to them (the options' grammar, :class:`Impairment`, :class:`ProxyConfig`),
:mod:`~udpchat.impair.link` decides each one's fate (pure and seeded: no I/O, no clock),
:mod:`~udpchat.impair.proxy` moves them (the sockets, the event loop, :class:`ImpairProxy`).
"""

from udpchat.impair.link import Link
from udpchat.impair.proxy import ImpairProxy, ProxyResult, TargetUnresolvedError, run_proxy
from udpchat.impair.spec import (
    Direction,
    Impairment,
    ProxyConfig,
    RateLimit,
    RateUnit,
    describe,
    impairments,
    proxy_config,
)

__all__ = [
    "Direction",
    "ImpairProxy",
    "Impairment",
    "Link",
    "ProxyConfig",
    "ProxyResult",
    "RateLimit",
    "RateUnit",
    "TargetUnresolvedError",
    "describe",
    "impairments",
    "proxy_config",
    "run_proxy",
]
