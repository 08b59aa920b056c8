"""Structural promises of the design, checked on the source itself.

Run as a script (`make lint` does), it prints the counts the layering work is measured by: project
imports inside function bodies, and import cycles among the application modules counting those.
"""

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ["gateway", "governance", "reviews", "sessions", "mcpserver"]

# Ceilings that only go down. An import inside a function hides a dependency (usually a cycle); the
# layer contract in pyproject.toml ([tool.importlinter]) sees them, these counts keep them out. The one
# allowed: gateway/apps.py imports gateway/wiring.py in ready() (the modules that register hooks).
MAX_FUNCTION_LEVEL_IMPORTS = 1
MAX_IMPORT_CYCLES = 0


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_only_the_pipeline_imports_the_connectors():
    offenders = []
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            rel = path.relative_to(ROOT).as_posix()
            if rel.startswith("gateway/connectors/") or rel.startswith("gateway/pipeline/"):
                continue
            if any(
                name == "gateway.connectors" or name.startswith("gateway.connectors.")
                for name in _imports(path)
            ):
                offenders.append(rel)
    assert offenders == [], f"only gateway/pipeline/ may import connectors: {offenders}"


def test_mcp_tools_do_not_touch_models_directly():
    """Tools are thin adapters: they call services and selectors, never the ORM."""
    offenders = []
    for path in (ROOT / "mcpserver" / "tools").glob("*.py"):
        for name in _imports(path):
            if name.endswith(".models") or ".models." in name:
                offenders.append(f"{path.name}: {name}")
    assert offenders == []


def test_the_sessions_app_does_not_take_djangos_label():
    from django.apps import apps

    assert apps.get_app_config("records").name == "sessions"
    assert apps.get_app_config("sessions").name == "django.contrib.sessions"


def test_every_scheduled_task_exists():
    from django.conf import settings

    from gateway.celery import app

    app.loader.import_default_modules()
    for entry in settings.CELERY_BEAT_SCHEDULE.values():
        assert entry["task"] in app.tasks, entry["task"]


def test_every_fact_about_a_connection_kind_comes_from_its_record():
    """gateway/kinds.py is the one record per kind: the model's choices, the connector registry, the
    dialects, the session page's lexers, the MCP tools' enum and the admin form all list its kinds."""
    from gateway import admin_editors, pipeline
    from gateway.kinds import KINDS, SQL_DIALECTS
    from gateway.models import ConnectionKind
    from governance import guardrails
    from mcpserver.tools import connections
    from sessions.views import LEXERS

    names = list(KINDS)
    assert [value for value, _ in ConnectionKind.choices] == names
    assert sorted(pipeline.connection_kinds()) == sorted(names) == sorted(admin_editors.KIND_SETTINGS)
    assert list(LEXERS) == names
    assert guardrails.DIALECTS == SQL_DIALECTS == {k: r.dialect for k, r in KINDS.items() if r.dialect}
    enum = connections.ListArgs.model_json_schema()["properties"]["kind"]["anyOf"][0]["enum"]
    assert enum == names
    assert all(f"{name}: " in connections.SETTINGS_HELP for name in names)
    assert [k for k, r in KINDS.items() if not r.exec] == ["mcp"] and KINDS["mcp"].exec_refusal


# --- the module graph, imports inside functions included --------------------------------------------


def _modules() -> dict[str, Path]:
    """Every application module (migrations aside) by dotted name."""
    modules = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if "migrations" in parts:
                continue
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def _graph() -> tuple[dict[str, set[str]], list[tuple[str, int, str]]]:
    """(module -> the project modules it imports, [(module, line, imported) for imports inside functions]).

    An imported name resolves to the longest module prefix that exists (`from a import b` is module
    `a.b` when there is one). Imports under `if TYPE_CHECKING:` do not run and are left out."""
    modules = _modules()

    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    edges: dict[str, set[str]] = {name: set() for name in modules}
    in_functions = []
    for name, path in modules.items():
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]

        def visit(node, in_function, type_checking, name=name, package=package):
            for child in ast.iter_child_nodes(node):
                inner = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
                guarded = type_checking or (
                    isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test)
                )
                if isinstance(child, ast.Import | ast.ImportFrom) and not guarded:
                    if isinstance(child, ast.Import):
                        wanted = [alias.name for alias in child.names]
                    else:
                        base = child.module or ""
                        if child.level:
                            base = ".".join(
                                package[: len(package) - child.level + 1] + ([base] if base else [])
                            )
                        wanted = [f"{base}.{alias.name}" for alias in child.names]
                    targets = {resolve(w) for w in wanted} - {None, name}
                    edges[name].update(targets)
                    if inner:
                        in_functions.extend((name, child.lineno, target) for target in sorted(targets))
                visit(child, inner, guarded)

        visit(ast.parse(path.read_text(), filename=str(path)), False, False)
    return edges, in_functions


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for root in edges:
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_graph_sees_imports_inside_functions():
    edges, in_functions = _graph()
    # gateway/apps.py imports the start-up wiring in ready(), nowhere else.
    assert "gateway.wiring" in edges["gateway.apps"]
    assert ("gateway.apps", "gateway.wiring") in {(m, t) for m, _, t in in_functions}


def test_function_level_imports_and_cycles_do_not_grow():
    edges, in_functions = _graph()
    cycles = _cycles(edges)
    assert len(in_functions) <= MAX_FUNCTION_LEVEL_IMPORTS, (
        "move the import to the top (and the shared piece down)"
    )
    assert len(cycles) <= MAX_IMPORT_CYCLES, cycles


if __name__ == "__main__":
    edges, in_functions = _graph()
    cycles = _cycles(edges)
    verbose = "-v" in sys.argv
    print(f"project imports inside functions: {len(in_functions)} (ceiling {MAX_FUNCTION_LEVEL_IMPORTS})")
    for module, line, target in in_functions if verbose else ():
        print(f"  {module}:{line} -> {target}")
    print(
        f"import cycles counting them: {len(cycles)} (ceiling {MAX_IMPORT_CYCLES}), sizes {[len(c) for c in cycles]}"
    )
    for cycle in cycles if verbose else ():
        print("  " + ", ".join(cycle))
    sys.exit(len(in_functions) > MAX_FUNCTION_LEVEL_IMPORTS or len(cycles) > MAX_IMPORT_CYCLES)
