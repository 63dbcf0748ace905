"""The package's layers: every module imports on its own, and no module reaches back up an import chain
that leads to it (imports inside functions count too; those under ``if TYPE_CHECKING`` do not)."""

import ast
import subprocess
import sys
from pathlib import Path

SOURCE = Path(__file__).parents[1] / "src"
PACKAGE = SOURCE / "matryoshka"


def module_name(path: Path) -> str:
    parts = path.relative_to(SOURCE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imported(path: Path) -> set[str]:
    """Project modules ``path`` imports, outside ``if TYPE_CHECKING:`` blocks."""
    tree = ast.parse(path.read_text())
    skipped = {
        id(node)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
        for node in ast.walk(block)
    }
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        else:
            continue
        found |= {name for name in names if name in MODULES}
    return found - {module_name(path)}


def test_no_import_cycles():
    graph = {name: imported(path) for name, path in MODULES.items()}
    # a package's __init__ importing its own modules is not a cycle through them
    for name, targets in graph.items():
        graph[name] = {
            t for t in targets if not (MODULES[t].name == "__init__.py" and name.startswith(t + "."))
        }
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                cycles.append(" -> ".join([*trail[trail.index(target) :], target]))
            elif target not in state:
                visit(target, [*trail, target])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert cycles == []


def test_inference_and_the_index_never_import_training_code():
    graph = {name: imported(path) for name, path in MODULES.items()}
    runtime = [n for n in MODULES if n.startswith(("matryoshka.index", "matryoshka.server"))]
    runtime += ["matryoshka.encoder", "matryoshka.onnx_backend", "matryoshka.adapter", "matryoshka.dims"]
    for name in runtime:
        assert not {t for t in graph[name] if t.startswith("matryoshka.train")}, name


def test_nothing_under_index_imports_the_facades():
    facades = {
        "matryoshka.index",
        "matryoshka.index.local",
        "matryoshka.index.milvus",
        "matryoshka.index.backends",
    }
    for name, path in MODULES.items():
        if name.startswith("matryoshka.index.") and name not in facades:
            assert not imported(path) & facades, name


def test_every_module_imports_on_its_own():
    """Each module in turn, with every project module dropped from ``sys.modules`` first, in a fresh
    interpreter (third-party packages stay loaded, so this takes seconds)."""
    script = (
        "import importlib, sys\n"
        f"for name in {sorted(MODULES)!r}:\n"
        "    for loaded in [m for m in sys.modules if m == 'matryoshka' or m.startswith('matryoshka.')]:\n"
        "        del sys.modules[loaded]\n"
        "    importlib.import_module(name)\n"
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
