"""The ``udpchat`` command line: options map to config fields; the logic lives in the library."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import errno
import functools
import logging
import os
import re
import socket
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, BinaryIO, NoReturn, TextIO, TypeVar

import typer
import typer.core
from typer._click import Context, HelpFormatter
from typer._click.exceptions import BadParameter, NoSuchOption, UsageError
from typer._click.globals import get_current_context

from udpchat import __version__
from udpchat import client as client_module
from udpchat import plot as plot_module
from udpchat import record as record_module
from udpchat import server as server_module
from udpchat.accounting import DEFAULT_MAX_SENDERS
from udpchat.admission import DEFAULT_MAX_SOURCES, IPNetwork, parse_network
from udpchat.bus import DEFAULT_CONNECT_TIMEOUT_S, DEFAULT_ROOM, BusUnavailableError
from udpchat.chat import Conversation, Deliveries, converse, print_received, print_sent
from udpchat.client import Client, ClientConfig, JoinError, wait_for_answers
from udpchat.counters import ClientStats
from udpchat.echo import DEFAULT_ECHO_RATE_PER_S
from udpchat.eventloop import LoopChoice, LoopUnavailableError, run_coroutine
from udpchat.handlers import OutputError
from udpchat.impair import TargetUnresolvedError, profiles, run_proxy
from udpchat.impair.spec import (
    DEFAULT_IDLE_TIMEOUT_S,
    DEFAULT_LISTEN,
    DEFAULT_MAX_CLIENTS,
    DEFAULT_MAX_QUEUE_BYTES,
    DEFAULT_TARGET,
    NO_SEED,
    Impairment,
    ProxyConfig,
    proxy_config,
)
from udpchat.load import (
    DEFAULT_DURATION_S,
    DEFAULT_RATE_PER_S,
    DEFAULT_USERS,
    LoadConfig,
    NotLoopbackError,
    run_load,
)
from udpchat.metrics import MetricsStartError
from udpchat.output import OutputFormat
from udpchat.plot import PlotName
from udpchat.record import (
    RecordFileError,
    RecordFormat,
    RecordOptions,
    RecordWriter,
    Refusal,
    Samples,
    config_json,
    open_new,
    record_client,
    setting_of,
)
from udpchat.relay import (
    DEFAULT_ANSWER_RATE_PER_S,
    DEFAULT_ANSWER_RATE_TOTAL_PER_S,
    DEFAULT_MAX_PEERS,
    DEFAULT_PEER_TIMEOUT_S,
    DEFAULT_RELAY_BUDGET_PER_S,
    DEFAULT_TEXT_RATE_PER_S,
)
from udpchat.report import SortKey, client_summary, impair_report, json_summary, summary_lines
from udpchat.rtt import RoundTrips
from udpchat.runner import run
from udpchat.server import ServerConfig, ServeResult, Service
from udpchat.settings import ConfigError, bounds_of
from udpchat.signals import SignalStop, hold_stop_signals, release_stop_signals
from udpchat.web.config import (
    DEFAULT_MAX_CLIENT_BUFFER_BYTES,
    WebAddressError,
    WebConfig,
    WebStartError,
    parse_web_address,
)
from udpchat.web.config import DEFAULT_MAX_CLIENTS as DEFAULT_WEB_MAX_CLIENTS
from udpchat.wire import MAX_USERNAME_LENGTH, InvalidUsernameError, clean_username

if TYPE_CHECKING:
    from udpchat.dashboard import ViewTerminal

T = TypeVar("T")

WAITING_LINE = "Server menunggu..."
USERNAME_PROMPT = "Masukkan username: "


class ExitCode(enum.IntEnum):
    OK = 0
    FAILURE = 1
    USAGE = 2
    STARTUP_FAILURE = 3
    FORCED = 130


app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    help="udpchat: the seed's UDP message server and client, on asyncio with a worker pool.",
)


class Panel(enum.StrEnum):
    """The headings ``serve --help`` groups its options under, in the order shown."""

    BASIC = "Options"
    LIMITS = "Limits (what is refused, and counted, beyond them)"
    OUTPUT = "Output"
    ROOM = "Chat room"
    NATS = "NATS (one room across servers)"
    METRICS = "Metrics"
    RECORD = "Recording (the run's time series, for 'udpchat plot')"
    WEB = "Web view (a page for the browser)"


class PanelledCommand(typer.core.TyperCommand):
    """Plain ``--help`` (as git's, readable in a pipe) with the options grouped under the
    heading each declares (``rich_help_panel``), in the order of :class:`Panel`; an option with
    none (``--help`` too) joins the first heading."""

    def format_options(self, ctx: Context, formatter: HelpFormatter) -> None:
        grouped: dict[str, list[tuple[str, str]]] = {}
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is not None:
                panel = getattr(param, "rich_help_panel", None) or Panel.BASIC
                grouped.setdefault(panel, []).append(record)
        order = list(Panel)
        for panel in sorted(grouped, key=lambda name: order.index(Panel(name))):
            with formatter.section(panel):
                formatter.write_dl(grouped[panel])

    def format_epilog(self, ctx: Context, formatter: HelpFormatter) -> None:
        """The examples under their own heading, each line as written (click would rewrap)."""
        if self.epilog:
            with formatter.section("Examples"):
                for line in self.epilog.splitlines():
                    formatter.write(f"{'':>{formatter.current_indent}}{line}\n")


def examples(*pairs: tuple[str, str]) -> str:
    """Example command lines, each with what it does below it, for :class:`PanelledCommand`'s
    epilog; ``tests/test_cli.py`` parses each one."""
    return "\n".join(f"$ {command}\n  {what}" for command, what in pairs)


def command(short_help: str, *pairs: tuple[str, str]) -> Callable[[Callable[..., T]], Any]:
    """``@app.command`` with grouped options and the examples at the end of its ``--help``."""
    return app.command(short_help=short_help, cls=PanelledCommand, epilog=examples(*pairs))


def verbose_option(help: str) -> Any:
    """``--verbose``/``-v``: every counter, where by default a person's short form shows."""
    return typer.Option("--verbose", "-v", help=help, rich_help_panel=Panel.OUTPUT)


LoopOption = Annotated[
    LoopChoice,
    typer.Option("--loop", help="Event loop: auto takes uvloop where installed."),
]


def print_version(value: bool) -> None:
    if value:
        print(f"udpchat {__version__}")
        raise typer.Exit()


SIGNAL_AWARE_COMMANDS = ("serve", "send", "chat", "impair")
"""Commands that take over the stop signals held since start-up; the others get them back."""


@app.callback()
def options(
    context: typer.Context,
    version: Annotated[
        bool,
        typer.Option(
            "--version", help="Print the version and exit.", is_eager=True, callback=print_version
        ),
    ] = False,
) -> None:
    """udpchat: the seed's UDP message server and client, on asyncio with a worker pool."""
    if context.invoked_subcommand not in SIGNAL_AWARE_COMMANDS:
        release_stop_signals(deliver=True)


def fail(message: str, code: ExitCode) -> NoReturn:
    """One line on stderr, no traceback: how every operator error ends."""
    if code is ExitCode.USAGE:  # said like the parser's own: udpchat COMMAND: what is wrong
        raise UsageError(message, get_current_context(silent=True))
    report(message)
    raise typer.Exit(code)


def describe_error(error: BaseException) -> str:
    """The OS's own words for an OSError (``Address already in use``), else the exception's text."""
    if isinstance(error, OSError) and not isinstance(error, socket.gaierror) and error.strerror:
        return error.strerror
    return str(error)


def listen_fix(error: OSError, any_port: str, every_address: str) -> str:
    """``; ... --port 0 picks a free port``: what to do about a socket that could not listen,
    after the OS's words; ``any_port`` and ``every_address`` as the command writes them."""
    fixes = {
        errno.EADDRINUSE: f"is another server on it? {any_port} picks a free port",
        errno.EACCES: "a port below 1024 needs root: pick one above 1023",
        errno.EADDRNOTAVAIL: f"no interface has that address; {every_address} listens on all",
    }
    fix = fixes.get(error.errno or 0)
    return "" if fix is None else f"; {fix}"


def bounded(
    config: type[Any], setting: str, help: str, *flags: str, panel: str | None = None
) -> Any:
    """An option for a numeric ``config`` setting: its help says the range the config declares
    (:func:`~udpchat.settings.bounds_of`), and the config alone checks it, so that the two
    cannot disagree and a value out of range is said in the config's words (:func:`configure`).
    """
    help = f"{help} Must be {bounds_of(config, setting)}."
    return typer.Option(*flags, help=help, metavar=metavar_of(setting), rich_help_panel=panel)


def configure(context: typer.Context, config: Callable[..., T], **settings: Any) -> T:
    """``config(**settings)``; a :class:`ConfigError` is a usage error naming the option."""
    try:
        return config(**settings)
    except ConfigError as error:
        fail(error.describe(lambda setting: option_name(context, setting)), ExitCode.USAGE)
    except ValueError as error:
        fail(str(error), ExitCode.USAGE)


def metavar_of(setting: str) -> str:
    """What ``--help`` shows a setting's value as, from its name and unit."""
    if setting.endswith("_per_s"):
        return "PER_S"
    if setting.endswith("_s"):
        return "SECONDS"
    if setting.endswith("port"):
        return "PORT"
    if setting in ("max_datagram_size", "rcvbuf") or setting.endswith("_bytes"):
        return "BYTES"
    return "N"


RCVBUF_RANGE = f"0 (the OS default) or {bounds_of(ServerConfig, 'rcvbuf')}"
"""``--rcvbuf``'s range: the config's own (None is the OS default), with 0 meaning None."""


def os_default_at_zero(parameter: typer.CallbackParam, value: int) -> int | None:
    """``--rcvbuf 0``: the OS default (None); outside the config's range said in
    :data:`RCVBUF_RANGE`'s words."""
    if value and bounds_of(ServerConfig, "rcvbuf").problem(value) is not None:
        fail(f"{parameter.opts[0]}: must be {RCVBUF_RANGE}, not {value}", ExitCode.USAGE)
    return value or None


def split_urls(values: list[str] | None) -> tuple[str, ...]:
    """``--nats`` repeated or comma-separated, as one tuple of URLs."""
    return tuple(url.strip() for text in values or () for url in text.split(",") if url.strip())


def parse_allow(values: list[str] | None) -> tuple[IPNetwork, ...]:
    """``--allow`` repeated, as networks."""
    try:
        return tuple(parse_network(text) for text in values or ())
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="'--allow'") from None


