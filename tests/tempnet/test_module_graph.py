"""The import graph of tempnet/, read from the source (ast, every import, a function's own included): no cycle,
and no module imports another module's private (underscore) name: what a module shares, it names publicly."""

import ast
import graphlib
from pathlib import Path

import tempnet

ROOT = Path(tempnet.__file__).parent


def _modules() -> dict[str, Path]:
    """{dotted name: file} of every module of the package (a package is its __init__.py)."""
    found = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _imports(name: str, path: Path, modules: dict[str, Path]):
    """(imported tempnet module, [names taken from it]) for every import statement of one module."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in modules:
                    yield alias.name, []
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package, one level up per extra dot
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            if base not in modules:
                continue
            names = []
            for alias in node.names:
                if f"{base}.{alias.name}" in modules:  # `from tempnet.eval import tables`: the submodule
                    yield f"{base}.{alias.name}", []
                else:
                    names.append(alias.name)
            if names:
                yield base, names


def _graph():
    modules = _modules()
    edges = {name: set() for name in modules}
    private = []
    for name, path in modules.items():
        for target, names in _imports(name, path, modules):
            if target != name:
                edges[name].add(target)
            private += [f"{name} imports {n} from {target}" for n in names if n.startswith("_")]
    return edges, private


def test_the_graph_covers_the_package():
    edges, _ = _graph()
    assert {"tempnet.data.bad_samples", "tempnet.eval.tables", "tempnet.train.cli"} <= set(edges)
    assert "tempnet.eval.results" in edges["tempnet.eval.tables"]


def test_no_import_cycle():
    edges, _ = _graph()
    try:
        tuple(graphlib.TopologicalSorter(edges).static_order())
    except graphlib.CycleError as err:
        raise AssertionError(f"import cycle: {' -> '.join(err.args[1])}") from None


def test_no_module_imports_a_private_name():
    _, private = _graph()
    assert not private, "\n".join(private)


def test_light_tools_start_without_torch():
    """`import tempnet` imports its names on first use: a tool that needs only the errors, the shard index or the
    curves (scripts/loss_compare.py, scripts/index_shards.py, scripts/make_tables.py) starts without torch
    (about 2 s a process)."""
    import subprocess
    import sys

    code = ("import runpy, sys; sys.argv = ['x', '--help']\n"
            "for script in ('loss_compare', 'index_shards', 'make_tables'):\n"
            "    try: runpy.run_path(f'scripts/{script}.py', run_name='__main__')\n"
            "    except SystemExit: pass\n"
            "import tempnet.errors, tempnet.data.shard_index\n"
            "print('loaded:', sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT.parent)
    assert out.stdout.strip().endswith("loaded: []"), out.stdout[-500:]
