"""The run machinery's import graph has no circle, and importing ablate changes nothing outside
it (no log levels, no matplotlib backend): those are set where they are used."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import ablate

PACKAGE = Path(ablate.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """The ablate modules a module imports, at module level or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("ablate"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("ablate"))
    return found


def test_the_run_package_has_no_import_circle() -> None:
    graph = {_module_name(p): _imports(p) for p in sorted((PACKAGE / "run").rglob("*.py"))}
    graph = {m: {i for i in imports if i in graph and i != m} for m, imports in graph.items()}

    def visit(module: str, path: tuple[str, ...]) -> None:
        for imported in graph[module]:
            assert imported not in path, f"import circle: {' -> '.join([*path, imported])}"
            visit(imported, (*path, imported))

    for module in graph:
        visit(module, (module,))
    assert "ablate.run.executors.base" in graph["ablate.run.executors.slurm"]


def test_importing_ablate_sets_no_log_level_and_no_matplotlib_backend() -> None:
    code = (
        "import logging, matplotlib, mlflow\n"
        "level = logging.getLogger('mlflow').level  # as mlflow itself leaves it\n"
        "import ablate.cli, ablate.run.driver, ablate.run.tracking, ablate.report.plots\n"
        "import ablate.report.html\n"
        "print(logging.getLogger('mlflow').level == level)\n"
        "print(matplotlib.rcParams._get_backend_or_none())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    # the Tracker quiets MLflow when it opens the store; the report renders without pyplot
    assert out.stdout.split() == ["True", "None"]
