"""udpchat: a fast, dependable UDP message server and client, wire-compatible with the seed.

The public API is imported lazily (PEP 562): ``import udpchat`` loads none of the heavier
modules, so that the command line can hold stop signals before anything slow runs, and an
application pays only for what it uses.
"""

from __future__ import annotations

import importlib

TYPE_CHECKING = False
"""Not ``typing.TYPE_CHECKING``: importing typing (and re, enum) would cost the start-up what
the stop signals must not wait for."""

_EXPORTS = {
    "accounting": ("Verdict",),
    "bus": ("BusUnavailableError",),
    "client": ("Client", "JoinError"),
    "counters": (
        "AdmissionStats",
        "BusStats",
        "DeliveryTotals",
        "DropReason",
        "EndpointStats",
        "ImpairStats",
        "LatencyHistogram",
        "RelayStats",
        "SenderStats",
        "StatsSnapshot",
    ),
    "handlers": ("Batch", "BatchHandler", "Flushable", "Handler", "Message", "OutputError"),
    "impair": ("ImpairProxy", "Impairment", "ProxyConfig"),
    "metrics": ("MetricsStartError",),
    "output": ("LinePrinter", "OutputFormat"),
    "runner": ("run",),
    "server": ("ServeResult", "Server", "ServerConfig", "Service"),
    "settings": ("ConfigError",),
    "supervisor": ("Supervisor",),
    "wire": (
        "ParsedText",
        "TextProblem",
        "format_line",
        "format_message",
        "parse_text",
        "sanitize",
    ),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted([*_MODULE_OF, "__version__"])  # noqa: PLE0605 - one list: _EXPORTS


def __getattr__(name: str) -> Any:
    if name == "__version__":  # from the installed metadata: it cannot disagree with pyproject
        value: Any = importlib.import_module("importlib.metadata").version("udpchat")
    elif name in _MODULE_OF:
        value = getattr(importlib.import_module(f"udpchat.{_MODULE_OF[name]}"), name)
    else:
        raise AttributeError(f"module 'udpchat' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__


if TYPE_CHECKING:
    from typing import Any

    __version__: str
    from udpchat.accounting import Verdict as Verdict
    from udpchat.bus import BusUnavailableError as BusUnavailableError
    from udpchat.client import (
        Client as Client,
    )
    from udpchat.client import (
        JoinError as JoinError,
    )
    from udpchat.counters import (
        AdmissionStats as AdmissionStats,
    )
    from udpchat.counters import (
        BusStats as BusStats,
    )
    from udpchat.counters import (
        DeliveryTotals as DeliveryTotals,
    )
    from udpchat.counters import (
        DropReason as DropReason,
    )
    from udpchat.counters import (
        EndpointStats as EndpointStats,
    )
    from udpchat.counters import (
        ImpairStats as ImpairStats,
    )
    from udpchat.counters import (
        LatencyHistogram as LatencyHistogram,
    )
    from udpchat.counters import (
        RelayStats as RelayStats,
    )
    from udpchat.counters import (
        SenderStats as SenderStats,
    )
    from udpchat.counters import (
        StatsSnapshot as StatsSnapshot,
    )
    from udpchat.handlers import (
        Batch as Batch,
    )
    from udpchat.handlers import (
        BatchHandler as BatchHandler,
    )
    from udpchat.handlers import (
        Flushable as Flushable,
    )
    from udpchat.handlers import (
        Handler as Handler,
    )
    from udpchat.handlers import (
        Message as Message,
    )
    from udpchat.handlers import (
        OutputError as OutputError,
    )
    from udpchat.impair import Impairment as Impairment
    from udpchat.impair import ImpairProxy as ImpairProxy
    from udpchat.impair import ProxyConfig as ProxyConfig
    from udpchat.metrics import MetricsStartError as MetricsStartError
    from udpchat.output import (
        LinePrinter as LinePrinter,
    )
    from udpchat.output import (
        OutputFormat as OutputFormat,
    )
    from udpchat.runner import run as run
    from udpchat.server import (
        Server as Server,
    )
    from udpchat.server import (
        ServerConfig as ServerConfig,
    )
    from udpchat.server import (
        ServeResult as ServeResult,
    )
    from udpchat.server import (
        Service as Service,
    )
    from udpchat.settings import ConfigError as ConfigError
    from udpchat.supervisor import Supervisor as Supervisor
    from udpchat.wire import (
        ParsedText as ParsedText,
    )
    from udpchat.wire import (
        TextProblem as TextProblem,
    )
    from udpchat.wire import (
        format_line as format_line,
    )
    from udpchat.wire import (
        format_message as format_message,
    )
    from udpchat.wire import (
        parse_text as parse_text,
    )
    from udpchat.wire import (
        sanitize as sanitize,
    )
