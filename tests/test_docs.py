"""Every link of the README and of docs/ resolves: the file it names exists, and so does the heading it points to."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
MAX_README_LINES = 250


def slug(heading: str) -> str:
    """The anchor GitHub and mkdocs give a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = re.sub(r"(?ms)^```.*?^```", "", page.read_text())  # headings inside code blocks are not headings
    return {slug(m.group(1)) for m in re.finditer(r"(?m)^#{1,6} (.+)$", text)}


def links(page: Path) -> list[str]:
    text = re.sub(r"(?ms)^```.*?^```", "", page.read_text())
    return [m.group(1) for m in LINK.finditer(text)]


def test_slug_matches_the_anchor_rule() -> None:
    assert slug("Speed, measured") == "speed-measured"
    assert slug("### `make bench`: every runtime".lstrip("# ")) == "make-bench-every-runtime"


def test_every_page_is_linked_from_the_readme_and_in_the_site_nav() -> None:
    readme_links = {target.split("#")[0] for target in links(ROOT / "README.md")}
    nav = (ROOT / "mkdocs.yml").read_text()
    for page in PAGES[1:]:
        if page.name != "index.md":
            assert f"docs/{page.name}" in readme_links, f"README does not link docs/{page.name}"
        assert page.name in nav, f"mkdocs.yml's nav lacks {page.name}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_link_resolves(page: Path) -> None:
    broken = []
    for target in links(page):
        if re.match(r"[a-z]+:", target):  # http(s), mailto: not followed (tests never reach the internet)
            continue
        file, _, anchor = target.partition("#")
        resolved = (page.parent / file).resolve() if file else page
        if not resolved.exists():
            broken.append(f"{target}: no such file")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            broken.append(f"{target}: no heading with that anchor")
    assert broken == []


def test_readme_stays_the_way_in() -> None:
    assert len((ROOT / "README.md").read_text().splitlines()) <= MAX_README_LINES
