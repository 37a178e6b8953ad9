"""The Dockerfiles and the staged function sources: what they ship is enough to run the entry point.

Docker does not run on this machine, so the images are checked statically: each COPY source exists
and is not dropped by .dockerignore, the command names modules that exist, and every third-party
module the entry point can import is installed by the requirements the image or function uses.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.infra.commands import REPO
from tests.infra.deployables import (
    canonical,
    dockerfile,
    external_imports,
    ignore_patterns,
    ignored,
    instruction_args,
    providing_distributions,
    requirement_names,
    with_dependencies,
)

DOCKERIGNORE = ignore_patterns(REPO / ".dockerignore")
LOCK = REPO / "requirements.lock"
# Entry modules of each image: what its CMD imports (the training image also runs `mountainid backfill`).
IMAGES = {"web": ["web", "web.gunicorn_conf"], "training": ["training_job.main", "mountainid.training.backfill"]}
HANDLERS = {"ingest": "ingest", "filter": "filter_photo"}
# Reached only through open_bus() with MOUNTAINID_EVENTS=pubsub, which infra/gcp.sh never sets for
# the functions (they publish nothing: the bucket's notification carries their output onward).
NOT_ON_FUNCTION_PATHS = {"mountainid/events/pubsub.py"}


def unprovided(imports: dict[str, str], requirements: Path) -> dict[str, str]:
    """Imported modules no distribution installed by ``requirements`` provides."""
    allowed = with_dependencies(requirement_names(requirements))
    return {module: source for module, source in imports.items()
            if not providing_distributions(module) & allowed}


def copy_sources(path: Path) -> list[str]:
    return [arg for ins in dockerfile(path) if ins.keyword == "COPY" for arg in instruction_args(ins.value)[:-1]]


def build_context_copy(path: Path, into: Path) -> None:
    """What the image's WORKDIR holds after its COPY instructions (minus .dockerignore'd files)."""
    for ins in dockerfile(path):
        if ins.keyword != "COPY":
            continue
        *sources, dest = instruction_args(ins.value)
        for source in sources:
            for file in [REPO / source] if (REPO / source).is_file() else (REPO / source).rglob("*"):
                relative = file.relative_to(REPO).as_posix()
                if file.is_file() and not ignored(relative, DOCKERIGNORE):
                    inside = file.relative_to(REPO / source) if (REPO / source).is_dir() else Path(file.name)
                    target = into / dest / inside if dest.endswith("/") or (REPO / source).is_dir() else into / dest
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(file, target)


def defines(module_file: Path, name: str) -> bool:
    return any(isinstance(node, ast.FunctionDef) and node.name == name
               for node in ast.parse(module_file.read_text()).body)


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_dockerfile_base_user_copies_and_command(image: str) -> None:
    path = REPO / "infra" / "docker" / f"{image}.Dockerfile"
    instructions = dockerfile(path)
    keywords = [ins.keyword for ins in instructions]
    assert (instructions[0].keyword, instructions[0].value) == ("FROM", "python:3.11-slim")
    users = [ins.value for ins in instructions if ins.keyword == "USER"]
    assert users and users[-1] not in ("root", "0") and keywords.index("USER") < keywords.index("CMD")
    for source in copy_sources(path):
        assert (REPO / source).exists(), f"COPY {source}: not in the repository"
        assert not ignored(source, DOCKERIGNORE), f"COPY {source}: excluded by .dockerignore"
        if (REPO / source).is_dir():
            dropped = [f for f in (REPO / source).rglob("*") if f.is_file() and "__pycache__" not in f.parts
                       and ignored(f.relative_to(REPO).as_posix(), DOCKERIGNORE)]
            assert not dropped, f"COPY {source}: .dockerignore drops {dropped[:3]}"

    command = instruction_args(next(ins.value for ins in instructions if ins.keyword == "CMD"))
    if image == "web":
        assert command[0] == "gunicorn" and command[-1] == "web:create_app()"
        assert "python:web.gunicorn_conf" in command
        assert (REPO / "web" / "gunicorn_conf.py").is_file()
        assert defines(REPO / "web" / "__init__.py", "create_app")
    else:
        assert command == ["python", "-m", "training_job.main"]
        main = (REPO / "training_job" / "main.py").read_text()
        assert 'if __name__ == "__main__":' in main


def test_training_image_has_a_gpu_variant() -> None:
    text = (REPO / "infra" / "docker" / "training.Dockerfile").read_text()
    assert "ARG VARIANT=cpu" in text and "tensorflow[and-cuda]==$tf" in text
    assert any(line.startswith("tensorflow_cpu==") for line in LOCK.read_text().splitlines())


def test_the_gpu_image_is_pinned_to_a_cuda_build_cloud_runs_driver_runs() -> None:
    """Issue 23, finding 3: Cloud Run's L4 hosts have driver 535 (CUDA 12.2). The GPU build must stop
    unless TensorFlow is a CUDA 12 / cuDNN 9 build (NVIDIA: CUDA 12.x runs on drivers >= 525; cuDNN 9
    for CUDA 12 on >= 525.60.13); the CPU image keeps tensorflow-cpu from the lock."""
    instructions = dockerfile(REPO / "infra" / "docker" / "training.Dockerfile")
    lines = [i.value for i in instructions]
    args = dict(i.value.split("=", 1) for i in instructions if i.keyword == "ARG" and i.value.startswith("GPU_"))
    assert args == {"GPU_CUDA_MAJOR": "12", "GPU_CUDNN_MAJOR": "9"}
    install = next(line for line in lines if "tensorflow[and-cuda]" in line)
    assert "tf.sysconfig.get_build_info()" in install and "cuda_version" in install and "cudnn_version" in install
    assert 'cpu) tf_package="tensorflow-cpu==$tf"' in install, "the CPU image is unchanged"
    guide = (REPO / "infra" / "README.md").read_text()
    assert "Total Nvidia L4 GPU allocation" in guide and "driver 535" in guide, "quota step and driver written down"


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_image_holds_everything_its_command_imports(image: str, tmp_path: Path) -> None:
    build_context_copy(REPO / "infra" / "docker" / f"{image}.Dockerfile", tmp_path)
    imports = external_imports(tmp_path, IMAGES[image])
    assert imports, "no third-party import found: the walk is broken"
    assert unprovided(imports, LOCK) == {}
    assert not (tmp_path / "harness").exists(), "the test harnesses stay out of the image"


def test_dockerignore_keeps_local_state_out() -> None:
    for path in (".venv/bin/python", ".git/HEAD", "harness/e2e.py", "var/bucket/raw/x.jpg", "tests/conftest.py",
                 ".shared/models/imagenet/w.h5", "mountainid/__pycache__/config.cpython-311.pyc"):
        assert ignored(path, DOCKERIGNORE), path
    for path in ("requirements.lock", "pyproject.toml", "mountainid/catalogs/mountains11.yaml",
                 "web/templates/index.html", "training_job/main.py", "infra/docker/web.Dockerfile"):
        assert not ignored(path, DOCKERIGNORE), path


@pytest.fixture(scope="module", params=sorted(HANDLERS))
def staged(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    name = request.param
    dest = tmp_path_factory.mktemp("stage") / name
    result = subprocess.run([str(REPO / "infra" / "stage-function.sh"), name, str(dest)],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(dest)
    return name, dest


def test_staged_function_is_self_contained(staged: tuple[str, Path]) -> None:
    name, dest = staged
    assert defines(dest / "main.py", HANDLERS[name])
    assert (dest / "requirements.txt").is_file() and (dest / "mountainid" / "__init__.py").is_file()
    assert (dest / "mountainid" / "catalogs" / "mountains11.yaml").is_file()
    assert not list(dest.rglob("__pycache__"))
    assert not (dest / "tests").exists() and not (dest / "web").exists() and not (dest / "harness").exists()
    imports = external_imports(dest, ["main"])
    missing = {m: src for m, src in unprovided(imports, dest / "requirements.txt").items()
               if src not in NOT_ON_FUNCTION_PATHS}
    assert missing == {}, f"functions/{name}/requirements.txt lacks what these import"


def test_function_requirements_match_the_lock(staged: tuple[str, Path]) -> None:
    _, dest = staged
    lock = {canonical(n): v for n, v in (line.split("==") for line in LOCK.read_text().split() if "==" in line)}
    for line in (dest / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            pinned, version = line.split("==")
            assert lock.get(canonical(pinned)) == version, f"{line}: requirements.lock has {lock.get(canonical(pinned))}"


def test_stage_function_refuses_bad_input(tmp_path: Path) -> None:
    script = str(REPO / "infra" / "stage-function.sh")
    assert subprocess.run([script, "../web"], capture_output=True, check=False).returncode == 2
    assert subprocess.run([script, "nope"], capture_output=True, check=False).returncode == 2
    (tmp_path / "occupied").mkdir()
    (tmp_path / "occupied" / "file").write_text("x")
    result = subprocess.run([script, "ingest", str(tmp_path / "occupied")], capture_output=True, text=True,
                            check=False)
    assert result.returncode == 1 and "not empty" in result.stderr
