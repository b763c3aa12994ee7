"""Import layering: each package imports only its own floor and the floors below it.

Every `import` in every module counts, function-level ones included (a lazy import is still a
dependency; it only hides the cycle until runtime). A new package must be placed in FLOORS.
"""
from __future__ import annotations

import ast
from pathlib import Path

import leanlm

ROOT = Path(leanlm.__file__).parent

# Lowest first (DESIGN.md section 2). Packages on one floor may use each other.
FLOORS = {
    "errors": 0, "config": 0, "artifact": 0, "shapes": 0,
    "data": 1, "models": 1, "index": 1,
    "runtime": 2, "generate": 2, "export": 2,
    "compress": 3, "train": 3,
    "bench": 4,
    "optimize": 5, "serve": 5, "cli": 5, "demo": 5,
}
TOP = max(FLOORS.values())

# Known, deliberate exceptions, each with its reason. Keep this short.
ALLOWED = {
    # A model directory names its backend; LeanModel.save / load_dir look it up in the backend
    # registry by that name (the registry imports the backend module lazily).
    ("leanlm.artifact", "leanlm.runtime"): "backend registry dispatch",
}


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _floor(module: str, path: Path | None = None) -> int | None:
    parts = module.split(".")
    if len(parts) == 1:
        return 0  # the root package: __version__ and lazy verbs (checked separately)
    # Per-package `cli.py` / `*_cli.py` modules are the command-line floor, spread over the packages.
    if parts[-1] == "cli" or parts[-1].endswith("_cli") or (path is not None and path.name == "cli.py"):
        return TOP
    return FLOORS.get(parts[1])


def _imports(source: str, path: Path, module: str) -> list[tuple[int, str, list[str]]]:
    out = []
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source, filename=str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            out.append((node.lineno, target, [a.name for a in node.names]))
    return out


def _check(module: str, path: Path, source: str) -> list[str]:
    own = _floor(module, path)
    if own is None:
        return [f"{module}: package {module.split('.')[1]!r} has no floor; add it to FLOORS"]
    bad = []
    for line, target, names in _imports(source, path, module):
        if target != "leanlm" and not target.startswith("leanlm."):
            continue
        if target == "leanlm":
            if set(names) <= {"__version__"} or own == TOP:
                continue
            bad.append(f"{module}:{line} imports the leanlm facade {names} (import the defining module)")
            continue
        if target.split(".")[1] == module.split(".")[1]:
            continue  # inside one package
        floor = _floor(target)
        if floor is None:
            bad.append(f"{module}:{line} imports {target}: unknown package")
        elif floor > own and (module, ".".join(target.split(".")[:2])) not in ALLOWED:
            bad.append(f"{module}:{line} (floor {own}) imports {target} (floor {floor})")
    return bad


def test_no_upward_imports():
    bad = []
    for path in sorted(ROOT.rglob("*.py")):
        module = _module_name(path)
        if module != "leanlm":  # the facade maps verbs to their modules lazily; it is no floor
            bad += _check(module, path, path.read_text())
    assert not bad, "upward imports between packages:\n" + "\n".join(bad)


def test_checker_sees_function_level_and_relative_imports():
    # A lazy upward import is the form that hid the runtime -> bench cycle.
    path = ROOT / "runtime" / "probe.py"
    lazy = "def f():\n    from leanlm.bench.measure import SENTENCES\n"
    assert len(_check("leanlm.runtime.probe", path, lazy)) == 1
    relative = "from ..compress import quantize\n"
    assert len(_check("leanlm.runtime.probe", path, relative)) == 1
    fine = "from leanlm.models.loading import auto_class\nfrom . import register_backend\n"
    assert _check("leanlm.runtime.probe", path, fine) == []
    # command modules are the top floor wherever they live
    assert _check("leanlm.compress.quantize.cli", ROOT / "compress/quantize/cli.py", "import leanlm.bench") == []