WEB_OPTIONS = {
    "web": "host",
    "web_token": "token",
    "web_max_clients": "max_clients",
    "web_max_client_buffer_bytes": "max_client_buffer_bytes",
}
"""The ``--web`` options, each with the :class:`WebConfig` setting it sets (``--web`` sets
the host and the port)."""


def web_options(page: str) -> dict[str, Any]:
    """``--web`` and its companions, for ``serve`` and ``impair`` alike."""
    return {
        "web": typer.Option(
            metavar="[HOST:]PORT",
            help=f"Serve {page} on this TCP address (HOST defaults to 127.0.0.1; port 0 picks "
            "one). Beyond loopback it needs a token: the printed URL carries one.",
            rich_help_panel=Panel.WEB,
        ),
        "web_token": typer.Option(
            metavar="TOKEN",
            envvar="UDPCHAT_WEB_TOKEN",
            help="The token a visitor must present (default: none on loopback, a random one "
            "beyond). 16-128 letters, digits, . _ ~ -.",
            rich_help_panel=Panel.WEB,
        ),
        "web_max_clients": bounded(
            WebConfig, "max_clients", "Pages open at once, at most.", panel=Panel.WEB
        ),
        "web_max_client_buffer_bytes": bounded(
            WebConfig,
            "max_client_buffer_bytes",
            "Bytes waiting for one page, at most; a slower page is dropped.",
            "--web-max-buffer",
            panel=Panel.WEB,
        ),
    }


WEB = web_options("the page (senders, charts, the room)")
IMPAIR_WEB = web_options("the link's page (what it injects, its settings and seed, live changes)")


def web_config(context: typer.Context, settings: dict[str, Any]) -> WebConfig | None:
    """The :class:`WebConfig` that ``--web`` and its companions ask for; None without
    ``--web``. A wrong value is a usage error naming the option."""
    address = settings["web"]
    if address is None:
        return None
    try:
        host, port = parse_web_address(address)
    except WebAddressError as error:
        fail(f"--web: {error}", ExitCode.USAGE)
    values = {WEB_OPTIONS[name]: value for name, value in settings.items() if name != "web"}
    try:
        return WebConfig(host=host, port=port, **values)
    except ConfigError as error:
        options = {setting: name for name, setting in WEB_OPTIONS.items()}
        fail(
            error.describe(lambda setting: option_name(context, options.get(setting, setting))),
            ExitCode.USAGE,
        )


def nats_file(flag: str, help: str) -> Any:
    """One of ``serve``'s NATS files: it must exist, and be a file."""
    return typer.Option(
        flag, metavar="FILE", exists=True, dir_okay=False, help=help, rich_help_panel=Panel.NATS
    )


SERVE_ONLY = ("quiet", "output_format", "dashboard", "dashboard_sort", "loop", *WEB_OPTIONS)
"""``serve`` options that are not :class:`ServerConfig` settings; each other option is the
setting of the same name."""


def record_option(help: str, flag: str = "--record") -> Any:
    """A file option that records (``--record``, ``--pcap``): never standard output."""
    return typer.Option(
        flag, metavar="FILE", help=f"{help} Refuses an existing file without --force.",
        rich_help_panel=Panel.RECORD,
    )  # fmt: skip


RecordIntervalOption = Annotated[
    float,
    bounded(
        RecordOptions, "interval_s", "Seconds per recorded interval.", "--record-interval",
        panel=Panel.RECORD,
    ),
]  # fmt: skip
RecordMaxBytesOption = Annotated[
    int,
    bounded(
        RecordOptions,
        "max_bytes",
        "The record file's bound: recording stops there, counted and logged; the run goes on.",
        "--record-max-bytes",
        panel=Panel.RECORD,
    ),
]


def record_options(
    context: typer.Context, path: Path | None, file_option: str = "record", **values: Any
) -> RecordOptions | None:
    """The ``--record`` options (``--pcap``'s with ``file_option`` ``pcap``) as a
    :class:`RecordOptions`; None without the file. A value out of range is a usage error
    naming its option, with the file or without."""
    try:
        options = RecordOptions(path=path, **values)
    except ConfigError as error:
        fail(
            error.describe(lambda name: option_name(context, setting_of(name, file_option))),
            ExitCode.USAGE,
        )
    return None if path is None else options


def open_record(options: RecordOptions | None, option: str = "--record") -> BinaryIO | None:
    """The record file opened before anything starts, or one line and exit 2 or 3."""
    if options is None:
        return None
    try:
        return open_new(options.file, options.overwrite)
    except RecordFileError as error:
        refuse_file(error, option)


def record_label_option() -> Any:
    return typer.Option(
        metavar="TEXT",
        help="What 'udpchat plot' calls this run (default: the file's name).",
        rich_help_panel=Panel.RECORD,
    )


def force_option() -> Any:
    return typer.Option(
        "--force", help="Overwrite an existing record file.", rich_help_panel=Panel.RECORD
    )


