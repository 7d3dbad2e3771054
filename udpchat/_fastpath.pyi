from collections.abc import Callable
from typing import Any

def clean_seeds(
    datagrams: list[tuple[bytes, Any]],
) -> tuple[list[tuple[bytes, int] | None], list[int]]: ...
def text_lines(
    datagrams: list[tuple[bytes, Any]],
    senders: list[tuple[str, int]],
    texts: dict[int, str],
    prefixes: dict[str, bytes],
    format_other: Callable[[str, str], bytes],
) -> bytes: ...
def account_next(
    senders: dict[Any, Any],
    record: Callable[[Any, int, float], Any],
    addresses: list[Any],
    seeds: list[tuple[bytes, int] | None],
    arrival: float,
    jitter_spacing_s: float,
    new: object,
) -> list[Any]: ...

HAVE_RECVMMSG: bool

class DatagramReader:
    def __init__(self, fd: int, max_size: int, slots: int) -> None: ...
    def read(self, datagrams: list[tuple[bytes, Any]], refused: list[tuple[int, Any]]) -> int: ...
