"""The catalog is data: slugs are safe, both bundled catalogs load, and a YAML file adds a mountain."""

from __future__ import annotations

from pathlib import Path

import pytest

from mountainid.catalog import CatalogError, is_slug, load_catalog, slugify


@pytest.mark.parametrize(("name", "slug"), [
    ("Mount Everest", "mount-everest"), ("K2", "k2"), ("Cerro Chaltén", "cerro-chalten"),
    ("../../etc/passwd", "etc-passwd"), ("Gasherbrum  II ", "gasherbrum-ii"), ("Mont Blanc/../x", "mont-blanc-x"),
])
def test_slugs_never_escape_their_prefix(name: str, slug: str) -> None:
    assert slugify(name) == slug
    assert is_slug(slug) and "/" not in slug and ".." not in slug


def test_a_name_without_letters_has_no_slug() -> None:
    with pytest.raises(ValueError, match="no letters"):
        slugify("../..")


def test_bundled_catalogs(shared_dir: Path) -> None:
    original = load_catalog("mountains11")
    assert len(original.mountains) == 11
    assert original.by_slug("k2").elevation_m == 8611
    peaks = load_catalog("peaks14")
    folders = sorted(p.name for p in (shared_dir / "data" / "peaks14").iterdir() if p.is_dir())
    assert len(folders) == 14
    assert all(peaks.find(folder) is not None for folder in folders)  # every photo folder maps to a mountain


def test_adding_a_mountain_is_editing_a_file(tmp_path: Path) -> None:
    path = tmp_path / "alps.yaml"
    path.write_text("mountains:\n  - {name: Matterhorn, latitude: 45.9763, longitude: 7.6586, elevation_m: 4478}\n"
                    "  - {name: Mont Blanc, search: Mont Blanc massif, latitude: 45.8326, longitude: 6.8652,"
                    " elevation_m: 4806}\n")
    catalog = load_catalog(str(path))
    assert catalog.slugs == ["matterhorn", "mont-blanc"]
    assert catalog.by_slug("matterhorn").search == "Matterhorn"
    assert "openstreetmap.org" in catalog.find("Mont Blanc").map_url


def test_duplicate_or_unsafe_entries_are_refused(tmp_path: Path) -> None:
    dup = tmp_path / "dup.yaml"
    dup.write_text("mountains:\n  - {name: K2, latitude: 1, longitude: 1, elevation_m: 1}\n"
                   "  - {name: k2, latitude: 1, longitude: 1, elevation_m: 1}\n")
    with pytest.raises(ValueError, match="duplicate"):
        load_catalog(str(dup))
    bad = tmp_path / "bad.yaml"
    bad.write_text("mountains:\n  - {name: X, slug: ../x, latitude: 1, longitude: 1, elevation_m: 1}\n")
    with pytest.raises(ValueError, match="slug"):
        load_catalog(str(bad))


def test_unknown_catalog_lists_the_bundled_ones() -> None:
    with pytest.raises(CatalogError, match="mountains11, peaks14"):
        load_catalog("nowhere")


def test_coordinates_are_optional_and_a_name_is_enough(tmp_path: Path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text("mountains:\n  - name: Hausberg\n  - {name: Matterhorn, latitude: 45.9763, longitude: 7.6586}\n")
    catalog = load_catalog(str(path))
    home = catalog.by_slug("hausberg")
    assert (home.latitude, home.elevation_m, home.map_url) == (None, None, None)
    assert catalog.by_slug("matterhorn").map_url and catalog.by_slug("matterhorn").elevation_m is None


@pytest.mark.parametrize(("text", "message"), [
    ("mountains:\n  - {latitude: 1, longitude: 2}\n", "mountains[0]: every mountain needs a 'name'"),
    ("mountains:\n  - {name: X, latitude: north, longitude: 2}\n", "mountains[0] (X): 'latitude' must be a number"),
    ("mountains:\n  - {name: X, latitude: 95, longitude: 2}\n", "'latitude' 95.0 is outside"),
    ("mountains:\n  - {name: X, latitude: 45}\n", "give both 'latitude' and 'longitude'"),
    ("mountains: [\n", "not valid YAML"),
    ("peaks:\n  - name: X\n", "expected a 'mountains:' list"),
])
def test_a_broken_catalog_names_file_entry_and_field(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text(text)
    with pytest.raises(CatalogError) as caught:
        load_catalog(str(path))
    assert str(caught.value).startswith(str(path)) and message in str(caught.value)
    assert "\n" not in str(caught.value)  # one line
