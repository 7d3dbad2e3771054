"""``serve --processes N``: one port claimed by nobody else, a dead child noticed, one summary
and one metrics endpoint adding up what the children reported."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import urllib.request

from tests.helpers import (
    EVENT_TIMEOUT_S,
    LOOPBACK,
    assert_summary_balanced,
    start_cli,
    start_cli_server,
)

MESSAGES = 40


async def test_a_port_already_bound_by_anyone_is_refused_with_exit_3() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as other:
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)  # would let children join
        other.bind((LOOPBACK, 0))
        port = other.getsockname()[1]
        cli = await start_cli("serve", "--host", LOOPBACK, "--port", str(port), "--processes", "2")
        status, stdout, stderr = await cli.finish()
    assert status == 3
    assert stdout == ""
    assert stderr == (f"udpchat: cannot listen on {LOOPBACK} port {port}: Address already in use\n")


async def test_a_second_supervisor_on_the_same_port_is_refused() -> None:
    first, port = await start_cli_server("--processes", "2")
    second = await start_cli("serve", "--host", LOOPBACK, "--port", str(port), "--processes", "2")
    status, _, stderr = await second.finish()
    assert status == 3, stderr
    first.signal(signal.SIGTERM)
    assert (await first.finish())[0] == 0


def scrape_handled(url: str) -> float:
    with urllib.request.urlopen(url, timeout=EVENT_TIMEOUT_S) as answer:
        text = answer.read().decode()
    (handled,) = re.findall(r"^udpchat_messages_handled_total (\S+)$", text, re.MULTILINE)
    return float(handled)


async def wait_for_handled(url: str, count: int) -> None:
    async with asyncio.timeout(EVENT_TIMEOUT_S):
        while await asyncio.to_thread(scrape_handled, url) < count:
            await asyncio.sleep(0.05)  # the children report every half second


async def test_a_dead_child_is_noticed_and_the_summary_keeps_its_counts() -> None:
    cli = await start_cli(
        "serve", "--host", LOOPBACK, "--port", "0", "--processes", "2", "--metrics-port", "0"
    )
    listening = await cli.read_stderr_until("listening on")
    port = int(re.findall(r" port (\d+)", listening)[0])
    pids = [int(pid) for pid in re.findall(r"pids ([\d, ]+)", listening)[0].split(", ")]
    url = (await cli.read_stderr_until("metrics on ")).split("metrics on ", 1)[1]
    assert await cli.read_stdout_line() == "Server menunggu..."
    load = await start_cli(
        "load", "--port", str(port), "--users", "16", "--rate", "2000", "--count", str(MESSAGES),
        "--duration", "30", "--no-progress",
    )  # fmt: skip
    assert (await load.finish())[0] == 0
    await wait_for_handled(url, MESSAGES)  # one endpoint adds up both children
    os.kill(pids[0], signal.SIGKILL)
    status, _, stderr = await cli.finish()
    assert status == 1, stderr
    assert f"process 1 (pid {pids[0]}) died: killed by SIGKILL; stopping the others" in stderr
    assert "processes=2" in stderr
    counts = assert_summary_balanced(stderr, sent=MESSAGES)
    assert counts["received"] == counts["handled"] == MESSAGES
    assert "Traceback" not in stderr
