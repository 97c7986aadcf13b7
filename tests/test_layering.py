"""The import layering of ``src/zsad``, checked on the source: a module imports only from its own layer
or the layers below it, at module level and inside functions alike.

    base → data → backbones → methods → engine → report → app (commands, cli, demo, serve)

``base`` holds what every layer may use (errors, atomic I/O, configs, devices, pictures, metrics,
progress bars, tiling geometry, threshold rules, the
papers' protocols as data). ``data`` also holds the torch-free prediction of a
folder (``zsad.prediction``), which any scorer drives. ``deploy`` is the torch-free runtime: it may
import only the torch-free modules named in ``DEPLOY_ALLOWED``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "zsad"

LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("base", ("zsad", "zsad.errors", "zsad.io", "zsad.config", "zsad.runtime", "zsad.overlay", "zsad.progress",
              "zsad.metrics", "zsad.tiling", "zsad.calibration", "zsad.protocols")),
    ("data", ("zsad.data", "zsad.prediction")),
    ("backbones", ("zsad.backbones",)),
    ("methods", ("zsad.methods", "zsad.prompts", "zsad.synthesis")),
    ("engine", ("zsad.engine", "zsad.export")),
    ("report", ("zsad.report",)),
    ("app", ("zsad.commands", "zsad.cli", "zsad.cli_common", "zsad.demo", "zsad.__main__", "zsad.serve")),
]
RANK = {name: i for i, (name, _) in enumerate(LAYERS)}
# The torch-free runtime: what it may import, whatever the layers say.
DEPLOY_ALLOWED = ("zsad", "zsad.errors", "zsad.io", "zsad.overlay", "zsad.deploy", "zsad.tiling", "zsad.calibration",
                  "zsad.prediction", "zsad.data.images")


def layer_of(module: str) -> str:
    best = ("", "")
    for name, prefixes in LAYERS:
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > len(best[1]):
                best = (name, prefix)
    if not best[0]:
        raise AssertionError(f"{module} belongs to no layer: add it to LAYERS")
    return best[0]


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """``(line, module)`` of every ``zsad`` import in the file, relative imports resolved."""
    tree = ast.parse(path.read_text(), str(path))
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                is_module = (SRC / Path(*candidate.split("."))).with_suffix(".py").is_file() or \
                    (SRC / Path(*candidate.split("."))).is_dir()
                found.append((node.lineno, candidate if is_module else base))
    return [(line, m) for line, m in found if m == "zsad" or m.startswith("zsad.")]


SOURCES = sorted(PACKAGE.rglob("*.py"))


def violations(path: Path) -> list[str]:
    importer = module_name(path)
    if importer == "zsad.deploy" or importer.startswith("zsad.deploy."):
        return [f"{path.relative_to(SRC)}:{line} imports {m} (deploy must stay torch-free)"
                for line, m in imported_modules(path)
                if not any(m == a or m.startswith(a + ".") for a in DEPLOY_ALLOWED)]
    rank = RANK[layer_of(importer)]
    return [f"{path.relative_to(SRC)}:{line} ({layer_of(importer)}) imports {m} ({layer_of(m)})"
            for line, m in imported_modules(path)
            if not m.startswith("zsad.deploy") and RANK[layer_of(m)] > rank]


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_only_from_its_own_layer_or_below(path: Path) -> None:
    assert violations(path) == []


def test_the_checker_sees_an_upward_import(tmp_path: Path) -> None:
    """A check that can fail: an engine module importing the report layer is reported."""
    fake = PACKAGE / "engine" / "predict.py"
    source = fake.read_text() + "\nfrom zsad.report import write_report\n"
    tree_path = tmp_path / "src" / "zsad" / "engine" / "predict.py"
    tree_path.parent.mkdir(parents=True)
    tree_path.write_text(source)
    global SRC
    saved, SRC = SRC, tmp_path / "src"
    try:
        assert any("imports zsad.report" in v for v in violations(tree_path))
    finally:
        SRC = saved