def refuse_file(error: RecordFileError, option: str) -> NoReturn:
    """A record file that cannot be opened: exit 2 when the path is wrong as given (a
    directory, an existing file), 3 when the system refuses it (no such directory, no right)."""
    text = f"{option}: {error}"
    if error.refusal is Refusal.EXISTS:
        text += "; --force overwrites it"
    fail(text, ExitCode.USAGE if error.usage else ExitCode.STARTUP_FAILURE)


@command(
    "Receive messages; print each as '[ip] text' (the seed's server).",
    ("udpchat serve", "The seed's server: every message on 0.0.0.0 port 5002 as '[ip] text'."),
    (
        "udpchat serve --port 0 --quiet --stats-interval 5",
        "Any free port (said on stderr); no message lines, a status line every 5 s.",
    ),
    ("udpchat serve --relay --dashboard", "A room for 'udpchat chat', with a live sender view."),
)
def serve(
    context: typer.Context,
    host: Annotated[
        str, typer.Option(metavar="HOST", help="Address to bind; '::' listens on IPv6 and IPv4.")
    ] = server_module.DEFAULT_HOST,
    port: Annotated[int, bounded(ServerConfig, "port", "UDP port.")] = server_module.DEFAULT_PORT,
    workers: Annotated[
        int, bounded(ServerConfig, "workers", "Threads in the pool that handles messages.")
    ] = server_module.DEFAULT_WORKERS,
    max_datagram_size: Annotated[
        int,
        bounded(
            ServerConfig,
            "max_datagram_size",
            "Largest datagram accepted, in bytes; larger are dropped.",
            "--max-size",
            panel=Panel.LIMITS,
        ),
    ] = server_module.DEFAULT_MAX_DATAGRAM_SIZE,
    queue_size: Annotated[
        int,
        bounded(
            ServerConfig,
            "queue_size",
            "Messages waiting for a worker, at most; more are dropped.",
            panel=Panel.LIMITS,
        ),
    ] = server_module.DEFAULT_QUEUE_SIZE,
    rcvbuf: Annotated[
        int,
        typer.Option(
            metavar="BYTES",
            callback=os_default_at_zero,
            help=f"Socket receive buffer to ask for, in bytes. Must be {RCVBUF_RANGE}.",
            rich_help_panel=Panel.LIMITS,
        ),
    ] = server_module.DEFAULT_RCVBUF,
    allow: Annotated[
        list[str] | None,
        typer.Option(
            callback=parse_allow,
            metavar="NETWORK",
            help="Accept only this network (CIDR or address); repeatable.",
            rich_help_panel=Panel.LIMITS,
        ),
    ] = None,
    rate_limit_per_s: Annotated[
        float | None,
        bounded(
            ServerConfig,
            "rate_limit_per_s",
            "Messages a second per source address; more are refused.",
            "--rate-limit",
            panel=Panel.LIMITS,
        ),
    ] = None,
    rate_burst: Annotated[
        float | None,
        bounded(
            ServerConfig,
            "rate_burst",
            "Burst allowed above --rate-limit (default: 1 s worth).",
            panel=Panel.LIMITS,
        ),
    ] = None,
    max_sources: Annotated[
        int,
        bounded(
            ServerConfig,
            "max_sources",
            "Source addresses remembered for --rate-limit/--allow/--answer-rate, at most.",
            panel=Panel.LIMITS,
        ),
    ] = DEFAULT_MAX_SOURCES,
    drain_timeout_s: Annotated[
        float,
        bounded(
            ServerConfig,
            "drain_timeout_s",
            "Seconds to finish queued messages on Ctrl-C, SIGTERM or SIGHUP.",
            "--drain-timeout",
            panel=Panel.LIMITS,
        ),
    ] = server_module.DEFAULT_DRAIN_TIMEOUT_S,
    processes: Annotated[
        int,
        bounded(
            ServerConfig,
            "processes",
            "Server processes sharing the port (Linux SO_REUSEPORT), each with its own pool.",
        ),
    ] = 1,
    max_senders: Annotated[
        int,
        bounded(
            ServerConfig,
            "max_senders",
            "Senders tracked for loss and reordering, at most; the least active are evicted.",
            panel=Panel.LIMITS,
        ),
    ] = DEFAULT_MAX_SENDERS,
    output_format: Annotated[
        OutputFormat,
        typer.Option(
            "--format",
            help="Message lines: the seed's text, or JSON Lines (one JSON object a line; the "
            "summary on stderr is JSON too).",
            rich_help_panel=Panel.OUTPUT,
        ),
    ] = OutputFormat.TEXT,
    quiet: Annotated[
        bool,
        typer.Option(
            "--quiet",
            "-q",
            help="No per-message lines; counts and summary only.",
            rich_help_panel=Panel.OUTPUT,
        ),
    ] = False,
    stats_interval_s: Annotated[
        float | None,
        bounded(
            ServerConfig,
            "stats_interval_s",
            "Print a status line on stderr every this many seconds.",
            "--stats-interval",
            panel=Panel.OUTPUT,
        ),
    ] = None,
    verbose: Annotated[
        bool,
        verbose_option(
            "Every counter in the summary and status lines (not only what a "
            "person reads), and the sender table up to 50 rows."
        ),
    ] = False,
    metrics_port: Annotated[
        int | None,
        bounded(
            ServerConfig,
            "metrics_port",
            "Serve Prometheus metrics over HTTP on this TCP port (0: any).",
            panel=Panel.METRICS,
        ),
    ] = None,
    metrics_host: Annotated[
        str,
        typer.Option(
            metavar="HOST", help="Address for --metrics-port.", rich_help_panel=Panel.METRICS
        ),
    ] = server_module.DEFAULT_METRICS_HOST,
    metrics_senders: Annotated[
        int,
        bounded(
            ServerConfig,
            "metrics_senders",
            "Senders with series of their own (udpchat_sender_*), the busiest; the others are "
            "counted in udpchat_sender_series_left_out.",
            panel=Panel.METRICS,
        ),
    ] = server_module.DEFAULT_METRICS_SENDERS,
    relay: Annotated[
        bool,
        typer.Option(
            help="Chat room: relay members' messages to the other members.",
            rich_help_panel=Panel.ROOM,
        ),
    ] = False,
    echo: Annotated[
        bool,
        typer.Option(
            "--echo",
            help="Answer each message with itself, once, for 'udpchat send --rtt' (never "
            "larger, never an answer; off by default: a server that answers can be aimed at a "
            "forged source).",
        ),
    ] = False,
    echo_rate_per_s: Annotated[
        float,
        bounded(
            ServerConfig,
            "echo_rate_per_s",
            "Answers a second per source address with --echo (bursts of twice that); the "
            "rest are counted, not answered.",
            "--echo-rate",
            panel=Panel.LIMITS,
        ),
    ] = DEFAULT_ECHO_RATE_PER_S,
    peer_timeout_s: Annotated[
        float,
        bounded(
            ServerConfig,
            "peer_timeout_s",
            "Seconds of silence after which a member leaves the room.",
            "--peer-timeout",
            panel=Panel.ROOM,
        ),
    ] = DEFAULT_PEER_TIMEOUT_S,
    max_peers: Annotated[
        int, bounded(ServerConfig, "max_peers", "Members in the room, at most.", panel=Panel.ROOM)
    ] = DEFAULT_MAX_PEERS,
    relay_rate_per_s: Annotated[
        float,
        bounded(
            ServerConfig,
            "relay_rate_per_s",
            "Texts a second each member may have relayed (bursts of twice that).",
            "--relay-rate",
            panel=Panel.ROOM,
        ),
    ] = DEFAULT_TEXT_RATE_PER_S,
    relay_budget_per_s: Annotated[
        float,
        bounded(
            ServerConfig,
            "relay_budget_per_s",
            "Datagrams a second the room sends to its members in all, texts from here and from "
            "NATS alike; beyond it texts are not relayed (counted).",
            "--relay-budget",
            panel=Panel.ROOM,
        ),
    ] = DEFAULT_RELAY_BUDGET_PER_S,
    answer_rate_per_s: Annotated[
        float,
        bounded(
            ServerConfig,
            "answer_rate_per_s",
            "Answers a second to each address that is not a member (/cookie, /expired, /full; "
            "bursts of twice that).",
            "--answer-rate",
            panel=Panel.ROOM,
        ),
    ] = DEFAULT_ANSWER_RATE_PER_S,
    answer_rate_total_per_s: Annotated[
        float,
        bounded(
            ServerConfig,
            "answer_rate_total_per_s",
            "Answers a second to all addresses that are not members (bursts of twice that).",
            "--answer-rate-total",
            panel=Panel.ROOM,
        ),
    ] = DEFAULT_ANSWER_RATE_TOTAL_PER_S,
    nats: Annotated[
        list[str] | None,
        typer.Option(
            metavar="URL",
            callback=split_urls,
            help="With --relay: share the room through this NATS server (nats:// or tls://, "
            "credentials may ride in the URL); repeatable or comma-separated.",
            rich_help_panel=Panel.NATS,
        ),
    ] = None,
    room: Annotated[
        str,
        typer.Option(
            metavar="NAME",
            help="The room's name on NATS: several rooms share one cluster.",
            rich_help_panel=Panel.NATS,
        ),
    ] = DEFAULT_ROOM,
    nats_credentials: Annotated[
        Path | None,
        nats_file("--nats-creds", "NATS credentials file (user JWT + NKey)."),
    ] = None,
    nats_nkey_seed: Annotated[
        Path | None,
        nats_file("--nats-nkey", "NATS NKey seed file."),
    ] = None,
    nats_ca_file: Annotated[
        Path | None,
        nats_file("--nats-ca", "CA file to verify NATS's TLS with."),
    ] = None,
    nats_connect_timeout_s: Annotated[
        float,
        bounded(
            ServerConfig,
            "nats_connect_timeout_s",
            "Seconds to wait for NATS at start.",
            "--nats-connect-timeout",
            panel=Panel.NATS,
        ),
    ] = DEFAULT_CONNECT_TIMEOUT_S,
    dashboard: Annotated[
        bool,
        typer.Option(
            help="A live view of the senders on the terminal (stdout, else stderr); "
            "message lines scroll above it.",
            rich_help_panel=Panel.OUTPUT,
        ),
    ] = False,
    record: Annotated[
        Path | None,
        record_option(
            "Record the run's time series in FILE: every --record-interval, each counter's "
            "change and the busiest senders' loss, jitter and loss runs; events too."
        ),
    ] = None,
    record_format: Annotated[
        RecordFormat,
        typer.Option(
            help="jsonl: JSON Lines, for 'udpchat plot'; csv: a row per sender and interval, "
            "for spreadsheets.",
            rich_help_panel=Panel.RECORD,
        ),
    ] = RecordFormat.JSONL,
    record_interval_s: RecordIntervalOption = record_module.DEFAULT_INTERVAL_S,
    record_senders: Annotated[
        int,
        bounded(
            ServerConfig,
            "record_senders",
            "Senders listed in each interval, the busiest; the others are summed.",
            panel=Panel.RECORD,
        ),
    ] = record_module.DEFAULT_SENDERS,
    record_events: Annotated[
        int,
        bounded(
            ServerConfig,
            "record_events",
            "Events (a sender's first message, restart, eviction; a member's join, leave) "
            "recorded per interval; more are counted.",
            panel=Panel.RECORD,
        ),
    ] = record_module.DEFAULT_EVENTS,
    record_max_bytes: RecordMaxBytesOption = record_module.DEFAULT_MAX_BYTES,
    record_label: Annotated[str, record_label_option()] = "",
    overwrite: Annotated[bool, force_option()] = False,
    dashboard_sort: Annotated[
        SortKey,
        typer.Option(
            help="The live view's order: the senders to look at first on top.",
            rich_help_panel=Panel.OUTPUT,
        ),
    ] = SortKey.LOSS,
    web: Annotated[str | None, WEB["web"]] = None,
    web_token: Annotated[str | None, WEB["web_token"]] = None,
    web_max_clients: Annotated[int, WEB["web_max_clients"]] = DEFAULT_WEB_MAX_CLIENTS,
    web_max_client_buffer_bytes: Annotated[
        int, WEB["web_max_client_buffer_bytes"]
    ] = DEFAULT_MAX_CLIENT_BUFFER_BYTES,
    loop: LoopOption = LoopChoice.AUTO,
) -> None:
    """Receive messages and print each as '[ip] text', like the seed's server."""
    settings = {name: value for name, value in context.params.items() if name not in SERVE_ONLY}
    lines = None if quiet else output_format
    web_settings = {name: context.params[name] for name in WEB_OPTIONS}
    config = configure(
        context,
        ServerConfig,
        **settings,
        output_format=lines,
        web=web_config(context, web_settings),
    )
    terminal = dashboard_terminal(messages=not quiet) if dashboard else None
    banner = sys.stderr if output_format is OutputFormat.JSON else sys.stdout

    def on_started(service: Service) -> contextlib.AbstractContextManager[object] | None:
        print_banner(banner)
        if terminal is None:
            return None
        from udpchat.dashboard import watch  # noqa: PLC0415 - rich only for the dashboard

        return watch(terminal, dashboard_sort, service)

    output = None if terminal is None else terminal.message_stream
    try:
        result = run(config, output=output, loop=loop, on_started=on_started)
    except (LoopUnavailableError, OSError) as error:
        serve_failed(error, config)
    finish(result, as_json=output_format is OutputFormat.JSON, verbose=verbose)


