"""mkdocs hook: the built site carries the benchmark records that the pages link to outside ``docs/``.

The pages link to records as they lie in the repository (``../benchmarks/speed/bench_full.png``), so that the links
work on GitHub and in an editor. :func:`on_files` adds every file under ``benchmarks/`` to the site at the same path
(``benchmarks/...``: its Markdown records become pages, its plots and text records are copied), and
:func:`on_page_markdown` points the links that climb out of ``docs/`` into ``benchmarks/`` at those site paths.
Every other link is left alone: with ``mkdocs.yml``'s validation (``warn``) and ``mkdocs build --strict``, a link the
built site cannot serve fails the build.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[2]
CARRIED = "benchmarks"
_OUT_OF_DOCS = re.compile(r"(\]\()((?:\.\./)+)(" + CARRIED + r"/[^)\s]*\))")


def on_files(files: Files, config: Any) -> Files:
    for path in sorted((ROOT / CARRIED).rglob("*")):
        if path.is_file():
            uri = path.relative_to(ROOT).as_posix()
            files.append(File(uri, str(ROOT), config["site_dir"], config["use_directory_urls"]))
    return files


def on_page_markdown(markdown: str, page: Any, config: Any, files: Files) -> str:
    """A link from a page ``depth`` folders inside ``docs/`` that climbs ``depth + 1`` levels reaches the repository
    root; in the site, ``benchmarks/`` sits at the root beside the pages, ``depth`` levels up."""
    depth = page.file.src_uri.count("/")

    def inside(m: re.Match[str]) -> str:
        return m[1] + "../" * depth + m[3] if m[2] == "../" * (depth + 1) else m[0]

    return _OUT_OF_DOCS.sub(inside, markdown)
