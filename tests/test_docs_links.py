"""README.md and docs/*.md: every relative link and image points to a file of the repository, and
README stays a short manual (the rest lives in docs/)."""

import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def _pages():
    return [REPO / "README.md"] + sorted((REPO / "docs").glob("*.md"))


def test_every_relative_link_exists():
    broken = []
    for page in _pages():
        for target in LINK.findall(page.read_text(encoding="utf-8")):
            if re.match(r"^[a-z]+:", target) or target.startswith("#"):
                continue
            path = (page.parent / target.split("#", 1)[0]).resolve()
            if not path.exists() or REPO not in path.parents:
                broken.append(f"{page.relative_to(REPO)} -> {target}")
    assert not broken, broken


def test_readme_is_short_and_names_the_test_command():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    assert len(text.encode()) < 15_000
    assert "node --test tests/js/ && python -m pytest -q tests" in text
    assert "node --test tests/js/ && python -m pytest -q tests" in (REPO / ".ci" / "run").read_text()
