"""The project's modules import one way: no module reaches itself through the project's own imports, counting
those inside functions too (a circle there still ties the modules together, and breaks once one of them is
imported first from elsewhere)."""
import ast
from pathlib import Path

from conftest import ROOT

PACKAGES = ("runner", "models")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_imports() -> dict:
    """Each module of the project (the files at the top and the packages) -> the project's modules it imports."""
    paths = [*ROOT.glob("*.py"), *(path for package in PACKAGES for path in (ROOT / package).glob("*.py"))]
    modules = {module_name(path): path for path in paths}
    graph = {}
    for name, path in modules.items():
        named = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                named |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                package = name if path.name == "__init__.py" else name.rpartition(".")[0]
                base = node.module if not node.level else ".".join(filter(None, [package, node.module]))
                named |= {base} | {f"{base}.{alias.name}" for alias in node.names}
        graph[name] = named & modules.keys() - {name}
    return graph


def reachable(graph: dict, start: str) -> set:
    seen, waiting = set(), list(graph[start])
    while waiting:
        name = waiting.pop()
        if name not in seen:
            seen.add(name)
            waiting += graph[name]
    return seen


def test_no_module_reaches_itself_through_the_projects_imports():
    graph = project_imports()
    assert {"runner.commands", "runner.train_command"} <= graph["main"] and "runner.cli_words" in graph["runner.slurm"]
    circles = {name: sorted(graph[name] & {other for other in graph if name in reachable(graph, other)})
               for name in graph if name in reachable(graph, name)}
    assert circles == {}, f"each module, with the modules it imports that lead back to it: {circles}"
