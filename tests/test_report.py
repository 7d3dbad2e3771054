"""The summary's text: the sender table lines up on a terminal whatever the names in it."""

from __future__ import annotations

import dataclasses
import re
import unicodedata

from hypothesis import given, settings
from hypothesis import strategies as st

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


def test_rarely_non_zero_columns_show_only_when_a_sender_has_them() -> None:
    plain = [sender("alice", 40000), sender("bob", 40001)]
    (header, *_) = format_sender_table(plain)
    assert header.split() == ["sender", "username", "received", "lost", "loss", "jitter_ms"]
    reordered = [plain[0], dataclasses.replace(plain[1], reordered=3)]
    (header, *_) = format_sender_table(reordered)
    assert header.split() == [
        "sender", "username", "received", "lost", "loss", "reordered", "jitter_ms"
    ]  # fmt: skip


def test_a_long_address_is_cut_in_the_middle_keeping_its_port_an_ipv4_one_is_whole() -> None:
    senders = [
        dataclasses.replace(sender("alice", 40000), ip="2001:db8:85a3:1234:5678:8a2e:370:7334"),
        dataclasses.replace(sender("bob", 50001), ip="203.113.200.101"),
    ]
    lines = format_sender_table(senders)
    assert any("203.113.200.101:50001" in line for line in lines)
    (v6,) = [line for line in lines if "alice" in line]
    assert v6.startswith("[2001:db8:") and "\u2026" in v6 and "]:40000" in v6.split()[0]


names = st.text(  # the oracle's alphabet: printable ASCII and CJK
    st.one_of(
        st.characters(min_codepoint=0x21, max_codepoint=0x7E),
        st.characters(min_codepoint=0x4E00, max_codepoint=0x9FFF),
    ),
    min_size=1,
    max_size=32,
)
figures = st.integers(min_value=0, max_value=10**12)


@settings(max_examples=200, deadline=None)
@given(
    rows=st.lists(
        st.tuples(names, st.sampled_from(["127.0.0.1", "fe80::1234:5678:9abc:def0%eth0"]),
                  figures, figures, figures, figures, figures),
        min_size=1,
        max_size=5,
    )
)  # fmt: skip
def test_the_sender_table_fits_80_columns_whatever_the_names_and_figures(
    rows: list[tuple[str, str, int, int, int, int, int]],
) -> None:
    senders = [
        dataclasses.replace(
            sender(name, 65535),
            ip=ip,
            received=received,
            lost=lost,
            duplicates=duplicates,
            reordered=reordered,
            restarts=restarts,
        )
        for name, ip, received, lost, duplicates, reordered, restarts in rows
    ]
    lines = format_sender_table(senders)
    assert all(2 + cells(line) <= 80 for line in lines), lines  # with the summary's indent
    shown = " ".join(lines[1:]).split()
    assert all(str(each.received) in shown for each in senders)  # the figures whole
