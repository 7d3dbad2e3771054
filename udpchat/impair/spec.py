"""What ``udpchat impair`` is asked to do, checked when built: each direction's
:class:`Impairment`, the values as people write them (10%, 20ms, 1000/s, ``up:`` and
``down:``), and the proxy's :class:`ProxyConfig`. Pure: no I/O, no clock.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from udpchat.impair.profiles import with_profile
from udpchat.settings import Bounds, ConfigError, check_bounds, setting
from udpchat.sockets import MAX_PORT, MAX_RCVBUF, MAX_UDP_PAYLOAD
from udpchat.web.config import WebConfig

DEFAULT_LISTEN = ("127.0.0.1", 5003)
DEFAULT_TARGET = ("127.0.0.1", 5002)
DEFAULT_MAX_CLIENTS = 256
"""Clients at once, each with a socket (a file descriptor) of its own towards the server."""
MAX_CLIENTS = 65536
DEFAULT_IDLE_TIMEOUT_S = 60.0
"""Silence after which a client's socket is closed: six of the chat client's keepalives."""
DEFAULT_MAX_QUEUE_BYTES = 8 * 2**20
"""Bytes a link holds at most (delay line, rate queue and held datagrams), per direction."""
QUEUED_DATAGRAM_OVERHEAD_BYTES = 256
"""Beside its payload, what a datagram the link holds costs: its bytes object's header (33
bytes) and its entries (measured with tracemalloc: 128 bytes delayed or rate-limited, 184 held
for reordering; rounded up)."""
MIN_QUEUE_BYTES = MAX_UDP_PAYLOAD + QUEUED_DATAGRAM_OVERHEAD_BYTES
"""Room for one datagram of any size, at least."""
MAX_QUEUE_BYTES = 2**32
DEFAULT_RATE_QUEUE = 1000
"""Datagrams waiting at the rate limit, at most; beyond it the tail is dropped."""
MAX_RATE_QUEUE = 1_000_000
DEFAULT_REORDER_HOLD_S = 1.0
"""How long a datagram picked for reordering waits for the ones that are to overtake it; it
leaves then even if fewer came (and counts as reordered only if one did)."""
MIN_RATE_PER_S = 0.001
"""The slowest ``--rate``, in datagrams or bytes a second: one in 1,000 s is slower than any
link worth emulating, and keeps each datagram's time on the link finite, where a rate that
underflows towards 0 (``0.000...1/s``) would put it at infinity (the timer cannot take it)."""
MAX_DELAY_S = 60.0
MAX_REORDER_DISTANCE = 1000
DEFAULT_DRAIN_TIMEOUT_S = 2.0
"""Seconds to send what the links still hold when stopping; the rest stays counted as queued."""
DEFAULT_RCVBUF = 4 * 2**20
READ_BATCH = 256
"""Datagrams read from one socket per wake-up, at most, so that neither direction starves."""
BASE_RSS_BYTES = 48 * 2**20
"""A proxy process at rest: the interpreter, uvloop, typer, rich (measured 39.6 MiB)."""
CLIENT_BYTES = 2048


class Direction(enum.Enum):
    UP = "up"
    """From the clients to the server."""
    DOWN = "down"
    """From the server back to the clients."""


_NUMBER = r"(\d+(?:\.\d*)?|\.\d+)"
_DURATION_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0}
_RATE_UNITS = {"": 1.0, "B": 1.0, "kB": 1e3, "MB": 1e6}


def parse_share(text: str) -> float:
    """``10%`` or ``0.1``: a probability, from 0 to 1."""
    found = re.fullmatch(_NUMBER + r"\s*(%?)", text.strip())
    if found is None:
        raise ValueError(f"write a share as 10% or 0.1, not {text!r}")
    value = float(found[1]) / (100 if found[2] else 1)
    if 1 < value <= 100 and not found[2]:  # a percentage without its sign
        raise ValueError(f"{found[1]} is not a percentage; write {found[1]}% (or {value / 100:g})")
    if value > 1:
        raise ValueError(f"must be 0% to 100% (or 0 to 1), not {text!r}")
    return value


def parse_duration(text: str) -> float:
    """``20ms``, ``1.5s`` or ``500us``, in seconds: the unit is required."""
    found = re.fullmatch(_NUMBER + r"\s*(us|ms|s)", text.strip())
    if found is None:
        raise ValueError(f"write a duration as 20ms, 0.5s or 500us, not {text!r}")
    return float(found[1]) * _DURATION_UNITS[found[2]]


def parse_count(text: str) -> int:
    if not text.strip().isdigit():
        raise ValueError(f"must be a whole number, not {text!r}")
    return int(text)


def parse_burst(text: str) -> float:
    """A mean burst length in datagrams: ``4``."""
    found = re.fullmatch(_NUMBER, text.strip())
    if found is None:
        raise ValueError(f"write a mean burst length in datagrams, such as 4, not {text!r}")
    return float(found[1])


class RateUnit(enum.Enum):
    DATAGRAMS = "datagrams"
    BYTES = "bytes"


@dataclass(frozen=True, slots=True)
class RateLimit:
    """A link's speed: so many datagrams, or bytes, a second."""

    per_s: float
    unit: RateUnit = RateUnit.DATAGRAMS

    def __str__(self) -> str:
        return f"{self.per_s:g}{'B' if self.unit is RateUnit.BYTES else ''}/s"

    def __float__(self) -> float:
        """The rate in its unit a second: what the ``rate`` knob's bounds are checked on."""
        return self.per_s


