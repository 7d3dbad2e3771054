from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from pathlib import Path

from tests.helpers import LOOPBACK, CliProcess, raw_send

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run_example(name: str) -> list[str]:
    """The example's stdout lines, after it exited 0."""
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / name)],
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def test_embedding_example_runs() -> None:
    lines = run_example("embed.py")
    assert sorted(line.split(" in ")[0] for line in lines[:3]) == [
        f"handled embedded #{n}" for n in (1, 2, 3)
    ]
    assert all("udpchat-worker" in line for line in lines[:3])
    assert lines[3] == "received=3 handled=3"


def test_room_example_runs() -> None:
    assert run_example("room.py") == [
        "ana got: [127.0.0.1] budi: halo",
        "udpchat_relay_members 2.0",
        "drained=True joins=2 relayed_datagrams=1",
    ]


async def test_run_example_serves_two_processes_until_a_signal() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(EXAMPLES / "serve.py"),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    cli = CliProcess(process)
    port = int((await cli.read_stdout_line()).removeprefix("serving on port "))
    raw_send((LOOPBACK, port), b"ana: pesan ke-1", b"ana: pesan ke-2")
    lines = [await cli.read_stdout_line() for _ in range(2)]
    assert sorted(lines) == [f"[{LOOPBACK}] ana: pesan ke-{n}" for n in (1, 2)]
    cli.signal(signal.SIGINT)
    status, rest, stderr = await cli.finish()
    assert status == 0, stderr
    assert rest == "processes=2 received=2 drained=True\n"


def test_web_example_mounts_the_view_in_its_own_app() -> None:
    assert run_example("web.py") == [
        "the application's own page",
        "page: relay=True columns=10",
        "sent: budi: halo dari web",
        "joins=2 confirmations=1",
    ]
