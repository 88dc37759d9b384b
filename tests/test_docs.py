"""The README and docs/: the README's first screen (a title, a sentence, a picture, then exactly
two commands, the second of which is what CI runs), then a short tour for users; everything else
lives in docs/ pages that the README links; every link resolves inside the repository."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MAX_README_BYTES = 12_800  # ~12.5 KB: the README is for users; the rest is in docs/
PAGES = sorted((ROOT / "docs").glob("*.md"))
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def first_screen() -> tuple[list[str], list[str]]:
    """(the README's lines before its first code block, that block's lines)."""
    text = README.read_text()
    before, _, rest = text.partition("```bash\n")
    return [line for line in before.splitlines() if line.strip()], rest.partition("```")[0].splitlines()


def headings(path: Path) -> list[str]:
    """The page's headings, outside code blocks."""
    out, fenced = [], False
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and line.startswith("#"):
            out.append(line)
    return out


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to dashes."""
    text = heading.lstrip("#").strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def links(path: Path) -> list[str]:
    """Every Markdown link and image target of a page, outside code blocks."""
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    return LINK.findall(text)


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


def test_the_readme_is_short_and_in_the_users_order():
    assert README.stat().st_size <= MAX_README_BYTES, f"{README.stat().st_size} bytes; move details to docs/"
    sections = [h for h in headings(README) if h.startswith("## ")]
    order = ["tour", "models", "cli", "python api", "deployment"]
    found = [next((i for i, h in enumerate(sections) if name in h.lower()), None) for name in order]
    assert None not in found and found == sorted(found), sections
    assert found[0] == 0  # the tour comes right after the commands
    # the tour names every tab and the presets, in the order the page shows them
    tour = README.read_text().partition(sections[0])[2].partition(sections[1])[0]
    places = [tour.find(f"**{name}") for name in ("Decode", "Branch panel", "Runs", "Compare", "Presets")]
    assert -1 not in places and places == sorted(places), places


def test_every_docs_page_is_linked_from_the_readme():
    linked = {(README.parent / target.partition("#")[0]).resolve() for target in links(README)}
    assert PAGES and [p.name for p in PAGES if p.resolve() not in linked] == []


@pytest.mark.parametrize("page", [README, *PAGES], ids=lambda p: str(p.relative_to(ROOT)))
def test_every_link_resolves_to_a_file_in_the_repository(page):
    for target in links(page):
        if re.match(r"[a-z]+:", target):  # http(s):, mailto:
            continue
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page.resolve()
        assert resolved.is_relative_to(ROOT), (page.name, target)
        assert resolved.is_file(), (page.name, target)
        if anchor and resolved.suffix == ".md":
            assert anchor in {slug(h) for h in headings(resolved)}, (page.name, target)


@pytest.mark.parametrize("page", [README, *PAGES], ids=lambda p: str(p.relative_to(ROOT)))
def test_no_reference_outside_the_repository(page):
    text = page.read_text()
    for pattern in (r"\.\./shared", r"(?<![\w.])/work/", r"(?<![\w.])/root/", r"(?<![\w.])/home/", r"sqlite:////"):
        assert not re.search(pattern, text), (page.name, pattern)


def test_the_scripts_the_docs_name_exist():
    """Every `python bench/X.py` / `python -m models.X` that produced a number in the docs is in the repository."""
    for page in [README, *PAGES]:
        text = page.read_text()
        for script in re.findall(r"python (bench/\w+\.py)", text):
            assert (ROOT / script).is_file(), (page.name, script)
        for module in re.findall(r"python -m (models\.\w+)", text):
            assert (ROOT / (module.replace(".", "/") + ".py")).is_file(), (page.name, module)


def test_the_readmes_cli_examples_parse():
    from explorer.cli import _parser

    block = README.read_text().partition("## CLI")[2].partition("```\n")[2].partition("```")[0]
    commands = [line.partition("#")[0] for line in block.splitlines() if line.startswith("python -m explorer ")]
    assert len(commands) >= 4
    for command in commands:
        args = shlex.split(command)[3:]
        assert _parser().parse_args(args).command in ("decode", "runs", "show", "branch", "alternatives"), command