def serve_failed(error: LoopUnavailableError | OSError, config: ServerConfig) -> NoReturn:
    """What stopped ``serve`` from starting, or its output, as one line and its exit code."""
    if isinstance(error, LoopUnavailableError):
        fail(str(error), ExitCode.STARTUP_FAILURE)
    side_server_failed(error)
    if isinstance(error, BusUnavailableError):
        fail(describe_error(error), ExitCode.STARTUP_FAILURE)
    if isinstance(error, RecordFileError):
        refuse_file(error, "--record")
    where = f"{config.host} port {config.port}"
    fix = listen_fix(error, "--port 0", "--host 0.0.0.0")
    fail(f"cannot listen on {where}: {describe_error(error)}{fix}", ExitCode.STARTUP_FAILURE)


def side_server_failed(error: OSError) -> None:
    """The metrics endpoint or the web view could not listen: one line with the fix, exit 3;
    any other error returns."""
    if isinstance(error, MetricsStartError):
        fix = listen_fix(error, "--metrics-port 0", "--metrics-host 127.0.0.1")
        fail(f"{describe_error(error)}{fix}", ExitCode.STARTUP_FAILURE)
    if isinstance(error, WebStartError):
        fix = listen_fix(error, "--web 0", "--web 0.0.0.0:PORT")
        fail(f"{describe_error(error)}{fix}", ExitCode.STARTUP_FAILURE)


def impair_failed(
    error: LoopUnavailableError | OSError, config: ProxyConfig, pcap: Path | None
) -> NoReturn:
    """What stopped ``impair`` from starting, as one line and its exit code."""
    if isinstance(error, RecordFileError):
        refuse_file(error, "--pcap" if pcap is not None and error.path == pcap else "--record")
    if isinstance(error, LoopUnavailableError):
        fail(str(error), ExitCode.STARTUP_FAILURE)
    side_server_failed(error)
    if isinstance(error, TargetUnresolvedError):
        fail(describe_error(error), ExitCode.STARTUP_FAILURE)
    where = f"{config.listen_host} port {config.listen_port}"
    fix = listen_fix(error, f"--listen {config.listen_host}:0", "--listen 0.0.0.0:PORT")
    fail(f"cannot listen on {where}: {describe_error(error)}{fix}", ExitCode.STARTUP_FAILURE)


