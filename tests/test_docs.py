"""The user-facing docs stay in step with the code."""

from __future__ import annotations

import re
from pathlib import Path

from moeprune.arch import FAMILIES

ROOT = Path(__file__).resolve().parents[1]


def test_readme_lists_every_family_and_only_those() -> None:
    readme = (ROOT / "README.md").read_text()
    table = re.findall(r"^\| `([a-z0-9_]+)` \|", readme.split("## Supported families")[1], re.MULTILINE)
    assert sorted(table) == sorted(FAMILIES)


def test_readme_has_the_two_commands_and_ci_runs_the_test_one() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "```bash\nmake demo\n```" in readme
    assert "```bash\nmake test\n```" in readme
    assert (ROOT / ".ci" / "run").read_text().strip().endswith("make test")


def test_linked_docs_exist() -> None:
    readme = (ROOT / "README.md").read_text()
    for link in re.findall(r"\]\((docs/[^)]+)\)", readme):
        assert (ROOT / link).is_file(), link


def test_ratio_rounding_rule_is_in_help(cli) -> None:  # type: ignore[no-untyped-def]
    result = cli("prune", "--help")
    assert result.code == 0
    assert "halves rounded down" in " ".join(result.out.split())
