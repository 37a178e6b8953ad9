"""What a deployable ships: Dockerfile instructions, .dockerignore, and the imports its code needs.

A function's staged folder or an image's /app must hold every module its entry point imports, and
each third-party import must come from a distribution its requirements file installs; otherwise the
deploy succeeds and the first event fails with ImportError. These helpers check that statically
(no TensorFlow import, no model load), walking imports from the entry module through the local
packages, including imports inside functions (lazy imports run on some path too).
"""

from __future__ import annotations

import ast
import json
import re
import shlex
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from importlib import metadata
from pathlib import Path


@dataclass(frozen=True)
class Instruction:
    keyword: str
    value: str


def dockerfile(path: Path) -> list[Instruction]:
    """The instructions of a Dockerfile (continuations joined, comments dropped)."""
    lines, current = [], ""
    for raw in path.read_text().splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") or not stripped and not current:
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        lines.append(current + stripped)
        current = ""
    return [Instruction(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "")
            for line in lines if line]


def instruction_args(value: str) -> list[str]:
    """Exec form (JSON array) or shell words, without --flags."""
    words = json.loads(value) if value.startswith("[") else shlex.split(value)
    return [word for word in words if not word.startswith("--")]


def ignore_patterns(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """Docker's .dockerignore matching: * and ? stay within one path segment, ** spans segments."""
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
        elif pattern.startswith("**", i):
            out += ".*"
            i += 2
        elif pattern[i] == "*":
            out += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            out += "[^/]"
            i += 1
        else:
            out += re.escape(pattern[i])
            i += 1
    return re.compile(out + r"\Z")


def ignored(relative: str, patterns: list[str]) -> bool:
    """Is this context path (or a folder above it) excluded? Later patterns win; ! re-includes."""
    parts = relative.split("/")
    prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        regex = _pattern_regex(pattern.lstrip("!").strip("/"))
        if any(regex.match(prefix) for prefix in prefixes):
            excluded = not negate
    return excluded


# --- imports -----------------------------------------------------------------------------------

def _imports(source: Path) -> set[str]:
    """Dotted names imported anywhere in a module (absolute; relative ones are resolved by the caller)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _module_file(root: Path, dotted: str) -> Path | None:
    base = root.joinpath(*dotted.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def external_imports(root: Path, entry_modules: Iterable[str]) -> dict[str, str]:
    """Third-party modules reachable from the entry modules inside ``root``: {module: importing file}."""
    local_tops = {p.name if p.is_dir() else p.stem for p in root.iterdir() if p.suffix in ("", ".py")}
    seen: set[Path] = set()
    todo = [f for f in (_module_file(root, m) for m in entry_modules) if f]
    assert todo, f"no entry module {list(entry_modules)} under {root}"
    external: dict[str, str] = {}
    while todo:
        source = todo.pop()
        if source in seen:
            continue
        seen.add(source)
        for name in _imports(source):
            top = name.split(".")[0]
            if top in sys.stdlib_module_names or top == "__future__":
                continue
            if top in local_tops:
                parts = name.split(".")
                # the module itself and every package on the way (their __init__ runs on import)
                for n in range(1, len(parts) + 1):
                    found = _module_file(root, ".".join(parts[:n]))
                    if found:
                        todo.append(found)
            else:
                external.setdefault(name, str(source.relative_to(root)))
    return external


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@cache
def _providers() -> dict[str, set[str]]:
    """Installed file path (e.g. "google/cloud/storage/__init__.py") -> distributions providing it."""
    providers: dict[str, set[str]] = {}
    for dist in metadata.distributions():
        for file in dist.files or ():
            if file.suffix == ".py":
                providers.setdefault(str(file), set()).add(canonical(dist.metadata["Name"]))
    return providers


def providing_distributions(module: str) -> set[str]:
    """The installed distributions that provide ``module`` (the deepest part of its dotted path that
    is a module; for a namespace package such as ``google.cloud``, every distribution inside it)."""
    parts = module.split(".")
    providers = _providers()
    for n in range(len(parts), 0, -1):
        base = "/".join(parts[:n])
        found = providers.get(f"{base}/__init__.py", set()) | providers.get(f"{base}.py", set())
        if found:
            return found
    folder = "/".join(parts) + "/"
    return {dist for path, dists in providers.items() if path.startswith(folder) for dist in dists}


def requirement_names(path: Path) -> set[str]:
    """Distribution names pinned in a requirements file."""
    names = set()
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            names.add(canonical(re.split(r"[=<>!~\[; ]", line, maxsplit=1)[0]))
    return names


def with_dependencies(names: set[str]) -> set[str]:
    """The distributions pip installs for these: each with its (non-extra) dependencies, transitively."""
    result, todo = set(), list(names)
    while todo:
        name = todo.pop()
        if name in result:
            continue
        result.add(name)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        for requirement in requires:
            if "extra ==" not in requirement:
                todo.append(canonical(re.split(r"[=<>!~\[; (]", requirement, maxsplit=1)[0]))
    return result
