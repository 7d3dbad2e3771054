"""The summary's text: the sender table lines up on a terminal whatever the names in it."""

from __future__ import annotations

import re
import unicodedata

from udpchat.counters import SenderStats
from udpchat.report import format_sender_table


def sender(username: str, port: int) -> SenderStats:
    return SenderStats(
        ip="127.0.0.1",
        port=port,
        username=username,
        received=100,
        highest_counter=100,
        lost=0,
        duplicates=0,
        reordered=0,
        late=0,
        restarts=0,
        jitter_s=0.001,
        last_heard_s=0.0,
    )


def cells(text: str) -> int:
    """The oracle for the names below (ASCII and CJK only): two terminal cells for an East
    Asian wide character, one for any other."""
    return sum(2 if unicodedata.east_asian_width(char) == "W" else 1 for char in text)


def right_edges(line: str) -> list[int]:
    """The terminal column where each of the line's cells ends."""
    return [cells(line[: found.end()]) for found in re.finditer(r"\S+", line)]


def test_the_sender_table_lines_up_after_wide_characters() -> None:
    names = ["alice", "用户", "数据包用户名字很长"]
    lines = format_sender_table([sender(name, 40000 + n) for n, name in enumerate(names)])
    edges = [right_edges(line)[2:] for line in lines]  # the figures, after sender and username
    assert all(row == edges[0] for row in edges), "\n".join(lines)
