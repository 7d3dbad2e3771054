"""The load generator and the benchmark tooling, at small rates (nothing here is timed)."""

from __future__ import annotations

import asyncio
import re
import signal
from pathlib import Path

import pytest

from tests.helpers import (
    LOOPBACK,
    BlockingSeedServer,
    assert_summary_balanced,
    start_cli,
    start_cli_server,
)
from udpchat.load import LoadConfig, NotLoopbackError, run_load
from udpchat.wire import split_seed

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("use_sendmmsg", [True, False])
async def test_load_sends_seed_messages_per_user_in_order(use_sendmmsg: bool) -> None:
    receiver = BlockingSeedServer(expected=300)
    config = LoadConfig(
        host=LOOPBACK, port=receiver.address[1], users=3, rate_per_s=20_000, duration_s=30,
        count=300, use_sendmmsg=use_sendmmsg,
    )  # fmt: skip
    result = await asyncio.to_thread(run_load, config)
    received = await receiver.join()
    assert result.sent == 300
    per_user: dict[str, list[int]] = {}
    for data in received:
        fields = split_seed(data.decode())
        assert fields is not None
        username, counter = fields
        per_user.setdefault(username, []).append(counter)
    assert sorted(per_user) == ["load0", "load1", "load2"]
    for counters in per_user.values():
        assert counters == list(range(1, len(counters) + 1))


def test_load_refuses_a_target_off_loopback() -> None:
    with pytest.raises(NotLoopbackError):
        run_load(LoadConfig(host="192.0.2.1", count=1))


async def test_load_cli_against_the_cli_server() -> None:
    server, port = await start_cli_server()
    load = await start_cli(
        "load", "--port", str(port), "--users", "4", "--rate", "2000", "--count", "200",
        "--duration", "30", "--no-progress",
    )  # fmt: skip
    status, stdout, _ = await load.finish()
    assert status == 0
    assert re.match(r"load: sent=200 elapsed_s=[\d.]+ rate_per_s=\d+ batched=(yes|no)\n", stdout)
    lines = [await server.read_stdout_line() for _ in range(200)]
    per_user: dict[str, list[int]] = {}
    for line in lines:
        fields = split_seed(line.split("] ", 1)[1])
        assert fields is not None
        per_user.setdefault(fields[0], []).append(fields[1])
    assert sorted(per_user) == ["load0", "load1", "load2", "load3"]
    assert all(
        sorted(counters) == list(range(1, len(counters) + 1)) for counters in per_user.values()
    )
    server.signal(signal.SIGINT)
    assert (await server.finish())[0] == 0


async def test_processes_share_the_port_and_combine_their_summaries() -> None:
    server, port = await start_cli_server("--processes", "2", "--verbose")  # each one's share
    load = await start_cli(
        "load", "--port", str(port), "--users", "32", "--rate", "5000", "--count", "2000",
        "--duration", "30", "--no-progress",
    )  # fmt: skip
    assert (await load.finish())[0] == 0
    lines = [await server.read_stdout_line() for _ in range(2000)]
    assert all(re.fullmatch(rf"\[{LOOPBACK}\] load\d+: pesan ke-\d+", line) for line in lines)
    server.signal(signal.SIGINT)
    status, rest, stderr = await server.finish()
    assert status == 0
    assert rest == ""
    summary = re.search(
        r"summary: received=(\d+) handled=(\d+) .* processes=2 \(received ([\d, ]+)\)", stderr
    )
    assert summary, stderr
    per_process = [int(n) for n in summary.group(3).split(", ")]
    assert int(summary.group(1)) == int(summary.group(2)) == sum(per_process) == 2000
    assert_summary_balanced(stderr, sent=2000)
    assert len(per_process) == 2
    assert all(count > 0 for count in per_process)  # 32 source ports: both children got some
