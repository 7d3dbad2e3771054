"""The compiled fast path and its pure-Python twin give identical results on the same inputs.

Each compiled function is compared directly with its twin (``udpchat._fastpath`` against
``fastpath.py_*``, whichever ``udpchat.fastpath`` runs): on seed text at the grammar's edges
(read from :mod:`udpchat.wire`, as the compiled module reads them), on datagrams up to 64 KiB,
invalid UTF-8, NUL, CR/LF, terminal escapes and bidi controls; a wrong type raises TypeError in
both, never a crash.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from udpchat import fastpath, wire
from udpchat.accounting import JITTER_MIN_SPACING_S, DeliveryAccounting, Verdict
from udpchat.wire import format_line

compiled: Any = pytest.importorskip(
    "udpchat._fastpath", reason="the fast path is not compiled here (no C compiler)"
)

NAME_BYTES = st.sampled_from(list(b"aZ09._-") + list(b": \x00\xff\x1b\x7fpesan-"))
SEED_LIKE = st.builds(
    lambda name, counter, tail: bytes(name) + b": pesan ke-" + counter + bytes(tail),
    st.lists(NAME_BYTES, min_size=0, max_size=34),
    st.from_regex(rb"\A[0-9]{0,20}\Z"),
    st.lists(st.sampled_from(list(b"0\n -")), max_size=2),
)
DATAGRAMS = st.lists(st.one_of(SEED_LIKE, st.binary(max_size=60)), max_size=40)
SENDERS = st.sampled_from(["127.0.0.1", "::1", "10.1.2.3"])


def with_addresses(payloads: list[bytes]) -> list[tuple[bytes, tuple[str, int]]]:
    return [(payload, ("127.0.0.1", 40000 + index)) for index, payload in enumerate(payloads)]


def escaped(ip: str, text: str) -> bytes:
    return f"{format_line(ip, text)}\n".encode()


@given(DATAGRAMS)
def test_clean_seeds_agree(payloads: list[bytes]) -> None:
    datagrams = with_addresses(payloads)
    assert compiled.clean_seeds(datagrams) == fastpath.py_clean_seeds(datagrams)


@pytest.mark.parametrize(
    "payload",
    [
        b"alice: pesan ke-1",
        b"a" * 32 + b": pesan ke-999999999999999999",
        b"a" * 33 + b": pesan ke-1",
        b"alice: pesan ke-0",
        b"alice: pesan ke-01",
        b"alice: pesan ke-1234567890123456789",
        b"alice: pesan ke-",
        b": pesan ke-1",
        b"alice: pesan ke-1\n",
        b"al ice: pesan ke-1",
        "budí: pesan ke-1".encode(),
    ],
)
def test_clean_seeds_agree_at_the_edges(payload: bytes) -> None:
    datagrams = with_addresses([payload])
    found = compiled.clean_seeds(datagrams)
    assert found == fastpath.py_clean_seeds(datagrams)
    if payload == b"alice: pesan ke-1":
        assert found == ([(b"alice", 1)], [])


@given(DATAGRAMS, st.data())
def test_text_lines_agree(payloads: list[bytes], data: st.DataObject) -> None:
    datagrams = with_addresses(payloads)
    senders = [(data.draw(SENDERS), port) for _, (_, port) in datagrams]
    _, others = fastpath.py_clean_seeds(datagrams)
    texts = {index: datagrams[index][0].decode("utf-8", "replace") for index in others}
    compiled_prefixes: dict[str, bytes] = {}
    python_prefixes: dict[str, bytes] = {}
    lines = compiled.text_lines(datagrams, senders, texts, compiled_prefixes, escaped)
    python = fastpath.py_text_lines(datagrams, senders, texts, python_prefixes, escaped)
    assert lines == python
    assert compiled_prefixes == python_prefixes
    assert lines.count(b"\n") >= len(datagrams)


MAX_UDP = 65507
HOSTILE_PIECES = [
    b"\x00",
    b"\r\n",
    b"\n",
    b"\r",
    b"\x1b[31m",
    b"\x1b]0;title\x07",
    "\u202e".encode(),  # right-to-left override
    "\u2066".encode(),  # left-to-right isolate
    b"\xff",
    b"\xc3\x28",  # a broken two-byte sequence
    b"\xed\xa0\x80",  # an encoded surrogate
    b"\\x41",
    b"\\",
    "\u00e9".encode(),
    b": pesan ke-",
    b"1",
    b"0",
    b"a",
]
NAME = wire.NAME_CHARACTERS.encode()
EDGES = [
    NAME[:1] + b": pesan ke-1",
    b"a" * wire.MAX_USERNAME_LENGTH + b": pesan ke-" + b"9" * wire.CLEAN_COUNTER_DIGITS,
    b"a" * (wire.MAX_USERNAME_LENGTH + 1) + b": pesan ke-1",
    b"a: pesan ke-" + b"9" * (wire.CLEAN_COUNTER_DIGITS + 1),
    b"a: pesan ke-1" + b"0" * (wire.CLEAN_COUNTER_DIGITS - 1),
    b"a: pesan ke-1" + b"0" * wire.CLEAN_COUNTER_DIGITS,
    NAME + b": pesan ke-1",
    NAME[: wire.MAX_USERNAME_LENGTH] + b": pesan ke-1",
    NAME[-wire.MAX_USERNAME_LENGTH :] + b": pesan ke-12",
    b"a: pesan ke-0",
    b"a: pesan ke-01",
    b"a: pesan ke-",
    b": pesan ke-1",
    b"a:pesan ke-1",
    b"a: pesan ke-1 ",
    b" a: pesan ke-1",
    b"a: pesan ke-1\n",
    b"a: pesan ke-1\r\n",
    b"a\x00: pesan ke-1",
    b"a: pesan ke-1\x00",
    b"",
]
EDGES += [bytes([byte]) + b": pesan ke-1" for byte in range(256)]
LARGE = st.builds(
    lambda piece, repeat, seed: (seed + piece * repeat)[:MAX_UDP],
    st.binary(min_size=1, max_size=64),
    st.integers(0, MAX_UDP),
    st.sampled_from([b"", b"a: pesan ke-1", b"a" * 32]),
)
HOSTILE = st.builds(b"".join, st.lists(st.sampled_from(HOSTILE_PIECES), max_size=40))
MANY = st.lists(
    st.one_of(st.sampled_from(EDGES), HOSTILE, LARGE, st.binary(max_size=100)), max_size=30
)


def datagrams_from(payloads: list[bytes]) -> list[tuple[bytes, tuple[str, int]]]:
    return [
        (payload, (f"10.0.0.{index % 3}", 40000 + index)) for index, payload in enumerate(payloads)
    ]


@settings(max_examples=150, deadline=None)  # 64 KiB datagrams: slow on a busy machine
@given(MANY)
def test_clean_seeds_agree_on_hostile_and_large_datagrams(payloads: list[bytes]) -> None:
    datagrams = datagrams_from(payloads)
    assert compiled.clean_seeds(datagrams) == fastpath.py_clean_seeds(datagrams)


def test_clean_seeds_agree_at_every_edge_of_the_grammar() -> None:
    datagrams = datagrams_from(EDGES)
    seeds, others = compiled.clean_seeds(datagrams)
    assert (seeds, others) == fastpath.py_clean_seeds(datagrams)
    assert seeds[1] == (b"a" * wire.MAX_USERNAME_LENGTH, int("9" * wire.CLEAN_COUNTER_DIGITS))
    assert seeds[2] is None and seeds[3] is None
    clean_bytes = {byte for byte, fields in enumerate(seeds[-256:]) if fields is not None}
    assert clean_bytes == set(NAME)


@settings(max_examples=150, deadline=None)  # 64 KiB datagrams: slow on a busy machine
@given(MANY)
def test_text_lines_agree_on_hostile_and_large_datagrams(payloads: list[bytes]) -> None:
    """The slow path's texts as the pipeline makes them (:func:`wire.decode`), escaped."""
    datagrams = datagrams_from(payloads)
    senders = [address for _, address in datagrams]
    _, others = fastpath.py_clean_seeds(datagrams)
    texts = {index: wire.decode(datagrams[index][0])[0] for index in others}
    compiled_prefixes: dict[str, bytes] = {}
    python_prefixes: dict[str, bytes] = {}
    lines = compiled.text_lines(datagrams, senders, texts, compiled_prefixes, escaped)
    assert lines == fastpath.py_text_lines(datagrams, senders, texts, python_prefixes, escaped)
    assert compiled_prefixes == python_prefixes
    assert lines.count(b"\n") == len(datagrams)  # one line each: nothing unescaped


