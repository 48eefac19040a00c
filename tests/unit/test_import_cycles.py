"""No module imports another that imports it back, in either world: the guest package (ca_appliance) and
the host package (image). Every import counts, a function-level one too (that is how the old circles,
answers<->database and watch<->banner, hid); a shared piece moves down a level instead."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = {"ca_appliance": ROOT / "overlay/usr/lib/ca-appliance", "image": ROOT}


def package_modules(root: Path, package: str) -> dict[str, Path]:
    """{dotted module name: file} of every module of the package (a package by its __init__.py)."""
    modules = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _known(name: str, known: dict) -> str | None:
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def imported_modules(name: str, path: Path, known: dict) -> set[str]:
    """The package's modules `name` imports anywhere in its file (module, function or class level)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(_known(alias.name, known) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                parts = parts[:len(parts) - node.level + 1]
                module = ".".join(parts + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            for alias in node.names:   # `from . import x` imports the module x; `from .x import y` the module x
                submodule = f"{module}.{alias.name}"
                found.add(submodule if submodule in known else _known(module, known))
    found.discard(None)
    found.discard(name)
    return found


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each a circle of imports."""
    index, low, on_stack, stack, cycles = {}, {}, set(), [], []

    def visit(module):
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for other in sorted(graph[module]):
            if other not in index:
                visit(other)
                low[module] = min(low[module], low[other])
            elif other in on_stack:
                low[module] = min(low[module], index[other])
        if low[module] == index[module]:
            component = []
            while True:
                other = stack.pop()
                on_stack.discard(other)
                component.append(other)
                if other == module:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return cycles


def import_graph(package: str) -> dict[str, set[str]]:
    known = package_modules(PACKAGES[package], package)
    return {name: imported_modules(name, path, known) for name, path in known.items()}


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_no_module_imports_one_that_imports_it_back(package):
    graph = import_graph(package)
    assert len(graph) > 10   # the walk found the package
    cycles = import_cycles(graph)
    described = ["; ".join(f"{m} imports {', '.join(sorted(graph[m] & set(c)))}" for m in c) for c in cycles]
    assert not cycles, f"import circles in {package}: {described}"


def test_the_check_sees_a_circle_hidden_in_a_function(tmp_path):
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from . import b\n")
    (package / "b.py").write_text("def later():\n    from .a import thing  # a imports this module\n")
    (package / "c.py").write_text("import pkg.a\n")
    known = package_modules(tmp_path, "pkg")
    graph = {name: imported_modules(name, path, known) for name, path in known.items()}
    assert graph["pkg.c"] == {"pkg.a"}
    assert import_cycles(graph) == [["pkg.a", "pkg.b"]]
