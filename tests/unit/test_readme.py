"""The README tells the truth: the two commands, and transition tables generated from the code."""

from __future__ import annotations

from pathlib import Path

from engine.fsm.describe import all_markdown

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_starts_with_the_two_commands():
    head = README.read_text().split("## ", 1)[0]
    assert "make demo" in head and "make test" in head


def test_fsm_tables_in_readme_match_the_machines():
    text = README.read_text()
    begin, end = "<!-- fsm-tables:begin -->", "<!-- fsm-tables:end -->"
    section = text.split(begin, 1)[1].split(end, 1)[0]
    assert section.strip() == all_markdown().strip(), "README out of date: run `python -m engine.fsm.describe`"