def option_name(context: typer.Context, setting: str) -> str:
    """The option that sets ``setting`` (``--max-size``), for an error message."""
    for parameter in context.command.params:
        if parameter.name == setting and parameter.opts:
            return str(parameter.opts[0])
    return setting


def dashboard_terminal(*, messages: bool) -> ViewTerminal:
    """Where ``--dashboard`` draws; usage error when neither stdout nor stderr is a terminal."""
    from udpchat.dashboard import NoTerminalError, find_terminal  # noqa: PLC0415

    try:
        return find_terminal(sys.stdout, sys.stderr, messages=messages)
    except NoTerminalError as error:
        fail(str(error), ExitCode.USAGE)


def finish(result: ServeResult, *, as_json: bool = False, verbose: bool = False) -> None:
    """The summary on stderr, then the exit status: 130 forced, 1 after a failure, else 0."""
    if as_json:
        print(json_summary(result.per_process), file=sys.stderr, flush=True)
    else:
        for line in summary_lines(result.per_process, verbose=verbose):
            if line.startswith(" "):
                print(line, file=sys.stderr)
            else:
                report(line)
    if result.forced:
        report("forced stop: queued messages were abandoned (counted as queued)")
        exit_now(ExitCode.FORCED)
    code = ExitCode.OK
    if isinstance(result.error, OutputError):
        silence_stdout()
    if result.error is not None and not stopped_with_its_reader(result):
        report(f"stopped by an error: {describe_error(result.error)}")
        code = ExitCode.FAILURE
    if result.died:
        report(
            "a process that died sent no final report: its senders may be missing from the "
            "sender table, and its last half second from the totals"
        )
        code = ExitCode.FAILURE
    if not result.drained:
        exit_now(code)
    raise typer.Exit(code)


def stopped_with_its_reader(result: ServeResult) -> bool:
    """Whether the output broke (``EPIPE``) with a stop signal: Ctrl-C on ``serve | jq`` stops
    ``jq`` too, and the lines it could no longer read are counted (``output_failed``) in the
    summary, not an error."""
    error = result.error
    return result.signalled and isinstance(error, OutputError) and error.errno == errno.EPIPE


class StdoutError(OutputError):
    """Standard output cannot be written (a broken pipe, a full disk): an output that failed,
    so that serving stops with the summary as for a message line that could not be written."""


def print_banner(stream: TextIO) -> None:
    """The seed's ``Server menunggu...``; a stream that fails is said as such, not as a failure
    to listen."""
    try:
        print(WAITING_LINE, file=stream, flush=True)
    except OSError as error:
        name = "stdout" if stream is sys.stdout else "stderr"
        raise StdoutError(f"cannot write to {name}: {describe_error(error)}") from None


def silence_stdout() -> None:
    """Point stdout at /dev/null, so that the interpreter's last flush into a broken pipe does
    not print a traceback after our own one-line message."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def exit_now(code: ExitCode) -> NoReturn:
    """Exit without joining the pool: a worker may be stuck in a write and would hang it."""
    sys.stderr.flush()
    os._exit(code)


def report(line: str) -> None:
    """Status for the operator: stderr, so that stdout stays the seed's message stream."""
    print(f"udpchat: {line}", file=sys.stderr, flush=True)


def unbracket(host: str) -> str:
    """``[::1]``, as URLs write an IPv6 address, is ``::1`` to the resolver."""
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


HostOption = Annotated[
    str,
    typer.Option(
        metavar="HOST",
        help="Server address; an IPv6 address with or without brackets ([::1]).",
        callback=unbracket,
    ),
]


def target_port(config: type[Any]) -> Any:
    """The client commands' ``--port``, with the range ``config`` declares."""
    return bounded(config, "port", "Server's UDP port.")


def username_option(purpose: str) -> Any:
    return typer.Option(
        metavar="NAME",
        help=f"Name to {purpose} as: 1-{MAX_USERNAME_LENGTH} printable characters that show, "
        "spaces inside allowed, no ': ' (else asked).",
    )


@command(
    "Send 'USERNAME: pesan ke-N' on a timer (the seed's client).",
    ("udpchat send --username user1", "'user1: pesan ke-N' every second to 127.0.0.1:5002."),
    (
        "udpchat send --username user1 --host ::1 --count 10 --interval 0.1",
        "Ten messages, a tenth of a second apart, over IPv6.",
    ),
    ("udpchat send --username user1 --relay", "Also print the room's messages ('serve --relay')."),
)
def send(
    context: typer.Context,
    username: Annotated[str | None, username_option("send")] = None,
    host: HostOption = client_module.DEFAULT_HOST,
    port: Annotated[int, target_port(ClientConfig)] = client_module.DEFAULT_PORT,
    interval_s: Annotated[
        float, bounded(ClientConfig, "interval_s", "Seconds between messages.", "--interval")
    ] = client_module.DEFAULT_INTERVAL_S,
    count: Annotated[
        int | None,
        bounded(ClientConfig, "count", "Stop after this many messages (default: until Ctrl-C)."),
    ] = None,
    relay: Annotated[
        bool,
        typer.Option(help="Join a 'serve --relay' room and also print the others' messages."),
    ] = False,
    rtt: Annotated[
        bool,
        typer.Option(
            "--rtt",
            help="Measure each message's round trip by a 'serve --echo' server's answer: "
            "min/p50/p99/max at exit, each round trip with --record.",
        ),
    ] = False,
    record: Annotated[
        Path | None,
        record_option("Record what was sent, per interval (with --rtt, each round trip)."),
    ] = None,
    record_interval_s: RecordIntervalOption = record_module.DEFAULT_INTERVAL_S,
    record_samples: Annotated[
        int,
        bounded(
            RecordOptions,
            "samples",
            "Round trips recorded per interval, at most; more are counted.",
            "--record-samples",
            panel=Panel.RECORD,
        ),
    ] = record_module.DEFAULT_SAMPLES,
    record_max_bytes: RecordMaxBytesOption = record_module.DEFAULT_MAX_BYTES,
    record_label: Annotated[str, record_label_option()] = "",
    overwrite: Annotated[bool, force_option()] = False,
    loop: LoopOption = LoopChoice.AUTO,
) -> None:
    """Send 'USERNAME: pesan ke-N' every INTERVAL seconds, like the seed's client.

    Exits 1 when every datagram was refused (nothing listens at HOST PORT), else 0: UDP
    says nothing of the datagrams that were not refused.
    """
    options = record_options(
        context, record, interval_s=record_interval_s, samples=record_samples,
        max_bytes=record_max_bytes, label=record_label, overwrite=overwrite,
    )  # fmt: skip
    config = configure(
        context, ClientConfig, host=host, port=port, interval_s=interval_s, count=count
    )
    if rtt and relay:
        fail("--rtt measures a 'serve --echo' server's answers: not with --relay", ExitCode.USAGE)
    name = ask_username(username)
    round_trips = RoundTrips(name, record_samples) if rtt else None
    recording = client_recording(options, "send", config, username=name, relay=relay, rtt=rtt)

    def report_send_error(error: Exception) -> None:
        going_on = "; still sending" if count is None or client.sent < count else ""
        report(f"send failed: {describe_error(error)}{going_on}")

    client = Client(config.host, config.port, on_error=report_send_error)
    sending = send_until_stopped(client, name, config, relay, round_trips, recording)
    run_client(client, sending, loop)
    if round_trips is not None:
        report(round_trips.summary(client.sent))
    if client.sent and client.send_errors >= client.sent:
        fail(f"every datagram was refused: nothing listens at {host} port {port}", ExitCode.FAILURE)


