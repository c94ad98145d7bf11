"""Regenerate the README's generated tables: variants from the registry, published weights from the zoo."""

from pathlib import Path

import litevit  # noqa: F401  (registers the models and the published weights)
from litevit.registry import variants_markdown
from litevit.weights.records import weights_markdown

readme = Path(__file__).resolve().parents[1] / "README.md"
text = readme.read_text()
for marker, table in (("variants", variants_markdown()), ("weights", weights_markdown())):
    begin, end = f"<!-- {marker}:begin -->", f"<!-- {marker}:end -->"
    start, stop = text.index(begin) + len(begin), text.index(end)
    text = text[:start] + "\n" + table + "\n" + text[stop:]
readme.write_text(text)
