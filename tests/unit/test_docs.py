"""The README stays a short user's README, and no doc depends on the machine it was written on."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

#: Strings that only make sense where the text was written: local paths outside the
#: repository (the shared-data folder beside a checkout, the development box's work folder;
#: written with character classes so this pattern is not itself such a path), and references
#: to a moment or a ticket instead of a date.
MACHINE_SPECIFIC = re.compile(
    r"\.\.[/]shared|[/]work[/]|this afternoon|this morning|\btoday\b|\byesterday\b"
    r"|\bissue \d+|\bas here\b",
    re.IGNORECASE,
)


def test_readme_is_at_most_200_lines() -> None:
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines; move detail to docs/"


def test_readme_starts_with_the_two_commands() -> None:
    head = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()[:6]
    assert any(line.startswith("make serve ") for line in head), head
    assert any(line.startswith("make test ") for line in head), head


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_doc_has_no_machine_specific_text(doc: Path) -> None:
    text = doc.read_text(encoding="utf-8")
    found = [
        f"line {text.count(chr(10), 0, m.start()) + 1}: {m.group()!r}"
        for m in MACHINE_SPECIFIC.finditer(text)
    ]
    assert not found, f"{doc.name} has text that only makes sense on one machine: {found}"