def ask_username(username: str | None) -> str:
    """The given username, else asked for like the seed until a valid one is typed; both
    stripped of the spaces around them. Ctrl-C at the prompt ends its line and exits 130."""
    if username is not None:
        try:
            return clean_username(username)
        except InvalidUsernameError as error:
            fail(str(error), ExitCode.USAGE)
    release_stop_signals(deliver=True)  # a person at the prompt: Ctrl-C means leave now
    try:
        return prompt_username()
    finally:
        hold_stop_signals()


def prompt_username() -> str:
    while True:
        try:
            typed = input(USERNAME_PROMPT)
        except EOFError:
            print(flush=True)  # Ctrl-D: the prompt's line ends here, before the error's
            fail("no username given", ExitCode.USAGE)
        except KeyboardInterrupt:
            print(flush=True)  # the prompt's line ends here, not in the shell's next prompt
            fail("interrupted", ExitCode.FORCED)
        try:
            return clean_username(typed)
        except InvalidUsernameError as error:
            report(f"{error}; try again")


def run_client(
    client: Client,
    main: Coroutine[Any, Any, None],
    loop: LoopChoice,
    counts: Callable[[], dict[str, int]] = dict,
) -> None:
    """Run a client command; its errors end it with one line, and what the person did is
    reported (:func:`~udpchat.report.client_summary`, with ``counts`` kept elsewhere)."""
    try:
        run_coroutine(main, loop)
    except LoopUnavailableError as error:
        fail(str(error), ExitCode.STARTUP_FAILURE)
    except JoinError as error:
        fail(str(error), ExitCode.FAILURE)
    except OSError as error:
        fail(
            f"cannot send to {client.host} port {client.port}: {describe_error(error)}",
            ExitCode.FAILURE,
        )
    report(client_summary(client.stats(**counts())))


async def until_stopped(work: Coroutine[Any, Any, object], stop: SignalStop) -> None:
    """Run ``work`` until it ends or a stop is requested."""
    working = asyncio.ensure_future(work)
    stopping = asyncio.ensure_future(stop.requested.wait())
    await asyncio.wait({working, stopping}, return_when=asyncio.FIRST_COMPLETED)
    for task in (working, stopping):
        task.cancel()
    if working.done() and not working.cancelled():
        working.result()  # raises what the work raised


def client_recording(
    options: RecordOptions | None, kind: str, config: ClientConfig, **more: Any
) -> ClientRecording | None:
    """The record file opened (or one line and exit 2 or 3), ready to record once the client
    is open."""
    stream = open_record(options)
    if stream is None or options is None:
        return None
    return functools.partial(record_client, stream, options, kind, {**config_json(config), **more})


ClientRecording = Callable[[Callable[[], ClientStats], Samples | None], RecordWriter]
"""Starts recording a client, given its counters and (``send --rtt``) its round trips."""


async def send_until_stopped(
    client: Client,
    username: str,
    config: ClientConfig,
    relay: bool,
    round_trips: RoundTrips | None = None,
    recording: ClientRecording | None = None,
) -> None:
    stop = SignalStop()
    on_sending: Callable[[str], None] | None = None
    if round_trips is not None:
        rtt = round_trips
        client.listen(lambda data: rtt.received(data, time.monotonic()))

        def on_sending(text: str) -> None:
            rtt.sent(text, time.monotonic())

    with stop.installed():
        async with client:
            recorder = None
            if recording is not None:
                counts = (lambda: {}) if round_trips is None else round_trips.counts_by_name
                samples = None if round_trips is None else round_trips.take_interval
                recorder = recording(lambda: client.stats(**counts()), samples)
            if relay:
                await client.join_room(print_received, on_room=lambda _, detail: report(detail))
            await until_stopped(
                client.send_every(
                    username,
                    interval_s=config.interval_s,
                    count=config.count,
                    on_sending=on_sending,
                    on_sent=print_sent,
                ),
                stop,
            )
            if relay:
                client.leave_room()
            if round_trips is not None:
                await wait_for_answers(round_trips)
            await client.settle()
            if recorder is not None:
                await asyncio.to_thread(recorder.close)


@command(
    "Chat in a 'serve --relay' room, one line typed at a time.",
    ("udpchat chat --username citra", "Join the room at 127.0.0.1:5002; /help lists commands."),
    ("udpchat chat --host 192.168.1.6", "Join a room on another machine; asks for a username."),
)
def chat(
    context: typer.Context,
    username: Annotated[str | None, username_option("chat")] = None,
    host: HostOption = client_module.DEFAULT_HOST,
    port: Annotated[int, target_port(ClientConfig)] = client_module.DEFAULT_PORT,
    record: Annotated[
        Path | None,
        record_option("Record what was sent per interval: lines sent, confirmed, not delivered."),
    ] = None,
    record_interval_s: RecordIntervalOption = record_module.DEFAULT_INTERVAL_S,
    record_max_bytes: RecordMaxBytesOption = record_module.DEFAULT_MAX_BYTES,
    record_label: Annotated[str, record_label_option()] = "",
    overwrite: Annotated[bool, force_option()] = False,
    loop: LoopOption = LoopChoice.AUTO,
) -> None:
    """Chat in a 'serve --relay' room: each line typed is sent as 'USERNAME: line', the
    others' lines appear above the input line as they arrive. A line that starts with / is a
    command, never sent: /help lists them (/nick NAME, /resend, /quit); // sends one slash.
    Ctrl-D or Ctrl-C leaves. The client keeps itself in the room and rejoins by itself after a
    server restart; an empty line then sends again what was not delivered."""
    options = record_options(
        context, record, interval_s=record_interval_s, max_bytes=record_max_bytes,
        label=record_label, overwrite=overwrite,
    )  # fmt: skip
    config = configure(context, ClientConfig, host=host, port=port)
    name = ask_username(username)
    recording = client_recording(options, "chat", config, username=name)
    client = Client(config.host, config.port)
    conversation = Conversation(client, name, report, Deliveries(report))
    run_client(client, chat_until_done(conversation, recording), loop, conversation.counts)


async def chat_until_done(
    conversation: Conversation, recording: ClientRecording | None = None
) -> None:
    stop = SignalStop()
    client = conversation.client
    with stop.installed():
        async with client:
            recorder = None
            if recording is not None:
                recorder = recording(lambda: client.stats(**conversation.counts()), None)
            try:
                await until_stopped(converse(conversation), stop)
            finally:
                if recorder is not None:
                    await asyncio.to_thread(recorder.close)
    if client.joined:
        report("left the room")
    else:
        report(f"stopped before joining the room at {client.host} port {client.port}: never joined")


