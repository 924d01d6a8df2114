"""Issue 19, item 5: a README a newcomer reads in five minutes, every link in it and in docs/ resolving, and the
licence and citation files a user looks for."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import featx

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def test_the_readme_fits_in_about_two_hundred_lines():
    assert len((REPO / "README.md").read_text(encoding="utf-8").splitlines()) <= 200


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_every_relative_link_resolves(page):
    for target in LINK.findall(page.read_text(encoding="utf-8")):
        if "://" in target or target.startswith("mailto:"):
            continue
        assert (page.parent / target).exists(), f"{page.name} links to {target}, which does not exist"


def test_every_docs_page_is_linked_from_the_readme():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    for page in (REPO / "docs").glob("*.md"):
        assert f"docs/{page.name}" in readme, page.name


def test_licence_and_citation_match_the_package():
    assert (REPO / "LICENSE").read_text().startswith("MIT License")
    assert "license = MIT" in (REPO / "setup.cfg").read_text()
    citation = (REPO / "CITATION.cff").read_text()
    assert f'version: "{featx.__version__}"' in citation and "cff-version: 1.2.0" in citation
