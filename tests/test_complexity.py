"""The complexity gate of ``make lint`` (tools/complexity.py) counts as radon does, finds
functions wherever they are nested, and lets an exception through only with its reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from tools.complexity import check, main, max_complexity

BOUND = 12
CONDITIONS = " and ".join(f"x{index}" for index in range(BOUND))
"""Twelve operands, eleven boolean operators: with its ``if`` and the function's own one, a
complexity of 13 by radon's count (ruff's, which leaves the operators out, says 2)."""


def complex_function(name: str, indent: str = "", noqa: str = "") -> str:
    arguments = ", ".join(f"x{index}" for index in range(BOUND))
    return (
        f"{indent}def {name}({arguments}):{noqa}\n"
        f"{indent}    if {CONDITIONS}:\n"
        f"{indent}        return 1\n"
        f"{indent}    return 0\n"
    )


def offenders_in(tmp_path: Path, source: str) -> tuple[list[str], list[str]]:
    path = tmp_path / "module.py"
    path.write_text(source)
    return check(path, BOUND)


def test_the_bound_is_the_one_ruff_is_given() -> None:
    assert max_complexity() == BOUND


def test_boolean_operators_count_and_nested_functions_are_found(tmp_path: Path) -> None:
    source = (
        complex_function("top")
        + "class Holder:\n"
        + complex_function("method", "    ")
        + "def outer():\n"
        + complex_function("closure", "    ")
        + "    return closure\n"
    )
    offenders, excepted = offenders_in(tmp_path, source)
    assert sorted(line.split(": ")[1] for line in offenders) == ["Holder.method", "closure", "top"]
    assert all(line.endswith("complexity 13") for line in offenders)
    assert excepted == []


def test_a_function_at_the_bound_passes(tmp_path: Path) -> None:
    source = complex_function("top").replace(" and x11", "")
    assert offenders_in(tmp_path, source) == ([], [])


def test_an_exception_needs_its_reason(tmp_path: Path) -> None:
    with_reason = complex_function("kept", noqa="  # noqa: C901 - one table, read top down")
    without = complex_function("unexplained", noqa="  # noqa: C901")
    offenders, excepted = offenders_in(tmp_path, with_reason + without)
    assert [line.split(": ")[1] for line in offenders] == ["unexplained"]
    assert [line.split(": ")[1] for line in excepted] == ["kept"]


def test_the_gate_fails_naming_the_offender(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "module.py").write_text(complex_function("top"))
    assert main([str(tmp_path)]) == 1
    assert "module.py:1: top: complexity 13, above 12" in capsys.readouterr().out
    assert main(["tools"]) == 0
