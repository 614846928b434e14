"""veda's modules import only downward, and no two import each other (docs/design.md draws the
layers).  Read from the package's own source: every ``import`` of a veda module counts, at the
top of a module or inside a function, under ``TYPE_CHECKING`` or not."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import veda

ROOT = Path(veda.__file__).parent

#: From the bottom up; a module belongs to the first layer one of whose prefixes it starts with.
#: Modules of one layer may import each other (without a cycle), never a higher layer.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    (
        "leaf types, errors, private files",
        (
            "veda._version",
            "veda.errors",
            "veda._types",
            "veda._dtypes",
            "veda._files",
            "veda._progress",
        ),
    ),
    ("hardware facts", ("veda._hardware",)),
    ("registries of targets and policies", ("veda._registry",)),
    ("configuration", ("veda._config",)),
    ("kernel definition, analysis, code generation, cache", ("veda._kernel", "veda.random")),
    ("targets", ("veda.targets",)),
    ("scheduler", ("veda.scheduler",)),
    ("telemetry", ("veda.telemetry",)),
    ("launch core", ("veda._launch",)),
    (
        "runtime on the launch core",
        (
            "veda._record",
            "veda._scan",
            "veda._tasks",
            "veda._iter",
            "veda._graph",
            "veda._memory",
        ),
    ),
    (
        "facades and the command line",
        ("veda.cuda", "veda.dask", "veda.hardware", "veda.cli", "veda"),
    ),
]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in ROOT.rglob("*.py")}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The veda modules ``name`` imports, with the packages Python runs on the way (a package's
    ``__init__`` runs before any of its modules; ``veda`` itself always runs first)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the module's package
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            submodules = {f"{module}.{a.name}" for a in node.names} & known
            found |= submodules  # "from veda import targets" imports a module...
            if len(submodules) < len(node.names):  # ...and other names come from the package
                found.add(module)
    # A module's own packages are being imported already when it runs: importing a sibling
    # runs no package again.  Other packages on the way to an imported module do run.
    own = {".".join(name.split(".")[:k]) for k in range(1, name.count(".") + 1)}
    out = set()
    for module in found:
        if not (module == "veda" or module.startswith("veda.")):
            continue
        parts = module.split(".")
        out.add(module)
        for k in range(2, len(parts)):  # the packages below veda itself
            if ".".join(parts[:k]) not in own:
                out.add(".".join(parts[:k]))
    out.discard(name)
    return {m for m in out if m in known}


def _layer(module: str) -> int:
    for k, (_, prefixes) in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return k
    raise AssertionError(f"{module} is in no layer: add it to LAYERS and docs/design.md")


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imports(name, path, known) for name, path in modules.items()}


def test_every_module_has_a_layer():
    for module in _modules():
        _layer(module)


def test_no_module_imports_upward():
    upward = [
        f"{m} ({LAYERS[_layer(m)][0]}) imports {d} ({LAYERS[_layer(d)][0]})"
        for m, deps in sorted(_graph().items())
        for d in sorted(deps)
        if _layer(d) > _layer(m)
    ]
    assert not upward, "\n".join(upward)


def test_no_import_cycle():
    graph = _graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycles.append([*path[path.index(dep) :], dep])
            elif dep not in state:
                visit(dep, [*path, dep])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize(
    "name, source, expected",
    [
        ("veda._kernel.probe", "from veda._launch import Kernel", {"veda._launch"}),
        ("veda._kernel.probe", "from veda import targets", {"veda.targets"}),
        (
            "veda._kernel.probe",
            "def f():\n    import veda.targets.cpu",
            {"veda.targets", "veda.targets.cpu"},
        ),
        (
            "veda._kernel.probe",
            "if TYPE_CHECKING:\n    from veda.scheduler import _tuner",
            {"veda.scheduler", "veda.scheduler._tuner"},
        ),
        ("veda.targets", "from .cpu import CPUTarget", {"veda.targets.cpu"}),
        ("veda._kernel.probe", "import numpy", set()),
    ],
)
def test_the_import_reader_sees_every_kind_of_import(tmp_path, name, source, expected):
    """The checks above can fail: the reader finds imports in each form they take."""
    path = tmp_path / ("__init__.py" if name == "veda.targets" else "probe.py")
    path.write_text(source)
    assert _imports(name, path, set(_modules())) == expected


def test_an_upward_import_would_be_reported(tmp_path):
    path = tmp_path / "probe.py"
    path.write_text("from veda._launch import launch\n")
    known = set(_modules())
    deps = _imports("veda._kernel.probe", path, known)
    assert any(_layer(d) > _layer("veda._kernel.probe") for d in deps)
