"""udpchat: a fast, dependable UDP message server and client, wire-compatible with the seed."""

from udpchat.client import Client
from udpchat.server import Handler, LinePrinter, Message, Server, ServerConfig
from udpchat.stats import DropReason, StatsSnapshot
from udpchat.wire import format_line, format_message, parse_text, sanitize

__all__ = [
    "Client",
    "DropReason",
    "Handler",
    "LinePrinter",
    "Message",
    "Server",
    "ServerConfig",
    "StatsSnapshot",
    "format_line",
    "format_message",
    "parse_text",
    "sanitize",
]
