"""Regenerate the README's variant table from the registry (`make readme`)."""

from pathlib import Path

from litevit.registry import variants_markdown

BEGIN, END = "<!-- variants:begin -->", "<!-- variants:end -->"

readme = Path(__file__).resolve().parents[1] / "README.md"
text = readme.read_text()
start, stop = text.index(BEGIN) + len(BEGIN), text.index(END)
readme.write_text(text[:start] + "\n" + variants_markdown() + "\n" + text[stop:])