def parse_rate(text: str) -> RateLimit:
    """``1000/s`` (datagrams) or ``64kB/s``, ``1MB/s``, ``500B/s`` (bytes; k and M are 1000s)."""
    found = re.fullmatch(_NUMBER + r"\s*(B|kB|MB)?/s", text.strip())
    if found is None:
        raise ValueError(f"write a rate as 1000/s (datagrams) or 64kB/s (bytes), not {text!r}")
    unit = RateUnit.BYTES if found[2] else RateUnit.DATAGRAMS
    return RateLimit(float(found[1]) * _RATE_UNITS[found[2] or ""], unit)


def split_host_port(text: str) -> tuple[str, int]:
    """``127.0.0.1:5003``, ``[::1]:5003`` or ``localhost:5003`` as (host, port)."""
    found = re.fullmatch(r"\[([^\]]+)\]:(\d+)|([^:\[\]]+):(\d+)", text.strip())
    if found is None:
        raise ValueError(f"write HOST:PORT, such as 127.0.0.1:5002 or [::1]:5002, not {text!r}")
    host = found[1] or found[3]
    port = int(found[2] or found[4])
    if not 0 <= port <= MAX_PORT:
        raise ValueError(f"the port must be 0 to {MAX_PORT}, not {port}")
    return host, port


def knob(
    default: Any,
    help: str,
    parse: Callable[[str], Any],
    *,
    minimum: float | None = None,
    maximum: float | None = None,
) -> Any:
    """An :class:`Impairment` field: its range, its help (the option's), and how it is written."""
    metadata = {"bounds": Bounds(minimum, maximum), "help": help, "parse": parse}
    return field(default=default, metadata=metadata)


