"""Which side may import what, checked in a fresh interpreter per rule, as a user's process would load it.

The server never imports torch (it deploys without PyTorch), nor does the accuracy check of an export;
the client never imports ONNX Runtime, torch or the server (`cnnserve[client]` is enough to call a
server); `cnnserve`, which both sides share, imports neither side; and `models/` has no import cycle,
counting imports inside functions too, so that a cycle cannot hide in a deferred import.
"""
import ast
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Run in a fresh interpreter: import each module (and run each entry point with --help, as a user
# would start it) in turn, and name the first one after which a forbidden module is loaded.
CHECK = textwrap.dedent("""
    import importlib, pkgutil, runpy, sys

    def forbidden_loaded():
        return sorted(m for m in sys.modules if any(m == f or m.startswith(f + ".") for f in FORBIDDEN))

    def help_of(module):
        sys.argv = [module, "--help"]
        try:
            runpy.run_module(module, run_name="__main__", alter_sys=True)
        except SystemExit as exit:
            assert exit.code in (0, None), f"{module} --help exited with {exit.code}"

    def walk(package):
        root = importlib.import_module(package)
        return [package] + [m.name for m in pkgutil.walk_packages(root.__path__, package + ".")]

    steps = [("import", m) for p in PACKAGES for m in walk(p)] + [("import", m) for m in MODULES] + \\
            [("run", m) for m in PROGRAMS]
    for how, module in steps:
        help_of(module) if how == "run" else importlib.import_module(module)
        loaded = forbidden_loaded()
        if loaded:
            sys.exit(f"{how} {module} loaded {', '.join(loaded[:5])}")
""")


def check(forbidden: list[str], *, packages=(), modules=(), programs=()) -> None:
    code = (f"FORBIDDEN, PACKAGES, MODULES, PROGRAMS = {forbidden!r}, {list(packages)!r}, {list(modules)!r}, "
            f"{list(programs)!r}\n" + CHECK)
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


def test_the_server_never_imports_torch():
    check(["torch"], modules=["server.app", "server.service", "server.kserve", "server.http", "server.batcher",
                              "server.dataplane"], programs=["server"])


def test_the_client_imports_neither_onnx_runtime_nor_torch_nor_the_server():
    # server/client.py and server/loadtest.py are shims that import the client: the rule is the client's own.
    check(["onnxruntime", "torch", "server"], packages=["client"], programs=["client.cli", "client.loadtest"])


def test_the_shared_package_imports_neither_side():
    """`cnnserve` is what both sides import; it loads no server, client, training or export code, and none of
    their heavy runtimes. `cnnserve.default_repository` builds models by running `python -m export.defaults`
    in a subprocess, never by importing it."""
    check(["server", "client", "models", "export", "torch", "onnxruntime"], packages=["cnnserve"])


def test_checking_an_export_needs_no_torch():
    """`python -m export.evaluate` scores an exported model with ONNX Runtime and the torch-free dataset reader
    (`cnnserve.fashion_mnist`): a serving install can check what it serves."""
    check(["torch"], modules=["export.evaluate"], programs=["export.evaluate"])


def intra_package_imports(package: Path) -> dict[str, set[str]]:
    """module -> the modules of `package` it imports, anywhere in its file (in functions too). `models/__init__.py`
    is the module `models`; importing `models.x` counts as an edge to `models.x` only, not also to the package
    `models` whose __init__ Python runs first (every submodule would otherwise be in a cycle with it)."""
    name = package.name
    modules = {name: package / "__init__.py"} | {f"{name}.{p.stem}": p for p in package.glob("*.py")
                                                  if p.stem != "__init__"}
    graph = {}
    for module, path in modules.items():
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:   # relative: resolved against this module's package
                    base = ".".join([name, *(node.module.split(".") if node.module else [])])
                else:
                    base = node.module or ""
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                           for alias in node.names]
            else:
                continue
            edges |= {t for t in targets if t in modules and t != module}
        graph[module] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as [a, b, …, a], or None."""
    state: dict[str, str] = {}       # "open" while on the current path, "done" after

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = "open"
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                return path[path.index(target):] + [target]
            if target not in state and (cycle := visit(target, path + [target])):
                return cycle
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start, [start])):
            return cycle
    return None


def test_find_cycle_reports_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_models_has_no_import_cycle():
    graph = intra_package_imports(ROOT / "models")
    assert {"models.registry", "models.pretrained", "models.train"} <= set(graph), "the graph covers models/"
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle in models/: " + " -> ".join(cycle)


def test_the_entry_helpers_need_only_the_standard_library():
    """cnnserve.entry reports a missing dependency, so it must import where none is installed (-S: no site-packages)."""
    code = f"import sys; sys.path.insert(0, {str(ROOT)!r}); import cnnserve.entry, cnnserve.cli"
    result = subprocess.run([sys.executable, "-E", "-S", "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
