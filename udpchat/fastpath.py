"""The two per-message loops that cost the most, in pure Python: spotting clean seed text and
writing its lines. ``udpchat/_fastpath.pyx`` is the same in Cython, compiled by the normal
``pip install`` where a C compiler is found; :data:`COMPILED` says which one runs. A test holds
both to identical results on the same inputs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from udpchat.accounting import SeedFields
from udpchat.wire import match_clean_seed

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


try:
    from udpchat._fastpath import clean_seeds, text_lines
except ImportError:  # not compiled here: the same code, in Python
    clean_seeds, text_lines = py_clean_seeds, py_text_lines
    COMPILED = False
else:
    COMPILED = True

__all__ = ["COMPILED", "clean_seeds", "py_clean_seeds", "py_text_lines", "text_lines"]
