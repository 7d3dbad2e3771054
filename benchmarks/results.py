"""``benchmarks/RESULTS.md``, written by the benchmark runs themselves, never by hand.

``python -m benchmarks.results SECTION COMMAND [COMMAND ...]`` runs each command in turn (a
shell-quoted string), passes its output through to the terminal as it comes, and then replaces
the file's section ``SECTION`` with what the commands printed on stdout (the tables), under the
commit, the date, the machine, the load average before and after, and the commands that made
it. Other sections stay as they were, so that ``make bench``, ``make bench-full`` and ``make
bench-impair`` each keep their latest run. A failed command writes nothing and fails the same.
The docs include the sections (``pymdownx.snippets``), so that no figure is copied by hand.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import shlex
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

RESULTS = Path(__file__).parent / "RESULTS.md"
TITLE = "# Benchmark results\n"
PREAMBLE = (
    "Written by `python -m benchmarks.results` at the end of each `make bench`, "
    "`make bench-full`, `make bench-impair`, `make bench-saturation`, `make bench-memory`, "
    "`make bench-web` and `make attack` (each keeps its own section, the latest run); "
    "do not edit by hand. Compare ratios within one run, not rates across runs: on a shared "
    "machine the rates move with the other work.\n"
)
SECTION = re.compile(
    r"<!-- --8<-- \[start:(?P<name>[\w-]+)\] -->\n.*?<!-- --8<-- \[end:(?P=name)\] -->\n", re.S
)
"""A section as ``pymdownx.snippets`` marks one, so that a page includes it by name
(``--8<-- "benchmarks/RESULTS.md:bench"``)."""


def git(*args: str) -> str:
    try:
        return subprocess.run(
            ["git", *args], capture_output=True, text=True, check=True, cwd=RESULTS.parent
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def commit() -> str:
    """The commit measured, and whether the tree differed from it."""
    head = git("rev-parse", "--short=12", "HEAD") or "unknown (not a git checkout)"
    changed = git(  # this file's own sections, written by an earlier target, do not count
        "status", "--porcelain", "--untracked-files=no", "--", ":(top)", f":(exclude){RESULTS.name}"
    )
    return f"{head} (with uncommitted changes)" if changed else head


def processor() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "unknown"
    found = re.search(r"^model name\s*:\s*(.+)$", text, re.M)
    return found.group(1).strip() if found else "unknown"


def machine() -> str:
    return (
        f"{processor()}, {os.cpu_count()} cores, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}"
    )


def load_average() -> str:
    return ", ".join(f"{load:.2f}" for load in os.getloadavg())


def run(command: str) -> str:
    """Run ``command``; its stderr and stdout go on to the terminal, stdout is kept."""
    process = subprocess.Popen(shlex.split(command), stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    kept = []
    for line in process.stdout:
        sys.stdout.write(line)
        sys.stdout.flush()
        kept.append(line)
    if process.wait() != 0:
        raise SystemExit(f"benchmarks.results: {command!r} failed (exit {process.returncode})")
    return "".join(kept)


def as_markdown(output: str) -> str:
    """What a benchmark printed: its tables as they are, the lines between them as text."""
    blocks: list[str] = []
    text: list[str] = []
    for line in output.strip("\n").splitlines():
        if line.startswith("|"):
            if text:
                blocks.append("```text\n" + "\n".join(text).strip("\n") + "\n```\n")
                text = []
            if blocks and not blocks[-1].startswith("|"):
                blocks.append("")
            blocks.append(line)
        else:
            if blocks and blocks[-1].startswith("|"):
                blocks.append("")
            text.append(line)
    if text and "\n".join(text).strip():
        blocks.append("```text\n" + "\n".join(text).strip("\n") + "\n```\n")
    return "\n".join(blocks).rstrip("\n") + "\n"


def section(name: str, commands: Sequence[str], outputs: Sequence[str], started: str) -> str:
    """The section, from ``started`` (the commit, the date and the load before the run)."""
    ran = "\n".join(commands)
    body = "\n".join(as_markdown(output) for output in outputs)
    return (
        f"<!-- --8<-- [start:{name}] -->\n"
        f"## {name}\n\n"
        f"{started}"
        f"- machine: {machine()}\n"
        f"- load average (1, 5, 15 min) after: {load_average()}\n"
        f"- made by:\n\n```text\n{ran}\n```\n\n"
        f"{body}"
        f"<!-- --8<-- [end:{name}] -->\n"
    )


def start() -> str:
    """What is known before the run: the commit measured, the date and the load average."""
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (
        f"- commit: {commit()}\n"
        f"- date: {when}\n"
        f"- load average (1, 5, 15 min) before: {load_average()}\n"
    )


def replace_section(text: str, name: str, new: str) -> str:
    """``text`` with section ``name`` replaced by ``new`` (added at the end if missing); the
    other sections kept in their order."""
    sections = {found["name"]: found.group(0) for found in SECTION.finditer(text)}
    sections[name] = new
    return TITLE + "\n" + PREAMBLE + "\n" + "\n".join(sections.values())


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--file", type=Path, default=RESULTS, help="default: %(default)s")
    parser.add_argument("section", help="the section's name, e.g. bench")
    parser.add_argument("commands", nargs="+", help="each a shell-quoted command line")
    args = parser.parse_args(argv)
    if not re.fullmatch(r"[\w-]+", args.section):
        parser.error("a section's name is letters, digits, _ and -")
    started = start()
    outputs = [run(command) for command in args.commands]
    old = args.file.read_text() if args.file.exists() else ""
    new = section(args.section, args.commands, outputs, started)
    args.file.write_text(replace_section(old, args.section, new))
    print(f"benchmarks.results: section {args.section!r} of {args.file} written", file=sys.stderr)


if __name__ == "__main__":
    main()
