"""Regenerate the generated tables of docs/: variants from the registry, published weights from the zoo."""

from pathlib import Path

import litevit  # noqa: F401  (registers the models and the published weights)
from litevit.registry import variants_markdown
from litevit.weights.records import weights_markdown

docs = Path(__file__).resolve().parents[1] / "docs"
for page, marker, table in (
    ("variants.md", "variants", variants_markdown()),
    ("weights.md", "weights", weights_markdown()),
):
    path = docs / page
    text = path.read_text()
    begin, end = f"<!-- {marker}:begin -->", f"<!-- {marker}:end -->"
    start, stop = text.index(begin) + len(begin), text.index(end)
    path.write_text(text[:start] + "\n" + table + "\n" + text[stop:])
