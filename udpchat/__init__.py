"""udpchat: a fast, dependable UDP message server and client, wire-compatible with the seed."""

from udpchat.accounting import DeliveryTotals, SenderStats, Verdict
from udpchat.client import Client
from udpchat.output import LinePrinter, OutputFormat
from udpchat.server import Handler, Message, Server, ServerConfig
from udpchat.stats import DropReason, LatencyHistogram, StatsSnapshot
from udpchat.wire import format_line, format_message, parse_text, sanitize

__all__ = [
    "Client",
    "DeliveryTotals",
    "DropReason",
    "Handler",
    "LatencyHistogram",
    "LinePrinter",
    "Message",
    "OutputFormat",
    "SenderStats",
    "Server",
    "ServerConfig",
    "StatsSnapshot",
    "Verdict",
    "format_line",
    "format_message",
    "parse_text",
    "sanitize",
]
