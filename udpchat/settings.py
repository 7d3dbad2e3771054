"""Settings declared once: a config field's range (:func:`setting`), its check
(:func:`check_bounds`) and the error that names it (:class:`ConfigError`).

Below every config (the server's, the proxy's, the clients'), so that each declares its ranges
here and the command line takes its options' ranges, and their wording, from the same place.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, SupportsFloat


def _written(number: float) -> str:
    """A bound as a person writes it: whole numbers in full (``4294967295``, not ``4.29e+09``)."""
    return str(int(number)) if float(number).is_integer() else f"{number:g}"


@dataclass(frozen=True, slots=True)
class Bounds:
    """The range a numeric setting must be in (both ends included); None: open."""

    minimum: float | None = None
    maximum: float | None = None

    def __str__(self) -> str:
        """The range in words: ``1 to 1024``, ``at least 1``, ``at most 60``, or ``any``."""
        if self.minimum is not None and self.maximum is not None:
            return f"{_written(self.minimum)} to {_written(self.maximum)}"
        if self.minimum is not None:
            return f"at least {_written(self.minimum)}"
        if self.maximum is not None:
            return f"at most {_written(self.maximum)}"
        return "any"

    def problem(self, value: SupportsFloat) -> str | None:
        """What is wrong with ``value``, or None. NaN and infinities are always wrong: every
        comparison with NaN is false, so a range alone would let it through, and no setting
        means "never" or "unlimited" by infinity (those are None or 0, each said in its help).
        A value that is not an int is read as a float (a :class:`SupportsFloat`, such as a
        rate with its unit); an int is compared exactly, however large."""
        number = value if isinstance(value, int) else float(value)
        finite = isinstance(number, int) or math.isfinite(number)
        if finite and self._within(number):
            return None
        return f"must be {self}, not {value}"

    def _within(self, number: float) -> bool:
        too_low = self.minimum is not None and number < self.minimum
        too_high = self.maximum is not None and number > self.maximum
        return not too_low and not too_high


def setting(default: Any, *, minimum: float | None = None, maximum: float | None = None) -> Any:
    """A config field with the range it is checked against (and the CLI's option too)."""
    return field(default=default, metadata={"bounds": Bounds(minimum, maximum)})


SECRET_SHOWN = "***"
"""What a record or a log shows of a secret setting (:func:`secret`) that is set."""


def secret() -> Any:
    """A config field that holds a secret (a token): off by default, left out of the config's
    repr, and written as :data:`SECRET_SHOWN` wherever a config is written down (a record's
    header), so that a shared record or log does not open what it guards."""
    return field(default=None, repr=False, metadata={"secret": True})


def bounds_of(config: type[Any], name: str) -> Bounds:
    """The range a config dataclass declares for its field ``name``: for the CLI's options,
    so that the two cannot disagree."""
    for each in fields(config):
        if each.name == name:
            bounds: Bounds = each.metadata["bounds"]
            return bounds
    raise KeyError(name)


class ConfigError(ValueError):
    """A config value that cannot work. :attr:`setting` names it; :attr:`problem` says what is
    wrong, with ``{name}`` wherever it names another setting, so that the command line can say
    its options' names instead (:meth:`describe`)."""

    def __init__(self, setting: str, problem: str) -> None:
        self.setting = setting
        self.problem = problem
        super().__init__(self.describe(str))

    def describe(self, name: Callable[[str], str]) -> str:
        """The message, each setting called by ``name(setting)``."""
        mentioned = {other: name(other) for other in re.findall(r"\{(\w+)\}", self.problem)}
        return f"{name(self.setting)}: {self.problem.format(**mentioned)}"


def check_bounds(config: Any) -> None:
    """Raise :class:`ConfigError` for the first field of a config dataclass outside the range
    its :func:`setting` declares; None is always in range (the setting is off)."""
    check_values(type(config), {each.name: getattr(config, each.name) for each in fields(config)})


def check_values(config: type[Any], values: Mapping[str, Any]) -> None:
    """:func:`check_bounds` for values meant for ``config``'s fields before it is built: for
    options that are checked even when what they configure is off (``--record-interval``
    without ``--record``)."""
    for each in fields(config):
        bounds = each.metadata.get("bounds")
        value = values.get(each.name)
        if bounds is not None and value is not None:
            problem = bounds.problem(value)
            if problem is not None:
                raise ConfigError(each.name, problem)


_HOST_AND_PORT = re.compile(r"(?:\[(?P<bracketed>[^\]]*)\]|(?P<plain>[^:\[\]]+)):(?P<port>[0-9]+)")
"""``127.0.0.1:5002``, ``localhost:5002`` or ``[::1]:5002``: an address with its port."""


def host_problem(host: str, host_setting: str = "host", port_setting: str = "port") -> str | None:
    """Why ``host`` is not what a host setting takes (an address or a name), with the fix; or
    None. Checked before any lookup, so that a port or a URL written into it is said as such
    rather than as "Name or service not known", and no DNS query leaves for it. The text names
    the settings as ``{host}`` and ``{port}`` placeholders, for a :class:`ConfigError` to name
    as the caller calls them."""
    shown = host.replace("{", "{{").replace("}", "}}")
    fix = f"{{{host_setting}}} takes an address; put the port in {{{port_setting}}}"
    if "://" in host:
        return f"{shown} is a URL: {fix}"
    found = _HOST_AND_PORT.fullmatch(host)
    if found is not None:
        address = (found["bracketed"] or found["plain"]).replace("{", "{{").replace("}", "}}")
        example = f"{{{host_setting}}} {address} {{{port_setting}}} {found['port']}"
        return f"{shown} has a port in it: {fix} ({example})"
    if re.fullmatch(r"[0-9.]+", host) and not _is_ipv4(host):
        return f"{shown} is not an IPv4 address (four numbers, each 0 to 255)"
    return None


def _is_ipv4(text: str) -> bool:
    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        return False
    return True


def check_host(config: Any, host_setting: str = "host", port_setting: str = "port") -> None:
    """Raise :class:`ConfigError` when ``config``'s host setting is empty or not a host
    (:func:`host_problem`)."""
    host = getattr(config, host_setting)
    problem = "must not be empty" if not host else host_problem(host, host_setting, port_setting)
    if problem is not None:
        raise ConfigError(host_setting, problem)
