"""The layout holds: the shared core (``lakehouse``) imports no stage package, and the runtime (the core and the
stages) imports none of the tools (``tools``: traffic, stack control, the e2e harness)."""

from __future__ import annotations

import ast

from lakehouse import PROJECT_ROOT

STAGES = ("bronze", "silver", "gold", "features", "training", "serving", "monitoring")
RUNTIME = ("lakehouse", *STAGES)


def module_imports(path) -> set[str]:
    """The modules a file imports (absolute imports, wherever they are in it)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


def imports_of(packages: tuple[str, ...], forbidden: tuple[str, ...]) -> dict[str, list[str]]:
    found = {
        str(path.relative_to(PROJECT_ROOT)): sorted(n for n in module_imports(path) if n.split(".")[0] in forbidden)
        for pkg in packages
        for path in (PROJECT_ROOT / pkg).rglob("*.py")
    }
    return {k: v for k, v in found.items() if v}


def test_the_core_imports_no_stage():
    # the pipeline starts the stages by name from the topology (importlib), the one place the core reaches them
    assert imports_of(("lakehouse",), STAGES) == {}


def test_the_runtime_imports_no_tool():
    # `python -m silver.reference seed` regenerates the seeds from the traffic tool's synthetic population
    assert imports_of(RUNTIME, ("tools",)) == {"silver/reference.py": ["tools.traffic.population"]}
