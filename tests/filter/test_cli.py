"""`mountainid filter-eval` and `mountainid filter`, run through the real CLI entry point."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from mountainid import cli
from mountainid.config import get_settings
from mountainid.store import LocalBlobStore
from mountainid.vision.backbone import Backbone

LAST_LINE = re.compile(r"^precision=(\d\.\d{3}) recall=(\d\.\d{3}) n=(\d+)$")


@pytest.fixture()
def run_cli(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, weights_path: Path,
            backbone: Backbone, capsys: pytest.CaptureFixture[str]) -> Iterator:
    """Run `mountainid ARGS` in-process (the backbone fixture is the one it will reuse)."""
    monkeypatch.setenv("MOUNTAINID_BUCKET", str(tmp_path / "bucket"))
    monkeypatch.setenv("MOUNTAINID_WEIGHTS", str(weights_path))
    monkeypatch.delenv("MOUNTAINID_FILTER_THRESHOLD", raising=False)

    def run(*args: str) -> tuple[int, list[str]]:
        get_settings.cache_clear()
        code = cli.main(list(args))
        return code, capsys.readouterr().out.strip().splitlines()

    yield run
    get_settings.cache_clear()


def _folder(root: Path, shared_dir: Path, picks: dict[str, tuple[str, int]]) -> Path:
    """root/<class>/ with the first N photos of a shared folder each."""
    for name, (source, count) in picks.items():
        (root / name).mkdir(parents=True)
        for path in sorted((shared_dir / "data" / source).iterdir())[:count]:
            shutil.copy(path, root / name / path.name)
    return root


def test_filter_eval_prints_per_class_counts_and_the_summary_line(run_cli, tmp_path: Path,
                                                                  shared_dir: Path) -> None:
    photos = _folder(tmp_path / "photos", shared_dir, {
        "mountain": ("scenes/mountain", 4), "street": ("scenes/street", 3), "buildings": ("scenes/buildings", 2)})
    (photos / "street" / "broken.jpg").write_bytes(b"not a photo")  # counted, judged not a mountain
    code, lines = run_cli("filter-eval", str(photos))
    assert code == 0
    precision, recall, n = LAST_LINE.match(lines[-1]).groups()
    assert int(n) == 10
    assert float(precision) >= 0.75 and float(recall) >= 0.5  # real photos: plausible, not perfect
    assert any(re.match(r"^- street\s+4\s+0 \(", line) for line in lines), lines
    assert any(re.match(r"^\+ mountain\s+4\s+\d", line) for line in lines), lines
    assert "threshold=0.4 " in "\n".join(lines) and "unreadable=1" in "\n".join(lines)
    code, lines = run_cli("filter-eval", str(photos), "--exclude", "street")
    assert code == 0 and LAST_LINE.match(lines[-1]).group(3) == "6"
    assert not any("street" in line for line in lines)


def test_filter_eval_all_mountains_measures_recall(run_cli, tmp_path: Path, shared_dir: Path) -> None:
    photos = _folder(tmp_path / "peaks", shared_dir, {"K2": ("peaks14/K2", 3), "Lhotse": ("peaks14/Lhotse", 2)})
    code, lines = run_cli("filter-eval", str(photos), "--all-mountains")
    assert code == 0
    precision, recall, n = LAST_LINE.match(lines[-1]).groups()
    assert (precision, n) == ("1.000", "5") and float(recall) >= 0.8


def test_filter_eval_explains_a_folder_without_classes(run_cli, tmp_path: Path) -> None:
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "1.jpg").write_bytes(b"x")
    code, lines = run_cli("filter-eval", str(tmp_path / "flat"))
    assert code == 2 and "no photos in subfolders" in lines[-1]
    (tmp_path / "flat" / "street").mkdir()
    (tmp_path / "flat" / "street" / "1.jpg").write_bytes(b"x")
    code, lines = run_cli("filter-eval", str(tmp_path / "flat"))
    assert code == 2 and "--all-mountains" in lines[-1]


def test_filter_command_catches_up_on_unjudged_photos(run_cli, tmp_path: Path, k2_photos: list[bytes],
                                                      street_photos: list[bytes]) -> None:
    store = LocalBlobStore(tmp_path / "bucket")
    store.put("raw/k2/1.jpg", k2_photos[0])
    store.put("raw/k2/2.jpg", street_photos[0])
    code, lines = run_cli("filter")
    assert code == 0 and lines[-1].endswith("judged 2 pending photo(s): accepted=1, rejected=1")
    assert store.list_names("accepted/") == ["accepted/k2/1.jpg"]
    code, lines = run_cli("filter")
    assert lines[-1].endswith("judged 0 pending photo(s): nothing to do")