@dataclass(frozen=True, slots=True)
class Impairment:
    """What one direction of the link does to datagrams; the default does nothing.

    Checked when built: a wrong value raises :class:`~udpchat.settings.ConfigError` (a
    ``ValueError``) naming the field.
    """

    loss: float = knob(
        0.0, "Share of datagrams lost (10% or 0.1).", parse_share, minimum=0, maximum=1
    )
    burst: float | None = knob(
        None,
        "Mean length of a run of losses, in datagrams: --loss then comes in bursts (simple "
        "Gilbert model: a lossless state and a state that loses every datagram).",
        parse_burst,
        minimum=1,
        maximum=1e6,
    )
    delay_s: float = knob(
        0.0, "Delay added to every datagram (20ms).", parse_duration, minimum=0, maximum=MAX_DELAY_S
    )
    jitter_s: float = knob(
        0.0,
        "Spread of the delay: uniform within --delay plus or minus this (5ms); never reorders.",
        parse_duration,
        minimum=0,
        maximum=MAX_DELAY_S,
    )
    reorder: float = knob(
        0.0,
        "Share of datagrams held back until --reorder-distance later datagrams of the same "
        "client have gone ahead.",
        parse_share,
        minimum=0,
        maximum=1,
    )
    reorder_distance: int = knob(
        1,
        "How many later datagrams of the same client overtake a reordered one.",
        parse_count,
        minimum=1,
        maximum=MAX_REORDER_DISTANCE,
    )
    reorder_hold_s: float = knob(
        DEFAULT_REORDER_HOLD_S,
        "How long a reordered datagram waits for those that are to overtake it, at most.",
        parse_duration,
        minimum=0.001,
        maximum=MAX_DELAY_S,
    )
    duplicate: float = knob(
        0.0,
        "Share of datagrams sent twice, the copy right behind.",
        parse_share,
        minimum=0,
        maximum=1,
    )
    corrupt: float = knob(
        0.0, "Share of datagrams sent with one byte flipped.", parse_share, minimum=0, maximum=1
    )
    rate: RateLimit | None = knob(
        None,
        "Speed limit: 1000/s (datagrams) or 64kB/s (bytes); beyond it datagrams wait in a "
        "queue of --rate-queue, and the tail is dropped.",
        parse_rate,
        minimum=MIN_RATE_PER_S,
    )
    rate_queue: int = knob(
        DEFAULT_RATE_QUEUE,
        "Datagrams waiting at the rate limit, at most.",
        parse_count,
        minimum=1,
        maximum=MAX_RATE_QUEUE,
    )

    def __post_init__(self) -> None:
        check_bounds(self)
        if self.jitter_s > self.delay_s:
            raise ConfigError(
                "jitter_s",
                f"must be at most {{delay_s}} ({self.delay_s:g} s), not {self.jitter_s:g} s: "
                "a delay cannot be negative",
            )
        if self.burst is not None:
            if not 0 < self.loss < 1:
                raise ConfigError(
                    "burst", "needs {loss} above 0% and below 100% (or write off: no bursts)"
                )
            if self.burst < self.loss / (1 - self.loss):
                raise ConfigError(
                    "burst",
                    f"must be at least {self.loss / (1 - self.loss):.3g} for a {{loss}} of "
                    f"{self.loss:.1%}, not {self.burst:g}",
                )

    @property
    def burst_transitions(self) -> tuple[float, float] | None:
        """(p, r): the chances of entering and of leaving the losing state at each datagram,
        such that the share lost is ``loss`` and a run of losses lasts ``burst`` on average;
        None for independent losses."""
        if self.burst is None:
            return None
        leave = 1 / self.burst
        return leave * self.loss / (1 - self.loss), leave

    @property
    def active(self) -> bool:
        """Whether it does anything at all."""
        return self != Impairment()

    @property
    def delays(self) -> bool:
        """Whether datagrams wait a time counted from their arrival (``--delay``). The rate
        limit counts from the read instead: what was read late still leaves spaced."""
        return self.delay_s > 0

    @staticmethod
    def option(name: str) -> tuple[str, str, str, str | None]:
        """A field's option as the command line writes it: (``--reorder-distance``, its
        metavar, its help, its default as written, or None where the default is off)."""
        for each in fields(Impairment):
            if each.name == name:
                metavar, write = _WRITTEN[each.metadata["parse"]]
                default = write(each.default) if each.default else None
                return f"--{_written_name(name)}", metavar, str(each.metadata["help"]), default
        raise KeyError(name)


def _written_name(name: str) -> str:
    """``reorder_hold_s`` as the command line and the texts write it: ``reorder-hold``."""
    return name.removesuffix("_s").replace("_", "-")


IMPAIRMENT_FIELDS = tuple(each.name for each in fields(Impairment))
_WRITTEN: dict[Callable[[str], Any], tuple[str, Callable[[Any], str]]] = {
    parse_share: ("SHARE", lambda share: f"{share * 100:g}%"),
    parse_duration: ("TIME", lambda seconds: f"{seconds:g}s"),
    parse_count: ("N", str),
    parse_burst: ("LENGTH", lambda length: f"{length:g}"),
    parse_rate: ("RATE", str),
}
"""Each way of writing a value: its metavar, and a value written so that it parses back."""


OFF = "off"
"""The value that sets a knob back to its default: off for the knobs that do something
(``--rate off``, ``up:off``), the default for the others (``--reorder-distance off`` is 1).
What takes back a knob that is off by default, such as ``--burst`` or ``--rate``, in a change
(``PUT /api/impairment``) or over a profile."""


def _value(name: str, written: str) -> Any:
    """Field ``name``'s value as ``written``: :data:`OFF`, or its parser's reading."""
    for each in fields(Impairment):
        if each.name == name:
            if written.strip() == OFF:
                return each.default
            return each.metadata["parse"](written)
    raise KeyError(name)


