"""Imports point down: each module imports only its own component and the layers below it.

The layers are declared once, here (docs/architecture.md explains them). Every import counts, those
inside functions too: a lazy import that climbs is the same dependency, only hidden. A new module
must be placed in a layer, or this test names it.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("mountainid", "web", "functions", "training_job", "harness")

# Top to bottom. A component is a module or package (by dotted prefix); within one component imports
# are free, between two they go from a higher layer to a lower one only, never sideways.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("harness",),  # beside the product: see HARNESS_GATES
    ("mountainid.cli", "web.cli", "web.gunicorn_conf", "functions", "training_job"),  # entry points
    ("web",),  # the app factory
    ("web.pages", "web.api", "web.admin", "web.security"),  # blueprints and request hooks
    ("web.answer", "web.describe", "web.limits", "web.server"),
    ("web.context",),
    ("mountainid.pipeline",),  # the embedded pipeline: ingest, filter and training in one process
    ("mountainid.training", "mountainid.serving"),
    ("mountainid.ingest", "mountainid.filter", "mountainid.predict"),
    ("mountainid.registry", "mountainid.verification"),
    ("mountainid.bucket",),  # the object names every deployable shares
    ("mountainid.store", "mountainid.events", "mountainid.catalog", "mountainid.flickr"),
    ("mountainid.vision",),  # photos, backbones, features, keypoints: below everything that uses them
    ("mountainid.logs", "mountainid.arrays", "mountainid.arguments"),
    ("mountainid.config",),
)
# The harness is no layer of the product: only these shells may import it, and only inside a function
# (when the command that needs it runs), so nothing the deployables ship ever loads it.
HARNESS = "harness"
HARNESS_GATES = {"mountainid.cli"}

LAYER_OF = {component: depth for depth, layer in enumerate(LAYERS) for component in layer}


def component(module: str) -> str | None:
    """The declared component a module belongs to: the longest declared prefix of its dotted name."""
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in LAYER_OF:
            return ".".join(parts[:n])
    return None


def modules() -> dict[str, Path]:
    """Every module of the product and the harness, by dotted name (a package by its own name)."""
    found = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports(module: str, path: Path, known: set[str]) -> list[tuple[str, int, bool]]:
    """(imported module, line, lazy) for each import of ours in a module, at any depth."""
    tree = ast.parse(path.read_text(), str(path))
    top_level = {id(node) for node in tree.body}
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            # `from pkg import sub` imports the submodule pkg.sub; `from mod import name` imports mod.
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for target in targets:
            if target.split(".")[0] in PACKAGES:
                found.append((target, node.lineno, id(node) not in top_level))
    return found


def violations() -> list[str]:
    found = modules()
    problems = []
    for module, path in found.items():
        own = component(module)
        if module in PACKAGES and all(isinstance(node, ast.Expr) for node in ast.parse(path.read_text()).body):
            continue  # a package that only names itself (its docstring)
        if own is None:
            problems.append(f"{module}: in no layer; declare it in LAYERS")
            continue
        for target, line, lazy in sorted(set(imports(module, path, set(found)))):
            theirs = component(target)
            where = f"{path.relative_to(REPO)}:{line} imports {target}"
            if theirs is None or theirs == own:
                continue
            if theirs == HARNESS and own != HARNESS:
                if own not in HARNESS_GATES or not lazy:
                    problems.append(f"{where}: the harness is imported only by {sorted(HARNESS_GATES)}, lazily")
            elif LAYER_OF[theirs] <= LAYER_OF[own]:
                problems.append(f"{where}: {theirs} is not below {own}")
    return problems


def test_every_import_points_down() -> None:
    assert violations() == []


def test_the_check_sees_lazy_and_relative_imports(tmp_path: Path) -> None:
    """The walk finds an import inside a function and resolves ``from . import x`` to the submodule."""
    source = tmp_path / "__init__.py"
    source.write_text("def f():\n    from mountainid.web import x\n\nfrom . import logs\n")
    found = imports("mountainid", source, {"mountainid.logs"})
    assert ("mountainid.web", 2, True) in found and ("mountainid.logs", 4, False) in found
