"""Every link of the README and of docs/ resolves: the file it names exists, and so does the heading it points to."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
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


# ------------------------------------------------------------------------------------------------ benchmark records

RECORDS = ROOT / "benchmarks"
QUOTING = [*PAGES, ROOT / "tools" / "README.md", *sorted((ROOT / "tools").glob("*.py"))]
QUOTED = re.compile(r"benchmarks/[\w./{},*-]*")


def _expand(pattern: str) -> list[str]:
    """``a.{md,jsonl}`` -> ``a.md``, ``a.jsonl`` (one brace group, as the pages write them)."""
    m = re.search(r"\{([^}]*)\}", pattern)
    return [pattern[: m.start()] + part + pattern[m.end() :] for part in m[1].split(",")] if m else [pattern]


def missing_records(text: str, root: Path = ROOT) -> list[str]:
    """The ``benchmarks/...`` paths ``text`` quotes that name nothing in ``root``: a file, a folder, a glob with a
    match, or a tool's ``--out`` prefix (``benchmarks/accuracy/qat`` writes ``qat.md`` and ``qat.jsonl``)."""
    missing = []
    for quoted in QUOTED.findall(text):
        for path in _expand(quoted.rstrip(".,")):
            target = root / path
            found = (
                any(root.glob(path))
                if "*" in path
                else target.exists() or any(target.with_name(target.name + s).is_file() for s in (".md", ".jsonl"))
            )
            if not found:
                missing.append(path)
    return missing


@pytest.mark.parametrize("page", QUOTING, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_quoted_record_exists(page: Path) -> None:
    assert missing_records(page.read_text()) == []


def test_a_quoted_record_that_is_not_there_is_found() -> None:
    text = "`benchmarks/speed/bench_full.{md,png}`, [x](../benchmarks/speed/nope.md); --out benchmarks/accuracy/qat."
    assert missing_records(text) == ["benchmarks/speed/nope.md"]
    assert missing_records("`benchmarks/speed/bench_full.{md,svg}`, `benchmarks/mobile/pte_int9*.jsonl`") == [
        "benchmarks/speed/bench_full.svg", "benchmarks/mobile/pte_int9*.jsonl"
    ]  # fmt: skip


def indexed_records(index: str) -> dict[str, set[str]]:
    """Folder -> the record names the rows of ``benchmarks/README.md``'s ``## <folder>/`` table list."""
    listed: dict[str, set[str]] = {}
    for section in re.split(r"(?m)^## ", index)[1:]:
        heading, _, body = section.partition("\n")
        if heading.endswith("/"):
            names = re.findall(r"(?m)^\| `([^`]+)` \|", body)
            listed[heading.rstrip("/")] = {name for row in names for name in _expand(row)}
    return listed


def index_faults(index: str, records: Path = RECORDS) -> list[str]:
    """What ``benchmarks/README.md`` (``index``) and the record folders disagree on: unlisted and vanished records."""
    listed = indexed_records(index)
    on_disk = {folder.name: {p.name for p in folder.iterdir()} for folder in records.iterdir() if folder.is_dir()}
    faults = [f"folder {f}/: not a section" for f in sorted(on_disk.keys() - listed.keys())]
    faults += [f"section {f}/: no such folder" for f in sorted(listed.keys() - on_disk.keys())]
    for folder in sorted(on_disk.keys() & listed.keys()):
        faults += [f"{folder}/{name}: not listed" for name in sorted(on_disk[folder] - listed[folder])]
        faults += [f"{folder}/{name}: listed, no such record" for name in sorted(listed[folder] - on_disk[folder])]
    return faults


def test_benchmarks_readme_lists_every_record_and_only_records_that_exist() -> None:
    index = (RECORDS / "README.md").read_text()
    assert set(indexed_records(index)) == {"speed", "accuracy", "memory", "mobile"}
    assert index_faults(index) == []


def test_an_unlisted_or_vanished_record_is_found() -> None:
    index = (RECORDS / "README.md").read_text()
    planted = index.replace("| `qat.{md,jsonl}` |", "| `qat.md` |").replace("`mobile.jsonl`", "`mobile.json`")
    assert index_faults(planted) == [
        "accuracy/qat.jsonl: not listed",
        "mobile/mobile.jsonl: not listed",
        "mobile/mobile.json: listed, no such record",
    ]


# ----------------------------------------------------------------------------------------------------- the built site


def build_site(tmp_path: Path, plant: str | None = None) -> subprocess.CompletedProcess[str]:
    """``mkdocs build --strict`` (as ``make docs``) of a copy of the docs and the records, with ``plant`` appended to
    docs/speed.md."""
    for part in ("docs", "benchmarks"):
        shutil.copytree(ROOT / part, tmp_path / part)
    shutil.copy(ROOT / "mkdocs.yml", tmp_path / "mkdocs.yml")
    if plant is not None:
        speed = tmp_path / "docs" / "speed.md"
        speed.write_text(speed.read_text() + plant)
    command = [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")]
    return subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)


def test_the_built_site_serves_every_record_and_plot_it_links(tmp_path: Path) -> None:
    pytest.importorskip("mkdocs", reason="the docs extra (pip install -e '.[docs]')")
    built = build_site(tmp_path)
    assert built.returncode == 0, built.stderr
    site = tmp_path / "site"
    for page in PAGES[1:]:
        for target in links(page):
            if target.startswith("../benchmarks/"):
                path = site / target.removeprefix("../").partition("#")[0]
                page_dir = path.parent if path.name == "README.md" else path.with_suffix("")  # README: the index
                served = path if path.suffix != ".md" else page_dir / "index.html"
                assert served.is_file(), f"{page.name}: {target} is not in the built site"


# a planted link -> the link as mkdocs reports it (records' links are pointed into the site by the hook first)
PLANTED_LINKS = {
    "[gone](../benchmarks/speed/gone.md)": "benchmarks/speed/gone.md",
    "![plot](../benchmarks/speed/gone.png)": "benchmarks/speed/gone.png",
    "[source](../src/litevit/cli.py)": "../src/litevit/cli.py",  # exists in the repository, not in the site
}


@pytest.mark.parametrize("plant", PLANTED_LINKS)
def test_make_docs_fails_on_a_link_the_site_cannot_serve(plant: str, tmp_path: Path) -> None:
    pytest.importorskip("mkdocs", reason="the docs extra (pip install -e '.[docs]')")
    built = build_site(tmp_path, f"\n\n{plant}\n")
    output = built.stdout + built.stderr
    assert built.returncode != 0
    assert "Aborted with 1 warnings in strict mode" in output
    assert f"'speed.md' contains a link '{PLANTED_LINKS[plant]}'" in output