def impairments(
    settings: Mapping[str, Sequence[str]],
) -> dict[Direction, Impairment]:
    """Each direction's :class:`Impairment` from values as written on the command line:
    ``{"loss": ["10%", "down:1%"]}`` is 10% up and 1% down. A value applies to both
    directions unless it starts with ``up:`` or ``down:``; a later value overrides an earlier
    one, and :data:`OFF` sets the knob back to its default. Raises
    :class:`~udpchat.settings.ConfigError` naming the field."""
    values: dict[Direction, dict[str, Any]] = {direction: {} for direction in Direction}
    for name, texts in settings.items():
        for text in texts:
            where, _, written = text.rpartition(":") if text[:1].isalpha() else ("", "", text)
            try:
                directions = _directions(where)
                value = _value(name, written)
            except ValueError as error:
                raise ConfigError(name, str(error)) from None
            for direction in directions:
                values[direction][name] = value
    built = {}
    for direction, chosen in values.items():
        try:
            built[direction] = Impairment(**chosen)
        except ConfigError as error:
            if values[Direction.UP] == values[Direction.DOWN]:
                raise
            raise ConfigError(error.setting, f"{direction.value}: {error.problem}") from None
    return built


def written(impairment: Impairment) -> dict[str, str]:
    """Each knob that is not at its default, written as its option takes it (``10%``, ``0.02s``,
    ``1000/s``): what :func:`impairments` reads back as ``impairment``."""
    shown = {}
    for each in fields(impairment):
        value = getattr(impairment, each.name)
        if value != each.default:
            shown[each.name] = _WRITTEN[each.metadata["parse"]][1](value)
    return shown


def changed(
    current: Mapping[Direction, Impairment], settings: Mapping[str, Sequence[str]]
) -> dict[Direction, Impairment]:
    """``current`` with the knobs ``settings`` names set as the options write them
    (``{"loss": ["up:10%"]}``); the others keep their values. A wrong knob or value raises
    :class:`~udpchat.settings.ConfigError` naming it, as the command line's option would."""
    texts: dict[str, list[str]] = {}
    for direction, impairment in current.items():
        for name, value in written(impairment).items():
            texts.setdefault(name, []).append(f"{direction.value}:{value}")
    for name, values in settings.items():
        texts.setdefault(name, []).extend(values)
    return impairments(texts)


OPTION_FIELDS = {_written_name(name): name for name in IMPAIRMENT_FIELDS}
"""Each knob by the name its option has without the dashes (``delay``, ``reorder-hold``)."""


def option_flag(setting: str) -> str:
    """The option that sets a knob (``--delay``), for a message in the command line's words."""
    return f"--{_written_name(setting)}"


def change_request(document: Mapping[str, object]) -> dict[str, list[str]]:
    """A change as ``PUT /api/impairment`` takes it, ``{"loss": "up:10%", "delay": "20ms"}``:
    each knob by its option's name, its value as the option writes it (or a list of them, a
    later one overriding an earlier one; ``null`` is :data:`OFF` both ways); as settings for
    :func:`changed`."""
    settings = {}
    for key, value in document.items():
        name = OPTION_FIELDS.get(key)
        if name is None:
            raise ConfigError(key, f"is not a setting of the link ({', '.join(OPTION_FIELDS)})")
        values = [OFF if value is None else value] if isinstance(value, str | None) else value
        if not isinstance(values, list) or not all(isinstance(each, str) for each in values):
            raise ConfigError(
                name, "write it as the option takes it: a string, a list of them, or null (off)"
            )
        settings[name] = values
    return settings


def _directions(prefix: str) -> tuple[Direction, ...]:
    if not prefix:
        return tuple(Direction)
    try:
        return (Direction(prefix),)
    except ValueError:
        raise ValueError(f"a direction is up: or down:, not {prefix}:") from None


def describe(impairment: Impairment) -> str:
    """What a direction does, as the options write it: ``loss=10% delay=20ms``."""
    shown = []
    for each in fields(impairment):
        value = getattr(impairment, each.name)
        if value == each.default:
            continue
        if each.metadata["parse"] is parse_share:
            text = f"{value * 100:g}%"
        elif each.metadata["parse"] is parse_duration:
            text = f"{value * 1000:g}ms"
        else:
            text = str(value)
        shown.append(f"{_written_name(each.name)}={text}")
    return " ".join(shown)


NO_SEED = "random"
"""What a :class:`ProxyConfig` without a seed does, in the command line's help."""