STEP = st.tuples(st.integers(0, 3), st.sampled_from([1, 1, 1, 2, 0, -1, -5, 40]))
"""A sender and how far its counter moves: next, skipped, repeated, back, not seed text."""
RUN = st.tuples(STEP, st.integers(1, 6)).map(lambda run: [run[0]] * run[1])
"""The same step a few times in a row: a sender's datagrams come in runs."""
BATCHES = st.lists(
    st.lists(RUN, max_size=12).map(lambda runs: [step for run in runs for step in run]),
    max_size=12,
)


def account_in_batches(
    account_next: Callable[..., list[Any]], steps: list[list[tuple[int, int]]], gaps: list[float]
) -> tuple[list[Any], DeliveryAccounting]:
    """Feed ``account_next`` the same senders' counters (each step a sender and how far its
    counter moves: next, skipped, repeated, back, restarted) batch by batch, with the clock
    moving by ``gaps`` so that jitter is sampled."""
    accounting = DeliveryAccounting(max_senders=3, seed=1)
    counters = [0] * 4
    # One address and one name object per sender, as the reader and clean_seeds give them, so
    # that a run of one sender's datagrams takes the compiled path's shortcut.
    senders = [(("127.0.0.1", 40000 + sender), b"u%d" % sender) for sender in range(4)]
    arrival, verdicts = 0.0, []
    for batch, gap in zip(steps, gaps, strict=False):
        arrival += gap
        addresses, seeds = [], []
        for sender, step in batch:
            counters[sender] = max(1, counters[sender] + step)
            address, name = senders[sender]
            addresses.append(address)
            seeds.append((name, counters[sender]) if step != 40 else None)
        verdicts.extend(
            account_next(
                accounting._senders,
                accounting.record,
                addresses,
                seeds,
                arrival,
                JITTER_MIN_SPACING_S,
                Verdict.NEW,
            )
        )
    return verdicts, accounting


