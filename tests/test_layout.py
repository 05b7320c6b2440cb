"""The layout is the architecture: imports only point down the layers, nothing imports in a cycle, the
driver side never reaches into the worker, and a full `ablate run` never imports torch in the driver."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

from conftest import ROOT, small_matrix

PKG = ROOT / "ablate"

# Bottom first; a module may import modules of its own layer or below (the longest matching prefix decides).
LAYERS = [
    ["ablate", "ablate.errors", "ablate.results"],  # (ablate.results: the package itself, which imports nothing)
    ["ablate.objectives", "ablate.results.storage", "ablate.verdict.stats", "ablate.verdict.diagnostics",
     "ablate.inputs.letters", "ablate.handoff.provenance", "ablate.handoff.packages"],
    ["ablate.schema", "ablate.results.lock", "ablate.results.collect", "ablate.results.progress"],
    ["ablate.config", "ablate.inputs", "ablate.judges"],
    ["ablate.matrix", "ablate.worker", "ablate.verdict"],
    ["ablate.cluster", "ablate.handoff", "ablate.live"],
    ["ablate.api", "ablate.cli", "ablate.__main__"],
]  # fmt: skip
# Same-layer packages that must never import each other: the worker is only reached through Ray tasks.
APART = [("ablate.matrix", "ablate.worker"), ("ablate.verdict", "ablate.worker"), ("ablate.verdict", "ablate.matrix")]
# imported inside the remote functions, on workers
RAY_TASKS = {("ablate.cluster.trainers", "ablate.worker.cell"), ("ablate.cluster.trainers", "ablate.worker.bases"),
             ("ablate.cluster.trainers", "ablate.worker.pack"),
             ("ablate.cluster.judging", "ablate.worker.reward")}  # fmt: skip


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Every ablate module this file imports, at module level or inside functions."""
    me = module_name(path)
    pkg = me if path.name == "__init__.py" else me.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = pkg.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            if not base.startswith("ablate"):
                continue
            for alias in node.names:  # `from . import objectives` names a module
                sub = f"{base}.{alias.name}"
                out.add(sub if (PKG.parent / (sub.replace(".", "/") + ".py")).is_file()
                        or (PKG.parent / sub.replace(".", "/")).is_dir() else base)  # fmt: skip
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("ablate")}
    out.discard(me)
    return out


def layer(mod: str) -> int:
    """The layer of the longest entry that is the module or a package above it (`ablate` itself: only itself)."""
    best = max((p for lay in LAYERS for p in lay if mod == p or (p != "ablate" and mod.startswith(p + "."))), key=len)
    return next(i for i, lay in enumerate(LAYERS) if best in lay)


GRAPH = {module_name(p): imports(p) for p in PKG.rglob("*.py")}


def test_every_module_has_a_layer():
    for mod in GRAPH:
        assert any(mod == p or (p != "ablate" and mod.startswith(p + ".")) for lay in LAYERS for p in lay), mod


def test_imports_only_point_down():
    up = [(a, b) for a, deps in GRAPH.items() for b in deps if layer(b) > layer(a)]
    assert not up, f"imports that point up the layers: {up}"
    apart = [
        (a, b)
        for a, deps in GRAPH.items()
        for b in deps
        for x, y in APART
        if {a.startswith(x), a.startswith(y)} == {True, False} and b.startswith(y if a.startswith(x) else x)
    ]
    assert not apart, f"imports between packages that must stay apart: {apart}"
    into_worker = [
        (a, b)
        for a, deps in GRAPH.items()
        for b in deps
        if b.startswith("ablate.worker") and not a.startswith("ablate.worker") and (a, b) not in RAY_TASKS
    ]
    assert not into_worker, f"the driver imports the worker (and so torch): {into_worker}"


def test_no_import_cycles():
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]):
        state[m] = 1
        for d in GRAPH.get(m, ()):
            if state.get(d) == 1:
                raise AssertionError(f"import cycle: {' → '.join([*path, m, d])}")
            if d in GRAPH and not state.get(d):
                visit(d, [*path, m])
        state[m] = 2

    for m in GRAPH:
        if not state.get(m):
            visit(m, [])


def test_modules_stay_readable_in_one_sitting():
    long = {module_name(p): n for p in PKG.rglob("*.py") if (n := len(p.read_text().splitlines())) > 450}
    assert not long, f"modules over 450 lines: {long}"


def test_a_full_run_never_imports_torch_in_the_driver(tmp_path):
    m = small_matrix()
    (tmp_path / "m.yaml").write_text(json.dumps(m))
    code = (
        "import sys\n"
        "from ablate.cli import main\n"
        f"sys.argv = ['ablate', 'run', {str(tmp_path / 'm.yaml')!r}, '--results', {str(tmp_path / 'r')!r}]\n"
        "try:\n    main()\nexcept SystemExit as e:\n    code = e.code\n"
        "print('TORCH_IMPORTED', 'torch' in sys.modules, 'EXIT', code)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert "TORCH_IMPORTED False EXIT 0" in r.stdout, r.stdout[-2000:] + r.stderr[-2000:]
    assert (tmp_path / "r" / "t" / "report.md").is_file()
