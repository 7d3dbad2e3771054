"""udpchat: a fast, dependable UDP message server and client, wire-compatible with the seed."""

from importlib.metadata import version

from udpchat.accounting import DeliveryTotals, SenderStats, Verdict
from udpchat.bus import BusStats, BusUnavailableError
from udpchat.client import Client, JoinError
from udpchat.output import LinePrinter, OutputFormat
from udpchat.pipeline import Batch, BatchHandler, Flushable, OutputError
from udpchat.relay import RelayStats
from udpchat.server import Handler, Message, MetricsStartError, Server, ServerConfig
from udpchat.stats import DropReason, LatencyHistogram, StatsSnapshot
from udpchat.supervisor import Supervisor, SupervisorResult
from udpchat.wire import ParsedText, TextProblem, format_line, format_message, parse_text, sanitize

__version__ = version("udpchat")
"""From the installed package's metadata, so that it cannot disagree with pyproject.toml."""

__all__ = [
    "Batch",
    "BatchHandler",
    "BusStats",
    "BusUnavailableError",
    "Client",
    "DeliveryTotals",
    "DropReason",
    "Flushable",
    "Handler",
    "JoinError",
    "LatencyHistogram",
    "LinePrinter",
    "Message",
    "MetricsStartError",
    "OutputError",
    "OutputFormat",
    "ParsedText",
    "RelayStats",
    "SenderStats",
    "Server",
    "ServerConfig",
    "StatsSnapshot",
    "Supervisor",
    "SupervisorResult",
    "TextProblem",
    "Verdict",
    "__version__",
    "format_line",
    "format_message",
    "parse_text",
    "sanitize",
]
