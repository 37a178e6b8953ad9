"""Read the commands the infra scripts and cloudbuild.yaml would run, and check them against gcloud.

The scripts print every command in dry-run mode, one shell-quoted line each; cloudbuild.yaml holds
gcloud calls inside its bash steps. Both are parsed into :class:`Command` and checked against this
machine's real ``gcloud``: Cloud SDK's static completion tree tells the groups from the positional
arguments, and gcloud's own argument parser must accept each whole line.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
GCP_SCRIPT = REPO / "infra" / "gcp.sh"
CLOUDBUILD = REPO / "cloudbuild.yaml"
INFRA_README = REPO / "infra" / "README.md"
BASE_ENV = {"PROJECT": "demo-project-1", "REGION": "europe-west1", "TAG": "b1234"}
# Values for cloudbuild.yaml's substitutions when its gcloud calls are read.
PLACEHOLDERS = {"PROJECT_ID": "demo-project-1", "BUILD_ID": "b1234", "_REGION": "europe-west1",
                "_BUCKET": "demo-bucket", "_AR_REPO": "mountainid", "_CATALOG": "mountains11",
                "_TRAINING_GPU": "0", "_ALLOW_NO_MODEL": "0", "_SHARED_URI": "gs://ci-data/shared"}

# Cloud Build substitutions: $NAME or ${NAME}; "$$" is an escaped dollar for the step's shell.
SUBSTITUTION = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))")


@dataclass(frozen=True)
class Command:
    """One gcloud call: its command path, positional arguments and flags (name -> value or None)."""

    path: tuple[str, ...]
    positionals: tuple[str, ...]
    flags: Mapping[str, str | None] = field(hash=False)
    line: str = ""

    @property
    def verb(self) -> str:
        return self.path[-1]

    def flag(self, name: str) -> str:
        """The value of a flag that must be there."""
        value = self.flags.get(name)
        assert value is not None, f"{name} missing in: {self.line}"
        return value


def run_dry(*commands: str, env: Mapping[str, str] | None = None, stdin: str = "") -> subprocess.CompletedProcess:
    """Run infra/gcp.sh --dry-run with a clean environment (plus ``env``)."""
    full_env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp"), **BASE_ENV, **(env or {})}
    return subprocess.run(["bash", str(GCP_SCRIPT), "--dry-run", *commands], env=full_env, input=stdin,
                          capture_output=True, text=True, timeout=60, check=False)


def printed_lines(stdout: str) -> list[list[str]]:
    """Each printed command as its words."""
    return [shlex.split(line) for line in stdout.splitlines() if line.strip()]


@cache
def completion_tree() -> dict[str, Any]:
    """Cloud SDK's static CLI tree (groups, commands, flags) that ships with gcloud."""
    module_path = sdk_root() / "data" / "cli" / "gcloud_completions.py"
    spec = importlib.util.spec_from_file_location("gcloud_completions", module_path)
    assert spec and spec.loader, f"no CLI tree at {module_path}"
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.STATIC_COMPLETION_CLI_TREE


def parse_gcloud(words: list[str], tree: Mapping[str, Any] | None = None) -> Command:
    """Split ``gcloud a b c POS --flag=v`` into path (a b c), positionals and flags, using the tree."""
    assert words and words[0] == "gcloud", words
    node = tree or completion_tree()
    path: list[str] = []
    positionals: list[str] = []
    flags: dict[str, str | None] = {}
    for word in words[1:]:
        if word.startswith("--"):
            name, sep, value = word.partition("=")
            flags[name] = value if sep else None
        elif not positionals and word in node.get("commands", {}):
            path.append(word)
            node = node["commands"][word]
        else:
            positionals.append(word)
    assert not node.get("commands"), f"'gcloud {' '.join(path)}' is a group, not a command: {shlex.join(words)}"
    return Command(tuple(path), tuple(positionals), flags, shlex.join(words))


def gcloud_commands(lines: Iterable[list[str]]) -> list[Command]:
    return [parse_gcloud(words) for words in lines if words and words[0] == "gcloud"]


