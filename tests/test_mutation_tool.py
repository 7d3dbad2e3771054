"""``make mutation`` reads the equivalent mutants from a data file of their own, each with its
reason, and never from the docs."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from tools.mutation import EQUIVALENTS, equivalents

ROOT = Path(__file__).resolve().parent.parent
MUTANT_NAME = re.compile(r"(?P<module>\w+)\.[\w.]+ #\d+")


def test_every_listed_equivalent_names_a_mutated_module_and_says_why() -> None:
    mutated = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"][
        "mutmut"
    ]["only_mutate"]
    modules = {Path(path).stem for path in mutated}
    listed = equivalents()
    assert listed
    for name, reason in listed.items():
        match = MUTANT_NAME.fullmatch(name)
        assert match is not None, name
        assert match["module"] in modules, name
        assert reason.strip(), name


@pytest.mark.parametrize(
    "text", ['[equivalent]\n"wire.decode #1" = ""\n', '[equivalent]\n"wire.decode #1" = 3\n']
)
def test_an_equivalent_without_its_reason_is_refused(tmp_path: Path, text: str) -> None:
    path = tmp_path / "equivalents.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(SystemExit, match="maps each mutant to its reason"):
        equivalents(path)


def test_no_tool_reads_the_readme() -> None:
    for source in (ROOT / "tools").glob("*.py"):
        assert "README" not in source.read_text(encoding="utf-8"), source
    assert EQUIVALENTS.exists()
