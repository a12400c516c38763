"""The package's layers, read from the imports: no module imports from a layer above its own, and
no two packages import each other (directly or round a loop).

From the bottom: what a stream and a request are (stream/, wire, errors) and the one seam for
I/O (upstream); the MTP knowledge (mtp/); the runtime adapters (runtimes/) and what the proxy asks
of a client format (formats); config, metrics, managed processes, limits; the live backends and
routing; the proxy itself, verify and the middleware; the app's typed state; the client formats'
handlers (front/) and the proxy's own routes; the app factory, the server and the command line.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "mtproxy"

LAYERS: list[tuple[str, ...]] = [
    ("mtproxy", "mtproxy.errors", "mtproxy.stream", "mtproxy.embedded", "mtproxy.watchdog"),
    ("mtproxy.wire", "mtproxy.upstream", "mtproxy.mtp", "mtproxy.openapi"),
    ("mtproxy.formats", "mtproxy.runtimes"),
    ("mtproxy.config", "mtproxy.launcher", "mtproxy.limits", "mtproxy.metrics", "mtproxy.swap"),
    ("mtproxy.backends", "mtproxy.router", "mtproxy.status"),
    ("mtproxy.proxy", "mtproxy.verify", "mtproxy.middleware", "mtproxy.clients"),
    ("mtproxy.state",),
    ("mtproxy.reload", "mtproxy.handlers", "mtproxy.front", "mtproxy.ui"),
    ("mtproxy.app", "mtproxy.server", "mtproxy.cli", "mtproxy.__main__"),
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path) -> set[str]:
    """The mtproxy modules (or names in them) ``path`` imports, as absolute dotted names."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
                found.update([target] if node.module else [f"{target}.{a.name}" for a in node.names])
            elif (node.module or "").split(".")[0] == "mtproxy":
                found.add(node.module or "")
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "mtproxy")
    return found


def layer(name: str) -> int:
    """The layer of a module, by its longest listed prefix (``mtproxy`` alone: the root only)."""
    best, best_len = -1, -1
    for i, members in enumerate(LAYERS):
        for member in members:
            matches = name == member or (member != "mtproxy" and name.startswith(member + "."))
            if matches and len(member) > best_len:
                best, best_len = i, len(member)
    return best


def graph() -> dict[str, set[str]]:
    return {module_name(p): imports(p) for p in PACKAGE.rglob("*.py")}


def test_every_module_has_a_layer() -> None:
    missing = sorted(m for m in graph() if layer(m) < 0)
    assert not missing, f"modules in no layer of tests/test_layers.py: {missing}"


def test_no_import_from_a_higher_layer() -> None:
    upward = []
    for module, deps in graph().items():
        for dep in deps:
            target = dep
            while layer(target) < 0 and "." in target:  # `from .x import name`: the module x
                target = target.rpartition(".")[0]
            if layer(target) > layer(module):
                upward.append(f"{module} (layer {layer(module)}) imports {dep} (layer {layer(target)})")
    assert not upward, "\n".join(sorted(upward))


def _package(name: str) -> str:
    parts = name.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 else name


def test_no_loop_between_packages() -> None:
    modules = graph()
    packages = {_package(m) for m in modules}
    edges: dict[str, set[str]] = {}
    for module, deps in modules.items():
        for dep in deps:
            a, b = _package(module), _package(dep)
            if a != b and b in packages:
                edges.setdefault(a, set()).add(b)
    seen: dict[str, int] = {}  # 1: on the path, 2: done

    def visit(node: str, path: list[str]) -> None:
        seen[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if seen.get(nxt) == 1:
                raise AssertionError("import loop: " + " -> ".join([*path[path.index(nxt):], nxt]))
            if nxt not in seen:
                visit(nxt, [*path, nxt])
        seen[node] = 2

    for start in sorted(edges):
        if start not in seen:
            visit(start, [start])


def test_every_package_says_what_it_may_import() -> None:
    for init in PACKAGE.rglob("__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        assert "import" in doc.lower(), f"{init.relative_to(PACKAGE.parent)}: no docstring saying what it may import"
