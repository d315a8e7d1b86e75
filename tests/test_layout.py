"""The layout stays readable: no import cycle, no module past ~600 lines.

docs/architecture.md draws the picture these tests keep true.
"""

import ast
from pathlib import Path

import django_tasks

PACKAGE = Path(django_tasks.__file__).parent
#: "About 600 lines": a module past this is doing more than one job.
MAX_LINES = 640


def _modules() -> dict[str, tuple[Path, bool]]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        if "migrations" in path.parts:
            continue
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts.pop()
        found[".".join(parts)] = (path, is_package)
    return found


def _imports(name: str, path: Path, is_package: bool, modules) -> set[str]:
    """The package's modules ``name`` imports, at module level or inside a function (not
    under ``if TYPE_CHECKING``), except ``django_tasks.models``: code that runs before
    the app registry is ready imports the models inside functions, which is why those
    imports are lazy."""
    out = set()
    here = name.split(".") if is_package else name.split(".")[:-1]
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):  # imports for type checkers only are not run
        if isinstance(node, ast.If) and ast.unparse(node.test).endswith("TYPE_CHECKING"):
            node.body = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[:len(here) - (node.level - 1)]
                target = ".".join([*base, *([node.module] if node.module else [])])
            elif (node.module or "").startswith("django_tasks"):
                target = node.module
            else:
                continue
            for candidate in [*(f"{target}.{a.name}" for a in node.names), target]:
                if candidate in modules:
                    out.add(candidate)
                    break
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name in modules)
    out.discard("django_tasks.models")
    # Importing a submodule runs its packages' __init__ first: not a dependency.
    return {m for m in out if m != name and not name.startswith(m + ".")}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return cycles


def test_no_import_cycle():
    modules = _modules()
    graph = {name: _imports(name, path, is_package, modules)
             for name, (path, is_package) in modules.items()}
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_module_is_past_about_600_lines():
    long = {name: n for name, (path, _) in _modules().items()
            if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def test_a_web_process_does_not_import_the_worker():
    # The admin (autodiscovered by django.setup() in every web process) once reached the
    # worker package through rate-limit labels: 55 ms of imports in each process start.
    import subprocess
    import sys

    code = ("import django, sys; django.setup(); import django_tasks.admin; "
            "print(sorted(m for m in sys.modules if m.startswith('django_tasks.worker')))")
    env = {"PATH": "/usr/bin:/bin", "DJANGO_SETTINGS_MODULE": "sampleproject.settings",
           "DATABASE_URL": "sqlite:///:memory:"}
    out = subprocess.run([sys.executable, "-c", code], cwd=PACKAGE.parent, env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
