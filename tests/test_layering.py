"""The package's layering: each subpackage imports only from the subpackages before it.

    kernels → runtime → io → store → glm → models → bids → datasets → cli

Every import counts, at module level or inside a function, relative or
absolute. The one exception is a module-level ``__getattr__`` that serves an
old name with a DeprecationWarning (``daskglm.store.save_fit``). The kernels
import nothing but numpy, scipy, numba and the standard library.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "daskglm"
LAYERS = ["kernels", "runtime", "io", "store", "glm", "models", "bids", "datasets", "cli"]
KERNEL_LIBRARIES = {"numpy", "scipy", "numba"}


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if p.parent != PACKAGE)


def _imports(path: Path) -> list[tuple[str, int]]:
    """Absolute names of the modules ``path`` imports, with line numbers (deprecation shims excepted)."""
    tree = ast.parse(path.read_text())
    shims = {id(node) for func in tree.body if isinstance(func, ast.FunctionDef) and func.name == "__getattr__"
             for node in ast.walk(func)}
    package = ["daskglm", path.parent.name]
    found = []
    for node in ast.walk(tree):
        if id(node) in shims:
            continue
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
                if node.module is None:  # from .. import x: x may be a subpackage
                    found += [(f"{module}.{alias.name}", node.lineno) for alias in node.names]
                    continue
            else:
                module = node.module
            found.append((module, node.lineno))
    return found


def test_every_module_lies_in_a_layer():
    assert {p.parent.name for p in _modules()} == set(LAYERS)
    loose = [p.name for p in PACKAGE.glob("*.py") if p.name not in ("__init__.py", "__main__.py")]
    assert not loose, f"modules outside the layers: {loose}"


@pytest.mark.parametrize("path", _modules(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_imports_only_from_layers_below(path):
    layer = LAYERS.index(path.parent.name)
    upward = []
    for module, line in _imports(path):
        parts = module.split(".")
        if parts[0] != "daskglm" or len(parts) < 2 or parts[1] not in LAYERS:
            continue
        if LAYERS.index(parts[1]) > layer:
            upward.append(f"line {line}: {module}")
    assert not upward, f"{path.relative_to(PACKAGE)} ({LAYERS[layer]}) imports from layers above it: {upward}"


@pytest.mark.parametrize("path", sorted((PACKAGE / "kernels").glob("*.py")), ids=lambda p: p.name)
def test_kernels_import_only_numerical_libraries(path):
    outside = sorted({module.split(".")[0] for module, _ in _imports(path)}
                     - KERNEL_LIBRARIES - set(sys.stdlib_module_names) - {"daskglm", "__future__"})
    others = sorted({module for module, _ in _imports(path)
                     if module.startswith("daskglm.") and not module.startswith("daskglm.kernels")})
    assert not outside and not others, f"kernels/{path.name} imports {outside + others}"


def test_the_checker_sees_an_upward_import(tmp_path):
    """The test itself: an import from a layer above is found, relative or absolute, in a function too."""
    fake = tmp_path / "daskglm" / "kernels" / "bad.py"
    fake.parent.mkdir(parents=True)
    fake.write_text("from ..glm import fit\n\ndef f():\n    import daskglm.models.first_level\n")
    assert [m for m, _ in _imports(fake)] == ["daskglm.glm", "daskglm.models.first_level"]