@command(
    "A bounded load generator: USERS users at RATE for DURATION.",
    ("udpchat load", "10 users, 10000 messages a second in all, for 5 s, to 127.0.0.1:5002."),
    (
        "udpchat load --users 3 --rate 0 --count 100000 --no-progress",
        "100000 messages as fast as 3 sockets can send them; no progress bar.",
    ),
)
def load(
    context: typer.Context,
    host: Annotated[
        str,
        typer.Option(
            metavar="HOST",
            help="Server address (loopback unless --allow-remote).",
            callback=unbracket,
        ),
    ] = client_module.DEFAULT_HOST,
    port: Annotated[int, target_port(LoadConfig)] = client_module.DEFAULT_PORT,
    users: Annotated[
        int, bounded(LoadConfig, "users", "Simulated users, each with its own socket.")
    ] = DEFAULT_USERS,
    rate_per_s: Annotated[
        float,
        bounded(
            LoadConfig,
            "rate_per_s",
            "Messages a second over all users; 0: as fast as possible.",
            "--rate",
        ),
    ] = DEFAULT_RATE_PER_S,
    duration_s: Annotated[
        float,
        bounded(LoadConfig, "duration_s", "Seconds to send for, at most.", "--duration"),
    ] = DEFAULT_DURATION_S,
    count: Annotated[
        int | None,
        bounded(LoadConfig, "count", "Messages to send, at most (default: no limit)."),
    ] = None,
    batch: Annotated[
        bool, typer.Option(help="Batch sends with sendmmsg where the OS has it.")
    ] = True,
    allow_remote: Annotated[
        bool, typer.Option(help="Allow a target that is not loopback: only a lab network you own.")
    ] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar on stderr.")] = True,
) -> None:
    """Send seed-format messages from USERS users at RATE for DURATION: a bounded load generator.

    Exits 1 when the target refused the datagrams (nothing listens at HOST PORT).
    """
    config = configure(
        context,
        LoadConfig,
        host=host,
        port=port,
        users=users,
        rate_per_s=rate_per_s,
        duration_s=duration_s,
        count=count,
        use_sendmmsg=batch,
        allow_remote=allow_remote,
    )
    try:
        if progress:
            from udpchat.progress import LoadProgress  # noqa: PLC0415 - rich only for the bar

            with LoadProgress(config) as bar:
                result = run_load(config, bar.update)
        else:
            result = run_load(config)
    except NotLoopbackError as error:
        fail(f"{error}; pass --allow-remote for a lab network you own", ExitCode.USAGE)
    except OSError as error:
        fail(f"cannot send to {host} port {port}: {describe_error(error)}", ExitCode.FAILURE)
    print(
        f"load: sent={result.sent} elapsed_s={result.elapsed_s:.3f} "
        f"rate_per_s={result.rate_per_s:.0f} batched={'yes' if result.batched else 'no'}",
        flush=True,
    )
    if result.refusals:
        fail(
            f"{host} port {port} refused the datagrams ({result.refusals} times): "
            "is the server running, is the port right?",
            ExitCode.FAILURE,
        )


def parse_size(text: str) -> tuple[int, int]:
    """``--size 1000x700``: pixels (a PNG at 100 dpi; points at 72 an inch for SVG and PDF)."""
    width, separator, height = text.lower().partition("x")
    try:
        size = (int(width), int(height))
    except ValueError:
        size = (0, 0)
    low, high = plot_module.MIN_SIDE, plot_module.MAX_SIDE
    if not separator or not all(low <= side <= high for side in size):
        fail(f"--size: must be WIDTHxHEIGHT, each {low} to {high}, not {text!r}", ExitCode.USAGE)
    return size