def sdk_root() -> Path:
    gcloud = shutil.which("gcloud")
    assert gcloud, "gcloud is not installed"
    return Path(os.path.realpath(gcloud)).parent.parent


def parse_with_gcloud(commands: Iterable[Command]) -> list[str | None]:
    """For each command, the error gcloud's own parser gives it (None: it parses), in one gcloud process.

    The parser knows each command's real flag set, its required and mutually exclusive flags, choices
    and value types (tests/infra/gcloud_parse.py); nothing is executed.
    """
    listed = list(commands)
    root = sdk_root()
    bundled = root / "platform" / "bundledpythonunix" / "bin" / "python3"
    python = os.environ.get("CLOUDSDK_PYTHON") or (str(bundled) if bundled.exists() else "python3")
    argvs = [shlex.split(cmd.line)[1:] for cmd in listed]
    result = subprocess.run([python, str(Path(__file__).with_name("gcloud_parse.py")), str(root)],
                            input=json.dumps(argvs), capture_output=True, text=True, timeout=300, check=False,
                            env={**os.environ, "CLOUDSDK_CORE_DISABLE_PROMPTS": "1",
                                 "CLOUDSDK_CORE_DISABLE_USAGE_REPORTING": "1"})
    assert result.returncode == 0, f"gcloud's parser failed: {result.stderr[-1000:]}"
    parsed = json.loads(result.stdout)
    assert len(parsed) == len(listed)
    return [_mismatch(cmd, reply) for cmd, reply in zip(listed, parsed, strict=True)]


def _mismatch(cmd: Command, reply: Mapping[str, Any]) -> str | None:
    if reply["error"]:
        return reply["error"]
    if tuple(reply["command"]) != cmd.path:
        return f"gcloud reads it as 'gcloud {' '.join(reply['command'])}', not 'gcloud {' '.join(cmd.path)}'"
    return None


def cloudbuild_scripts(build: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(step id, shell script) for every step that runs ``bash -c SCRIPT``."""
    scripts = []
    for step in build["steps"]:
        args = step.get("args", [])
        if step.get("entrypoint") == "bash" and len(args) >= 2 and args[0] == "-c":
            scripts.append((step["id"], args[1]))
    return scripts


def substitute(text: str, values: Mapping[str, str]) -> str:
    """What Cloud Build hands the step: substitutions replaced, then "$$" -> "$"."""
    parts = text.split("$$")
    replaced = [SUBSTITUTION.sub(lambda m: values[m.group(1) or m.group(2)], part) for part in parts]
    return "$".join(replaced)


def substitutions_used(text: str) -> set[str]:
    return {m.group(1) or m.group(2) for part in text.split("$$") for m in SUBSTITUTION.finditer(part)}


def cloudbuild_gcloud_lines(build: Mapping[str, Any], values: Mapping[str, str]) -> list[list[str]]:
    """The gcloud calls in cloudbuild.yaml's steps, as words (substitutions filled with ``values``)."""
    lines: list[list[str]] = []
    for step in build["steps"]:
        if step.get("entrypoint") == "gcloud":
            lines.append(["gcloud", *(substitute(arg, values) for arg in step.get("args", []))])
    for _, script in cloudbuild_scripts(build):
        lines += _gcloud_lines_in(substitute(script, values))
    return lines


def _gcloud_lines_in(script: str) -> list[list[str]]:
    lines = []
    for line in script.replace("\\\n", " ").splitlines():
        words = shlex.split(line.strip(), comments=True) if line.strip() else []
        if words and words[0] == "gcloud":
            lines.append(words)
    return lines


def markdown_gcloud_lines(path: Path) -> list[list[str]]:
    """The gcloud commands in a markdown file's ```bash blocks (what a reader will paste)."""
    blocks = re.findall(r"```bash\n(.*?)```", path.read_text(), re.DOTALL)
    return [words for block in blocks for words in _gcloud_lines_in(block)]
