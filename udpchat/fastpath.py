"""The per-message loops that cost the most, in pure Python: spotting clean seed text,
settling a sender's next counter, and writing the lines. ``udpchat/_fastpath.pyx`` is the same
in Cython, compiled by the normal ``pip install`` where a C compiler is found; :data:`COMPILED`
says which one runs. Tests hold both to identical results on the same inputs.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from udpchat.wire import SeedFields, match_clean_seed

if TYPE_CHECKING:
    from udpchat import _fastpath

LineFormatter = Callable[[str, str], bytes]
"""``[ip] text`` with the text escaped, as bytes: for what is not clean seed text."""


def py_clean_seeds(
    datagrams: list[tuple[bytes, Any]],
) -> tuple[list[SeedFields | None], list[int]]:
    """(username, counter) per datagram that is clean seed text, None for the others, and the
    others' positions (they take the slow path)."""
    seeds: list[SeedFields | None] = []
    others: list[int] = []
    append = seeds.append
    match = match_clean_seed
    for index, (data, _) in enumerate(datagrams):
        found = match(data)
        if found is None:
            append(None)
            others.append(index)
        else:
            append((found[1], int(found[2])))
    return seeds, others


def py_text_lines(
    datagrams: list[tuple[bytes, Any]],
    senders: list[tuple[str, int]],
    texts: dict[int, str],
    prefixes: dict[str, bytes],
    format_other: LineFormatter,
) -> bytes:
    """Every datagram's ``[ip] text`` line; clean seed text is copied as it came, behind a
    cached ``[ip] `` prefix (added to ``prefixes``), the others are formatted from ``texts``."""
    parts: list[bytes] = []
    append = parts.append
    for index, ((data, _), (ip, _)) in enumerate(zip(datagrams, senders, strict=True)):
        text = texts.get(index)
        if text is not None:
            append(format_other(ip, text))
            continue
        prefix = prefixes.get(ip)
        if prefix is None:
            prefix = prefixes[ip] = f"[{ip}] ".encode()
        append(prefix)
        append(data)
        append(b"\n")
    return b"".join(parts)


Record = Callable[[Any, int, float], Any]
"""The accounting's way with every case but the common one: ``record(key, counter, arrival)``."""


def py_account_next(
    senders: dict[Any, Any],
    record: Record,
    addresses: list[Any],
    seeds: list[SeedFields | None],
    arrival: float,
    jitter_spacing_s: float,
    new: object,
) -> list[Any]:
    """The accounting's batch loop: a sender's next counter is settled inline (``new``), every
    other case goes through ``record``; None where a datagram was not seed text. ``senders``
    maps ``(address, name)`` to a sequence with ``highest``, ``received``, ``last_arrival``
    and ``sample_jitter``."""
    if len(addresses) != len(seeds):
        raise ValueError("addresses and seeds differ in length")
    verdicts: list[Any] = []
    append = verdicts.append
    find = senders.get
    for address, seed in zip(addresses, seeds, strict=True):
        if seed is None:
            append(None)
            continue
        name, counter = seed
        key = (address, name)
        sequence = find(key)
        if sequence is None or counter != sequence.highest + 1:
            append(record(key, counter, arrival))
            continue
        sequence.highest = counter
        sequence.received += 1
        if arrival - sequence.last_arrival >= jitter_spacing_s:
            sequence.sample_jitter(counter, arrival)
        append(new)
    return verdicts


PURE_VARIABLE = "UDPCHAT_PURE"
"""Set (to anything but empty or ``0``) in the environment, the pure-Python loops run even
where the compiled ones are there: so that the tests run the fallback too, and a suspected
compiled-path bug can be ruled out in the field."""

DatagramReader: type[_fastpath.DatagramReader] | None = None
"""The batch reader (``recvmmsg``, Linux, compiled only; no pure-Python twin: without it the
loop's own transport reads one datagram at a time)."""

if os.environ.get(PURE_VARIABLE, "") not in ("", "0"):
    account_next, clean_seeds, text_lines = py_account_next, py_clean_seeds, py_text_lines
    COMPILED = False
else:
    try:
        from udpchat import _fastpath
    except ImportError:  # not compiled here: the same code, in Python
        account_next, clean_seeds, text_lines = py_account_next, py_clean_seeds, py_text_lines
        COMPILED = False
    else:
        account_next, clean_seeds, text_lines = (
            _fastpath.account_next,
            _fastpath.clean_seeds,
            _fastpath.text_lines,
        )
        COMPILED = True
        if _fastpath.HAVE_RECVMMSG:
            DatagramReader = _fastpath.DatagramReader

__all__ = [
    "COMPILED",
    "PURE_VARIABLE",
    "DatagramReader",
    "account_next",
    "clean_seeds",
    "py_account_next",
    "py_clean_seeds",
    "py_text_lines",
    "text_lines",
]