@dataclass(frozen=True, slots=True)
class ProxyConfig:
    """Everything an :class:`ImpairProxy` needs, checked when built (a
    :class:`~udpchat.settings.ConfigError` names the field)."""

    listen_host: str = DEFAULT_LISTEN[0]
    listen_port: int = setting(DEFAULT_LISTEN[1], minimum=0, maximum=MAX_PORT)
    target_host: str = DEFAULT_TARGET[0]
    target_port: int = setting(DEFAULT_TARGET[1], minimum=1, maximum=MAX_PORT)
    up: Impairment = Impairment()
    """What happens to the clients' datagrams on their way to the server."""
    down: Impairment = Impairment()
    """What happens to the server's answers on their way back."""
    seed: int | None = setting(None, minimum=0, maximum=2**63 - 1)
    """The same seed and the same datagrams give the same decisions; None: a random seed
    (:attr:`ImpairProxy.seed` says which, so that a run can be repeated): :data:`NO_SEED`."""
    max_clients: int = setting(DEFAULT_MAX_CLIENTS, minimum=1, maximum=MAX_CLIENTS)
    idle_timeout_s: float = setting(DEFAULT_IDLE_TIMEOUT_S, minimum=0.01, maximum=86_400)
    max_queue_bytes: int = setting(
        DEFAULT_MAX_QUEUE_BYTES, minimum=MIN_QUEUE_BYTES, maximum=MAX_QUEUE_BYTES
    )
    """What each direction holds at most, payloads and overhead."""
    drain_timeout_s: float = setting(DEFAULT_DRAIN_TIMEOUT_S, minimum=0, maximum=60)
    rcvbuf: int | None = setting(DEFAULT_RCVBUF, minimum=1, maximum=MAX_RCVBUF)
    """Receive buffer to ask for on the listening socket; None keeps the OS default."""
    stats_interval_s: float | None = setting(None, minimum=0.1)
    verbose: bool = False
    """Status lines (and the CLI's summary) with every counter; else what a person reads."""
    metrics_port: int | None = setting(None, minimum=0, maximum=MAX_PORT)
    metrics_host: str = "127.0.0.1"
    web: WebConfig | None = None
    """Serve the link's page (:mod:`udpchat.web`): what it injects over time, its settings
    and its seed, and changes to them (``PUT /api/impairment``); None: no page."""

    def __post_init__(self) -> None:
        check_bounds(self)
        for name in ("listen_host", "target_host", "metrics_host"):
            if not getattr(self, name):
                raise ConfigError(name, "must not be empty")

    def memory_bound_bytes(self) -> int:
        """The most memory the proxy process holds, whatever the traffic: the two links at
        their bound, the client table full, and one read batch of the largest datagrams."""
        return (
            BASE_RSS_BYTES
            + 2 * self.max_queue_bytes
            + self.max_clients * CLIENT_BYTES
            + READ_BATCH * (MAX_UDP_PAYLOAD + QUEUED_DATAGRAM_OVERHEAD_BYTES)
        )


def proxy_config(
    listen: str = "{}:{}".format(*DEFAULT_LISTEN),
    to: str = "{}:{}".format(*DEFAULT_TARGET),
    profile: str | None = None,
    **settings: Any,
) -> ProxyConfig:
    """A :class:`ProxyConfig` from values as the command line writes them: ``listen`` and
    ``to`` as ``HOST:PORT``, each :class:`Impairment` field as a list of values for
    :func:`impairments`, the other fields as they are. A :class:`~udpchat.settings.ConfigError`
    names the argument at fault (``listen``, ``to``, ``loss``, ``max_clients``). A ``profile``
    (:mod:`udpchat.impair.profiles`) comes first: the values given beside it override its."""
    written = {name: settings.pop(name) for name in IMPAIRMENT_FIELDS if name in settings}
    try:
        written = with_profile(profile, written)
    except ValueError as error:
        raise ConfigError("profile", str(error)) from None
    directions = impairments({name: values for name, values in written.items() if values})
    hosts = {}
    for argument, text in (("listen", listen), ("to", to)):
        try:
            hosts[argument] = split_host_port(text)
        except ValueError as error:
            raise ConfigError(argument, str(error)) from None
    (listen_host, listen_port), (target_host, target_port) = hosts["listen"], hosts["to"]
    try:
        return ProxyConfig(
            listen_host=listen_host,
            listen_port=listen_port,
            target_host=target_host,
            target_port=target_port,
            up=directions[Direction.UP],
            down=directions[Direction.DOWN],
            **settings,
        )
    except ConfigError as error:
        if error.setting not in ADDRESS_ARGUMENTS:
            raise
        raise ConfigError(ADDRESS_ARGUMENTS[error.setting], error.problem) from None


ADDRESS_ARGUMENTS = {
    "listen_host": "listen",
    "listen_port": "listen",
    "target_host": "to",
    "target_port": "to",
}
"""The :func:`proxy_config` argument that sets each address field."""