@command(
    "Figures from recorded runs (--record files): time series, CDFs, comparisons.",
    (
        "udpchat plot run.jsonl -o run.png",
        "The figures the run has data for: run-timeseries.png, ...",
    ),
    (
        "udpchat plot lossy.jsonl bursty.jsonl --plot compare -o compare.svg",
        "Two runs on one figure, each labelled by its --record-label.",
    ),
)
def plot(
    files: Annotated[
        list[Path],
        typer.Argument(
            metavar="FILE...", exists=True, dir_okay=False, help="Record files (JSON Lines)."
        ),
    ],
    output: Annotated[
        Path,
        typer.Option(
            "--output",
            "-o",
            metavar="OUT",
            help="Where to draw: .png, .svg or .pdf; with "
            "several figures, OUT's name with each figure's after it (run-timeseries.png).",
        ),
    ],
    plots: Annotated[
        list[PlotName] | None,
        typer.Option(
            "--plot", help="A figure to draw; repeatable (default: what the runs have data for)."
        ),
    ] = None,
    size: Annotated[
        str, typer.Option(metavar="WxH", help="Size in pixels (points for SVG and PDF).")
    ] = "{}x{}".format(*plot_module.DEFAULT_SIZE),
    senders: Annotated[
        int,
        typer.Option(
            min=1,
            max=plot_module.MAX_TOP_SENDERS,
            metavar="N",
            help="Senders in the time series, the busiest.",
        ),
    ] = plot_module.DEFAULT_TOP_SENDERS,
    overwrite: Annotated[
        bool, typer.Option("--force", help="Overwrite existing output files.")
    ] = False,
) -> None:
    """Draw Flent-style figures from runs recorded with --record: messages/s, loss and jitter
    over time (timeseries), loss runs by length (loss-runs), the jitter and round-trip
    distributions (jitter-cdf, rtt-cdf), and several runs side by side (compare). Needs the
    optional extra: pip install 'udpchat[plot]'."""
    try:
        written = plot_module.plot_runs(
            files, output, plots or (), size=parse_size(size), top=senders, overwrite=overwrite
        )
    except (plot_module.RecordFormatError, plot_module.NothingToPlotError) as error:
        fail(str(error), ExitCode.USAGE)
    except plot_module.PlotUnavailableError as error:
        fail(str(error), ExitCode.STARTUP_FAILURE)
    except RecordFileError as error:
        refuse_file(error, "--output")
    except ValueError as error:
        fail(str(error), ExitCode.USAGE)
    for path in written:
        print(path, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """The CLI as a function: parse ``argv``, run the command, return its exit status."""
    hold_stop_signals()
    logging.basicConfig(level=logging.WARNING, format="udpchat: %(message)s", stream=sys.stderr)
    library_logger = logging.getLogger("udpchat")
    level = library_logger.level
    library_logger.setLevel(logging.INFO)  # the status lines and "listening on"
    try:
        code = app(
            args=list(argv) if argv is not None else None,
            prog_name="udpchat",
            standalone_mode=False,
        )
    except UsageError as error:
        print(usage_error_line(error), file=sys.stderr, flush=True)
        return ExitCode.USAGE
    except typer.Abort:
        print("udpchat: aborted", file=sys.stderr, flush=True)
        return ExitCode.FAILURE
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else ExitCode.FAILURE
    finally:
        library_logger.setLevel(level)
        release_stop_signals(deliver=False)
    return code if isinstance(code, int) else ExitCode.OK


def usage_error_line(error: UsageError) -> str:
    """``udpchat serve: --format: 'xml' is not one of text, json``: a usage error in one line,
    naming the command and the option, the value that was wrong, and the option meant when the
    parser found a close one."""
    where = error.ctx.command_path if error.ctx is not None else "udpchat"
    param = getattr(error, "param", None)
    if isinstance(error, BadParameter) and param is not None and param.opts:
        text = f"{param.opts[0]}: {unparsed_value(error) or error.message}"
    elif isinstance(error, NoSuchOption):
        meant = error.possibilities or ()
        hint = f"did you mean {meant[0]}?" if meant else f"'{where} --help' lists them"
        text = f"no such option {error.option_name}; {hint}"
    else:
        text = error.message
    text = text.replace("Value error, ", "").rstrip(".")
    text = re.sub(r"is not one of (.*)$", lambda found: found.group(0).replace("'", ""), text)
    return f"{where}: {text}"


EXPECTED_VALUES = {"int_parsing": "a whole number", "float_parsing": "a number"}
"""What an option's type takes, in words, by the type check that refused the value."""


def unparsed_value(error: BadParameter) -> str | None:
    """``'abc' is not a whole number``: a value the option's type refused, echoed; None when
    the refusal was something else (typer's type check raises pydantic's ValidationError)."""
    errors = getattr(error.__cause__, "errors", None)
    found = errors()[0] if callable(errors) and errors() else {}
    expected = EXPECTED_VALUES.get(found.get("type", ""))
    return None if expected is None else f"{found.get('input')!r} is not {expected}"


def impairment_option(setting: str) -> Any:
    """An ``impair`` option for an :class:`Impairment` field, as the field declares it."""
    flag, metavar, help, default = Impairment.option(setting)
    return typer.Option(flag, metavar=metavar, help=shown(help, default))


def shown(help: str, default: str | None) -> str:
    """``help`` with ``default`` (if any) as typer shows a default value: typer's own
    ``show_default`` text comes in parentheses, as for a computed default, and these are
    values as written."""
    return help if default is None else f"{help}  [default: {default}]"


IMPAIR_ONLY = (
    "loop", "record", "record_interval_s", "record_clients", "record_max_bytes", "record_label",
    "pcap", "pcap_max_bytes", "overwrite", *WEB_OPTIONS,
)  # fmt: skip
"""``impair`` options that are not :func:`proxy_config` arguments."""


@command(
    "A lossy, jittery UDP link between clients and a server.",
    (
        "udpchat impair --loss 10% --delay 50ms --jitter 10ms",
        "Clients send to 5003; a tenth is lost, the rest reach 5002 40-60 ms late.",
    ),
    (
        "udpchat impair --loss up:5% --reorder 1% --seed 7",
        "Lose 5% on the way to the server only, reorder 1%; the same fates each run.",
    ),
)
def impair(
    context: typer.Context,
    listen: Annotated[
        str, typer.Option(metavar="HOST:PORT", help="Where clients send (instead of the server).")
    ] = "{}:{}".format(*DEFAULT_LISTEN),
    to: Annotated[
        str, typer.Option(metavar="HOST:PORT", help="The server the datagrams go on to.")
    ] = "{}:{}".format(*DEFAULT_TARGET),
    loss: Annotated[list[str] | None, impairment_option("loss")] = None,
    burst: Annotated[list[str] | None, impairment_option("burst")] = None,
    delay_s: Annotated[list[str] | None, impairment_option("delay_s")] = None,
    jitter_s: Annotated[list[str] | None, impairment_option("jitter_s")] = None,
    reorder: Annotated[list[str] | None, impairment_option("reorder")] = None,
    reorder_distance: Annotated[list[str] | None, impairment_option("reorder_distance")] = None,
    reorder_hold_s: Annotated[list[str] | None, impairment_option("reorder_hold_s")] = None,
    duplicate: Annotated[list[str] | None, impairment_option("duplicate")] = None,
    corrupt: Annotated[list[str] | None, impairment_option("corrupt")] = None,
    rate: Annotated[list[str] | None, impairment_option("rate")] = None,
    rate_queue: Annotated[list[str] | None, impairment_option("rate_queue")] = None,
    seed: Annotated[
        int | None,
        typer.Option(
            metavar="N",
            help=shown("Seed the decisions: the same seed and traffic, the same fates.", NO_SEED),
        ),
    ] = None,
    max_clients: Annotated[
        int,
        bounded(
            ProxyConfig,
            "max_clients",
            "Clients at once, each with its own socket; more are refused.",
        ),
    ] = DEFAULT_MAX_CLIENTS,
    idle_timeout_s: Annotated[
        float,
        bounded(
            ProxyConfig,
            "idle_timeout_s",
            "Seconds of silence after which a client is dropped.",
            "--idle-timeout",
        ),
    ] = DEFAULT_IDLE_TIMEOUT_S,
    max_queue_bytes: Annotated[
        int,
        bounded(
            ProxyConfig,
            "max_queue_bytes",
            "Bytes each direction holds at most (delayed, rate-limited).",
            "--queue-bytes",
        ),
    ] = DEFAULT_MAX_QUEUE_BYTES,
    stats_interval_s: Annotated[
        float | None,
        bounded(
            ProxyConfig,
            "stats_interval_s",
            "Print a status line on stderr this often (s).",
            "--stats-interval",
        ),
    ] = None,
    verbose: Annotated[
        bool,
        verbose_option(
            "Every counter in the summary and status lines, not only what a person reads."
        ),
    ] = False,
    metrics_port: Annotated[
        int | None,
        bounded(ProxyConfig, "metrics_port", "Serve Prometheus metrics on this TCP port (0: any)."),
    ] = None,
    metrics_host: Annotated[
        str, typer.Option(metavar="HOST", help="Address for --metrics-port.")
    ] = "127.0.0.1",
    profile: Annotated[
        str | None,
        typer.Option(
            metavar="NAME",
            help="A named link (lan, wifi, 3g, satellite, congested, lossy-10): a set of the "
            "options above, which options given beside it override. 'list' shows them.",
        ),
    ] = None,
    record: Annotated[
        Path | None,
        record_option(
            "Record what the link did per interval, direction and client: the fates (lost, "
            "duplicated, reordered, corrupted, rate-dropped) and the delays."
        ),
    ] = None,
    record_interval_s: RecordIntervalOption = record_module.DEFAULT_INTERVAL_S,
    record_clients: Annotated[
        int,
        bounded(
            RecordOptions,
            "senders",
            "Clients listed per interval and direction, the busiest; the others are counted.",
            "--record-clients",
            panel=Panel.RECORD,
        ),
    ] = record_module.DEFAULT_SENDERS,
    record_max_bytes: RecordMaxBytesOption = record_module.DEFAULT_MAX_BYTES,
    record_label: Annotated[str, record_label_option()] = "",
    pcap: Annotated[
        Path | None,
        record_option(
            "Capture every datagram, both ways, in pcapng for Wireshark: each packet's "
            "comment says its fate (lost, duplicate of #N, delayed 23.4 ms, ...).",
            "--pcap",
        ),
    ] = None,
    pcap_max_bytes: Annotated[
        int,
        bounded(
            RecordOptions,
            "max_bytes",
            "The capture's bound: capturing stops there, counted and logged.",
            "--pcap-max-bytes",
            panel=Panel.RECORD,
        ),
    ] = record_module.DEFAULT_MAX_BYTES,
    overwrite: Annotated[bool, force_option()] = False,
    web: Annotated[str | None, IMPAIR_WEB["web"]] = None,
    web_token: Annotated[str | None, IMPAIR_WEB["web_token"]] = None,
    web_max_clients: Annotated[int, IMPAIR_WEB["web_max_clients"]] = DEFAULT_WEB_MAX_CLIENTS,
    web_max_client_buffer_bytes: Annotated[
        int, IMPAIR_WEB["web_max_client_buffer_bytes"]
    ] = DEFAULT_MAX_CLIENT_BUFFER_BYTES,
    loop: LoopOption = LoopChoice.AUTO,
) -> None:
    """Forward UDP from --listen to --to and back, losing, delaying, reordering, duplicating
    and corrupting datagrams as asked; each client gets its own socket towards the server, so
    that 'send', 'chat' and the relay work through it unchanged. Prints what it did at exit.

    Each impairment applies both ways; 'up:' or 'down:' before a value applies it one way
    only, and the option may be repeated: --loss up:10% --loss down:1%."""
    if profile == profiles.LIST:
        print("\n".join(profiles.profile_table()), flush=True)
        raise typer.Exit(ExitCode.OK)
    settings = {name: value for name, value in context.params.items() if name not in IMPAIR_ONLY}
    web_settings = {name: context.params[name] for name in WEB_OPTIONS}
    recording = record_options(
        context, record, interval_s=record_interval_s, senders=record_clients,
        max_bytes=record_max_bytes, label=record_label, overwrite=overwrite,
    )  # fmt: skip
    capturing = record_options(context, pcap, "pcap", max_bytes=pcap_max_bytes, overwrite=overwrite)
    config = configure(context, proxy_config, **settings, web=web_config(context, web_settings))
    try:
        result = run_proxy(config, loop, record=recording, pcap=capturing)
    except (LoopUnavailableError, OSError) as error:
        impair_failed(error, config, pcap)
    for line in impair_report(result.stats, verbose=config.verbose):
        report(line)
    if not result.drained:
        report("stopped before the link was empty: what it held is counted as queued")
