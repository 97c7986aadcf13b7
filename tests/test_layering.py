"""The import layering of ``src/zsad``, checked on the source against the table in
``docs/architecture.md`` (the one place the layers are written down): a module imports only from its own
layer or the layers below it, at module level and inside functions alike; every module belongs to a row;
the top of the package holds only the entry points and packages. The torch-free layers are checked by
importing them where torch cannot be imported.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torchless

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
PACKAGE = SRC / "zsad"
ARCHITECTURE = ROOT / "docs" / "architecture.md"
TOP_LEVEL_FILES = {"__init__.py", "__main__.py", "cli.py", "config.py", "errors.py"}
TORCH_FREE = ("zsad.inference", "zsad.deploy")
# The service over exported models (`zsad serve --model`): every module of zsad.serve but the PyTorch method's.
TORCH_FREE_MODULES = ("zsad.serve", "zsad.serve.app", "zsad.serve.service", "zsad.serve.store", "zsad.serve.worker",
                      "zsad.serve.models", "zsad.commands.serve")


def read_layers(text: str) -> list[tuple[str, tuple[str, ...]]]:
    """``(layer, module prefixes)`` per row of the "## Layers" table, in order (lowest first)."""
    section = text.split("## Layers", 1)[1].split("\n## ", 1)[0]
    layers = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 2 or cells[0] in ("layer", "") or set(cells[0]) <= {"-"}:
            continue
        layers.append((cells[0], tuple(re.findall(r"`(zsad[\w.]*)`", cells[1]))))
    return layers


LAYERS = read_layers(ARCHITECTURE.read_text())
RANK = {name: i for i, (name, _) in enumerate(LAYERS)}


def layer_of(module: str) -> str:
    """The row naming the longest prefix of ``module``; the package ``zsad`` itself matches only exactly."""
    best = ("", "")
    for name, prefixes in LAYERS:
        for prefix in prefixes:
            matches = module == prefix or (prefix != "zsad" and module.startswith(prefix + "."))
            if matches and len(prefix) > len(best[1]):
                best = (name, prefix)
    if not best[0]:
        raise AssertionError(f"{module} belongs to no layer: add it to the table in docs/architecture.md")
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
    rank = RANK[layer_of(importer)]
    return [f"{path.relative_to(SRC)}:{line} ({layer_of(importer)}) imports {m} ({layer_of(m)})"
            for line, m in imported_modules(path) if RANK[layer_of(m)] > rank]


def test_the_table_is_read():
    assert [name for name, _ in LAYERS][:3] == ["core", "data", "inference"] and LAYERS[-1][0] == "app"
    assert all(prefixes for _, prefixes in LAYERS)


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_only_from_its_own_layer_or_below(path: Path) -> None:
    assert violations(path) == []


def test_the_top_of_the_package_holds_only_entry_points_and_packages():
    stray = [p.name for p in PACKAGE.iterdir()
             if p.is_file() and p.suffix == ".py" and p.name not in TOP_LEVEL_FILES]
    assert stray == []
    for path in PACKAGE.iterdir():
        if path.is_dir() and (path / "__init__.py").is_file():
            layer_of(module_name(path / "__init__.py"))  # every package is named by a row


def test_the_checker_sees_an_upward_import_and_an_unplaced_module(tmp_path: Path) -> None:
    """Checks that can fail: an engine module importing the report layer is reported, and a new top-level
    module that no row names is refused."""
    fake = PACKAGE / "engine" / "scorer.py"
    source = fake.read_text() + "\nfrom zsad.report import write_report\n"
    tree_path = tmp_path / "src" / "zsad" / "engine" / "scorer.py"
    tree_path.parent.mkdir(parents=True)
    tree_path.write_text(source)
    global SRC
    saved, SRC = SRC, tmp_path / "src"
    try:
        assert any("imports zsad.report" in v for v in violations(tree_path))
    finally:
        SRC = saved
    with pytest.raises(AssertionError, match="belongs to no layer"):
        layer_of("zsad.helpers")


BLOCKED = torchless.BLOCK_TORCH + """
import importlib, pkgutil
import zsad
for package in %r:
    root = importlib.import_module(package)
    for info in pkgutil.walk_packages(root.__path__, package + "."):
        importlib.import_module(info.name)
for module in %r:
    importlib.import_module(module)
from zsad.cli import build_parser
build_parser()
print("ok")
"""


def test_torch_free_layers_import_without_torch():
    """Every module of ``zsad.inference`` and ``zsad.deploy``, the service's modules but the method's, and the
    CLI's parser, where torch, transformers and the rest of the ``torch`` extra cannot be imported."""
    done = subprocess.run([sys.executable, "-c", BLOCKED % (TORCH_FREE, TORCH_FREE_MODULES)], capture_output=True,
                          text=True,
                          env={"PYTHONPATH": str(SRC), "PATH": ""})
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
