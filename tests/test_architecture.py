"""The layers hold: import-linter's contracts (pyproject.toml) pass, a forbidden import is
caught, there is no import cycle anywhere, and models/ imports only mlx and mlx_lm.models.

The tree is copied into the layout it installs as (models/, convert/, eval/, tui/ inside
mlxsmall/), because grimp walks folders and the editable install maps them by name."""

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SUBPACKAGES = ("models", "convert", "eval", "tui")

pytest.importorskip("importlinter")


def installed_layout(dst: Path) -> Path:
    src = dst / "src"
    ignore = shutil.ignore_patterns("__pycache__", "data", "samples", "*.jsonl", "*.png")
    shutil.copytree(ROOT / "mlxsmall", src / "mlxsmall", ignore=ignore)
    for name in SUBPACKAGES:
        shutil.copytree(ROOT / name, src / "mlxsmall" / name, ignore=ignore)
    shutil.copy(ROOT / "pyproject.toml", dst / "pyproject.toml")
    return src


def lint_imports(tmp_path: Path) -> subprocess.CompletedProcess:
    command = [sys.executable, "-c", "from importlinter.cli import lint_imports_command; lint_imports_command()",
               "--no-cache"]
    env = {"PYTHONPATH": str(tmp_path / "src"), "HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


def test_layer_contracts_pass_and_catch_a_forbidden_import(tmp_path):
    src = installed_layout(tmp_path)
    result = lint_imports(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout

    # A model module that reached up into the loader would break the leaf contract.
    victim = src / "mlxsmall" / "models" / "mobillama.py"
    victim.write_text(victim.read_text() + "\n\ndef _oops():\n    from mlxsmall.loading import read_config\n")
    result = lint_imports(tmp_path)
    assert result.returncode != 0
    assert "models/ is a leaf" in result.stdout and "BROKEN" in result.stdout


def test_no_import_cycles(tmp_path):
    import grimp

    src = installed_layout(tmp_path)
    sys.path.insert(0, str(src))
    saved = {name: module for name, module in sys.modules.items() if name == "mlxsmall" or name.startswith("mlxsmall.")}
    for name in saved:
        del sys.modules[name]
    try:
        graph = grimp.build_graph("mlxsmall", cache_dir=None)
    finally:
        sys.path.remove(str(src))
        for name in [n for n in sys.modules if n == "mlxsmall" or n.startswith("mlxsmall.")]:
            del sys.modules[name]
        sys.modules.update(saved)
    cycles = [component for component in strongly_connected(graph) if len(component) > 1]
    assert cycles == []


def strongly_connected(graph):
    """Tarjan's components of the module import graph (imports inside functions count too)."""
    index, low, stack, on_stack, components = {}, {}, [], set(), []

    def visit(module):
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for target in graph.find_modules_directly_imported_by(module):
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in on_stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == module:
                    break
            components.append(sorted(component))

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 10_000))
    try:
        for module in sorted(graph.modules):
            if module not in index:
                visit(module)
    finally:
        sys.setrecursionlimit(limit)
    return components


def test_models_import_only_mlx_and_mlx_lm_models():
    allowed_prefixes = ("mlx.", "mlx_lm.models.")  # siblings are imported relatively (from .mobilellm ...)
    for path in sorted((ROOT / "models").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                ok = name == "mlx" or name.startswith(allowed_prefixes) or top in sys.stdlib_module_names
                assert ok, f"{path.name}:{node.lineno} imports {name}"
