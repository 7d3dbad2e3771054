"""The per-message loops that cost the most, in pure Python: spotting clean seed text,
settling a sender's next counter, and writing the lines. ``udpchat/_fastpath.pyx`` is the same
in Cython, compiled by the normal ``pip install`` where a C compiler is found; :data:`COMPILED`
says which one runs. Tests hold both to identical results on the same inputs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from udpchat.wire import SeedFields, match_clean_seed

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


try:
    from udpchat._fastpath import account_next, clean_seeds, text_lines
except ImportError:  # not compiled here: the same code, in Python
    account_next, clean_seeds, text_lines = py_account_next, py_clean_seeds, py_text_lines
    COMPILED = False
else:
    COMPILED = True

__all__ = [
    "COMPILED",
    "account_next",
    "clean_seeds",
    "py_account_next",
    "py_clean_seeds",
    "py_text_lines",
    "text_lines",
]
