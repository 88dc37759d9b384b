"""The README's first screen: a title, a sentence, a picture, then exactly two commands, the
second of which is what CI runs."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def first_screen() -> tuple[list[str], list[str]]:
    """(the README's lines before its first code block, that block's lines)."""
    text = (ROOT / "README.md").read_text()
    before, _, rest = text.partition("```bash\n")
    return [line for line in before.splitlines() if line.strip()], rest.partition("```")[0].splitlines()


def test_the_readme_opens_with_a_title_a_sentence_a_picture_and_two_commands():
    before, commands = first_screen()
    assert len(before) == 3 and before[0].startswith("# ")
    assert before[1].endswith(".") and not before[1].startswith(("#", "!"))
    picture = re.fullmatch(r"!\[[^\]]+\]\(([^)]+)\)", before[2])
    assert picture and (ROOT / picture.group(1)).is_file()
    assert len(commands) == 2
    assert commands[0].endswith("python app.py") and "requirements.txt" in commands[0]
    assert commands[1].endswith("python -m pytest -q") and "requirements-dev.txt" in commands[1]


def test_ci_runs_exactly_the_readme_test_command():
    _, commands = first_screen()
    ci_lines = [line for line in (ROOT / ".ci/run").read_text().splitlines() if line and not line.startswith("#")]
    assert ci_lines[-1] == commands[1]
