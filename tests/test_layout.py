"""The package layout: imports point down the layers, no circles, no module imports the package face, small files."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "litevit"
README = Path(__file__).resolve().parents[1] / "README.md"

# lower layers first; a module may import its own layer and the layers below it, never one above
LAYERS = (
    {"_version", "_extras", "_files", "layers", "registry", "flops", "data", "timing"},
    {"models"},
    {"weights"},
    {"deploy"},
    {"training", "bench", "backbone", "predict", "bulk"},
    {"cli", "__main__", "train"},
)
MAX_LINES = 500
MAX_TOP_LEVEL_MODULES = 15  # train.py (the old entry point's one-line pointer) joined; bulk (issue 32) is a subpackage


def _modules() -> dict[str, tuple[Path, bool]]:
    found = {}
    for path in SRC.rglob("*.py"):
        parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
        package = parts[-1] == "__init__"
        found[".".join(parts[:-1] if package else parts)] = (path, package)
    return found


def _edges() -> dict[str, set[str]]:
    """Module -> the litevit modules it imports, function-level imports included (a name imported from a package
    counts as an import of the submodule when it is one, else of the package)."""
    modules = _modules()
    edges = {}
    for name, (path, package) in modules.items():
        base = name.split(".") if package else name.split(".")[:-1]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    prefix = base[: len(base) - (node.level - 1)]
                    module = ".".join(prefix + ([node.module] if node.module else []))
                else:
                    module = node.module or ""
                for alias in node.names:
                    sub = f"{module}.{alias.name}"
                    targets.add(sub if sub in modules else module)
            elif isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
        edges[name] = {t for t in targets if t.split(".")[0] == "litevit" and t != name}
    return edges


def _layer(module: str) -> int:
    parts = module.split(".")
    group = parts[1] if len(parts) > 1 else "litevit"
    for index, layer in enumerate(LAYERS):
        if group in layer:
            return index
    raise AssertionError(f"{module} belongs to no layer of tests/test_layout.py: place it")


def _cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if not state.get(nxt) and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if not state.get(node) and (found := visit(node)):
            return found
    return None


def test_no_import_circle() -> None:
    edges = _edges()
    assert _cycle(edges) is None, " -> ".join(_cycle(edges) or [])


def test_cycle_finder_finds_a_planted_circle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_no_module_imports_the_package_face() -> None:
    importers = sorted(name for name, targets in _edges().items() if "litevit" in targets and name != "litevit")
    assert importers == []


def test_imports_point_down_the_layers() -> None:
    upward = [
        f"{name} -> {target}"
        for name, targets in _edges().items()
        if name != "litevit"
        for target in targets
        if target != "litevit" and _layer(target) > _layer(name)
    ]
    assert upward == []


@pytest.mark.parametrize("path", sorted(SRC.rglob("*.py")), ids=lambda p: str(p.relative_to(SRC)))
def test_no_module_over_500_lines(path: Path) -> None:
    assert len(path.read_text().splitlines()) <= MAX_LINES


def test_top_level_stays_small_and_subpackages_say_what_they_hold() -> None:
    top = sorted(p.name for p in SRC.glob("*.py"))
    assert len(top) <= MAX_TOP_LEVEL_MODULES, top
    assert {p.name for p in SRC.iterdir() if (p / "__init__.py").exists()} == {
        "models", "weights", "deploy", "training", "bench", "bulk"
    }  # fmt: skip


def test_readme_architecture_names_every_subpackage_and_top_level_module() -> None:
    text = README.read_text()
    section = text[text.index("## Architecture") :]
    end = section.find("\n## ", 4)
    section = section if end < 0 else section[:end]
    for path in [*SRC.glob("*.py"), *(p for p in SRC.iterdir() if (p / "__init__.py").exists())]:
        name = path.stem if path.suffix == ".py" else path.name + "/"
        if name in ("__init__", "__main__"):
            continue
        assert name in section, f"README's Architecture section does not mention {name}"
    for path in SRC.glob("*/*.py"):
        stem = path.stem.removesuffix("_blocks").removesuffix("_convert")
        family_file = (path.parent / f"{stem}.py").exists() and path.parent.name == "models" and stem != "features"
        if path.stem != "__init__" and not family_file:
            assert path.stem in section, f"Architecture section lacks {path.parent.name}/{path.stem}"


def test_public_api_resolves() -> None:
    import litevit

    missing = [name for name in litevit.__all__ if not hasattr(litevit, name)]
    assert missing == []
    assert callable(litevit.export) and callable(litevit.fuse) and callable(litevit.create_model)
