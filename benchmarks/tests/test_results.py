"""``benchmarks/RESULTS.md`` is written by the runs, section by section: each names its commit,
date, machine, load average and commands, and a failed run leaves the file as it was."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent


def record(results: Path, section: str, *printed: str, fail: bool = False) -> int:
    """Run ``python -m benchmarks.results`` with commands that print ``printed``."""
    commands = [shlex.join([sys.executable, "-c", f"print({text!r})"]) for text in printed]
    if fail:
        commands.append(shlex.join([sys.executable, "-c", "raise SystemExit(3)"]))
    return subprocess.run(
        [sys.executable, "-m", "benchmarks.results", "--file", str(results), section, *commands],
        cwd=ROOT,
        capture_output=True,
        check=False,
    ).returncode


def sections(text: str) -> list[str]:
    return re.findall(r"<!-- --8<-- \[start:([\w-]+)\] -->", text)


def test_each_run_keeps_its_own_section_with_what_made_it(tmp_path: Path) -> None:
    results = tmp_path / "RESULTS.md"
    assert record(results, "bench", "| a | 1 |", "| b | 2 |") == 0
    assert record(results, "bench-impair", "| impair | 3 |") == 0
    assert record(results, "bench", "| a | 4 |") == 0
    text = results.read_text()
    assert sections(text) == ["bench", "bench-impair"]
    bench = text[: text.index("[end:bench]")]
    assert "| a | 4 |" in bench and "| a | 1 |" not in text
    assert "| impair | 3 |" in text
    head = subprocess.run(
        ["git", "rev-parse", "--short=12", "HEAD"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    for field in ("- commit: ", "- date: ", "- machine: ", "before: ", "after: "):
        assert bench.count(field) == 1
    assert head and f"- commit: {head}" in bench
    assert shlex.join([sys.executable, "-c", "print('| a | 4 |')"]) in bench  # what made it


def test_a_failed_run_writes_nothing(tmp_path: Path) -> None:
    results = tmp_path / "RESULTS.md"
    assert record(results, "bench", "| a | 1 |") == 0
    before = results.read_text()
    assert record(results, "bench", "| a | 2 |", fail=True) != 0
    assert results.read_text() == before


@pytest.mark.parametrize("name", ["has space", "a/b", ""])
def test_a_section_name_is_a_word(tmp_path: Path, name: str) -> None:
    assert record(tmp_path / "RESULTS.md", name, "x") == 2


def test_tables_stay_tables_and_the_rest_is_text(tmp_path: Path) -> None:
    results = tmp_path / "RESULTS.md"
    assert record(results, "bench", "plan: two designs", "| a | 1 |\n|---|---|\n| b | 2 |") == 0
    text = results.read_text()
    assert "```text\nplan: two designs\n```\n" in text
    assert "\n| a | 1 |\n|---|---|\n| b | 2 |\n" in text


def test_the_commit_is_marked_changed_by_code_not_by_an_earlier_section(tmp_path: Path) -> None:
    """``make attack`` then ``make bench-memory``: the second measures the same commit, though
    the first left its section in the tree."""
    (tmp_path / "benchmarks").mkdir()
    (tmp_path / "benchmarks" / "__init__.py").write_text("")
    (tmp_path / "benchmarks" / "results.py").write_text(
        (ROOT / "benchmarks/results.py").read_text()
    )
    (tmp_path / "benchmarks" / "RESULTS.md").write_text("# Benchmark results\n")
    (tmp_path / "code.py").write_text("")

    def git(*args: str) -> None:
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)

    git("init", "-q")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "start")

    def commit_line() -> str:
        subprocess.run(
            [sys.executable, "-m", "benchmarks.results", "attack", "true"],
            cwd=tmp_path, capture_output=True, check=True,
        )  # fmt: skip
        text = (tmp_path / "benchmarks" / "RESULTS.md").read_text()
        found = re.search(r"- commit: (.*)", text)
        assert found is not None
        return found[1]

    assert "uncommitted" not in commit_line()
    assert "uncommitted" not in commit_line()  # the section it wrote is in the tree now
    (tmp_path / "code.py").write_text("changed = True\n")
    assert commit_line().endswith("(with uncommitted changes)")
