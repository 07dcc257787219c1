"""README stays short and true: the two commands CI and users run, and links to docs pages that exist.

README's old Python example lives on the docs' Python API page (run by tests/test_docs.py)."""

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text(encoding="utf-8")


def test_readme_is_short():
    assert len(README.splitlines()) <= 200


def test_readme_gives_the_two_commands():
    assert "bash scripts/setup.sh && .venv/bin/python -m nin_keras.fit\n" in README
    assert "bash scripts/setup.sh && .venv/bin/python -m pytest -q\n" in README


def test_readme_links_to_every_docs_page_and_only_to_existing_ones():
    linked = set(re.findall(r"\]\((docs/[^)#\s]+)", README))
    pages = {str(p.relative_to(REPO)) for p in (REPO / "docs").glob("*.md")}
    assert pages - {"docs/index.md"} <= linked
    missing = {link for link in linked if not (REPO / link).exists() and not link.startswith("docs/img/")}
    assert missing == set()
