"""The compiled fast path and its pure-Python twin give identical results on the same inputs."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from udpchat import fastpath
from udpchat.wire import format_line

pytestmark = pytest.mark.skipif(
    not fastpath.COMPILED, reason="the fast path is not compiled here (no C compiler)"
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
    assert fastpath.clean_seeds(datagrams) == fastpath.py_clean_seeds(datagrams)


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
    compiled = fastpath.clean_seeds(datagrams)
    assert compiled == fastpath.py_clean_seeds(datagrams)
    if payload == b"alice: pesan ke-1":
        assert compiled == ([(b"alice", 1)], [])


@given(DATAGRAMS, st.data())
def test_text_lines_agree(payloads: list[bytes], data: st.DataObject) -> None:
    datagrams = with_addresses(payloads)
    senders = [(data.draw(SENDERS), port) for _, (_, port) in datagrams]
    _, others = fastpath.py_clean_seeds(datagrams)
    texts = {index: datagrams[index][0].decode("utf-8", "replace") for index in others}
    compiled_prefixes: dict[str, bytes] = {}
    python_prefixes: dict[str, bytes] = {}
    compiled = fastpath.text_lines(datagrams, senders, texts, compiled_prefixes, escaped)
    python = fastpath.py_text_lines(datagrams, senders, texts, python_prefixes, escaped)
    assert compiled == python
    assert compiled_prefixes == python_prefixes
    assert compiled.count(b"\n") >= len(datagrams)