@settings(deadline=None)  # up to 12 batches of 72 through record(): slow on a busy machine
@given(BATCHES, st.lists(st.sampled_from([0.0, 0.001, 0.02, 0.5]), min_size=12, max_size=12))
def test_account_next_agrees(steps: list[list[tuple[int, int]]], gaps: list[float]) -> None:
    """Same verdicts and the same figures, jitter included, with senders evicted (4 senders
    in a table of 3) and every case the inline path hands to ``record``."""
    compiled_verdicts, compiled_accounting = account_in_batches(compiled.account_next, steps, gaps)
    python_verdicts, python_accounting = account_in_batches(fastpath.py_account_next, steps, gaps)
    assert compiled_verdicts == python_verdicts
    assert compiled_accounting.senders() == python_accounting.senders()
    assert compiled_accounting.totals() == python_accounting.totals()


def seed_batch() -> list[tuple[bytes, tuple[str, int]]]:
    return [(b"a: pesan ke-1", ("127.0.0.1", 1))]


WRONG_TYPES: list[tuple[str, Callable[[Any], Any]]] = [
    ("clean_seeds: no list", lambda module: module_clean_seeds(module)(None)),
    ("clean_seeds: an entry", lambda module: module_clean_seeds(module)([None])),
    ("clean_seeds: no bytes", lambda module: module_clean_seeds(module)([(None, ("x", 1))])),
    ("clean_seeds: text", lambda module: module_clean_seeds(module)([("a: pesan ke-1", 1)])),
    ("clean_seeds: a number", lambda module: module_clean_seeds(module)([5])),
    (
        "text_lines: a sender",
        lambda module: module_text_lines(module)(seed_batch(), [None], {}, {}, escaped),
    ),
    (
        "text_lines: no bytes",
        lambda module: module_text_lines(module)([("text", ("x", 1))], [("x", 1)], {}, {}, escaped),
    ),
    (
        "text_lines: no list",
        lambda module: module_text_lines(module)(None, [("x", 1)], {}, {}, escaped),
    ),
    (
        "account_next: a seed",
        lambda module: module_account_next(module)({}, None, [("x", 1)], [5], 0.0, 0.01, None),
    ),
    (
        "account_next: no list",
        lambda module: module_account_next(module)({}, None, None, [], 0.0, 0.01, None),
    ),
]


def module_clean_seeds(module: Any) -> Any:
    return module.clean_seeds if module is compiled else fastpath.py_clean_seeds


def module_text_lines(module: Any) -> Any:
    return module.text_lines if module is compiled else fastpath.py_text_lines


def module_account_next(module: Any) -> Any:
    return module.account_next if module is compiled else fastpath.py_account_next


@pytest.mark.parametrize("twin", ["compiled", "python"])
@pytest.mark.parametrize(("what", "call"), WRONG_TYPES, ids=[what for what, _ in WRONG_TYPES])
def test_a_wrong_type_raises_type_error(twin: str, what: str, call: Callable[[Any], Any]) -> None:
    with pytest.raises(TypeError):
        call(compiled if twin == "compiled" else fastpath)


@pytest.mark.parametrize(("value", "pure"), [("1", True), ("yes", True), ("0", False), ("", False)])
def test_udpchat_pure_forces_the_python_loops(value: str, pure: bool) -> None:
    shown = subprocess.run(
        [
            sys.executable,
            "-c",
            "from udpchat import fastpath as f; "
            "print(f.COMPILED, f.DatagramReader is None, f.clean_seeds is f.py_clean_seeds)",
        ],
        env={**os.environ, fastpath.PURE_VARIABLE: value},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert shown == [str(not pure), str(pure or not compiled.HAVE_RECVMMSG), str(pure)]
