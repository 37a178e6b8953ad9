"""The mountain catalog: which mountains MountainID knows, read from a YAML file.

Adding a mountain is adding an entry to the file. Every storage path that names a mountain uses
its slug, which :func:`slugify` makes safe (ASCII letters, digits and dashes only), so no name
can escape its prefix in the bucket.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import yaml

CATALOG_DIR = Path(__file__).with_name("catalogs")
_SLUG_OK = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")


def slugify(name: str) -> str:
    """'Mount Everest' -> 'mount-everest'; 'Cerro Chaltén/../x' -> 'cerro-chalten-x'."""
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode("ascii")
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_name.lower()).strip("-")
    if not slug:
        raise ValueError(f"cannot make a slug from {name!r}: it has no letters or digits")
    return slug


def is_slug(value: str) -> bool:
    return bool(_SLUG_OK.match(value))


@dataclass(frozen=True)
class Mountain:
    name: str
    slug: str
    search: str
    latitude: float
    longitude: float
    elevation_m: int

    @property
    def map_url(self) -> str:
        return (f"https://www.openstreetmap.org/?mlat={self.latitude}&mlon={self.longitude}"
                f"#map=11/{self.latitude}/{self.longitude}")


@dataclass(frozen=True)
class Catalog:
    name: str
    mountains: tuple[Mountain, ...]

    def by_slug(self, slug: str) -> Mountain:
        for mountain in self.mountains:
            if mountain.slug == slug:
                return mountain
        raise KeyError(f"no mountain with slug {slug!r} in catalog {self.name!r}")

    def find(self, name_or_slug: str) -> Mountain | None:
        """Match a display name or slug (case- and accent-insensitive), e.g. a folder name."""
        try:
            wanted = slugify(name_or_slug)
        except ValueError:
            return None
        return next((m for m in self.mountains if m.slug == wanted), None)

    @property
    def slugs(self) -> list[str]:
        return [m.slug for m in self.mountains]


def load_catalog(name_or_path: str) -> Catalog:
    """Load a bundled catalog by name ("mountains11", "peaks14") or any YAML file by path."""
    path = Path(name_or_path)
    if not path.suffix:
        path = CATALOG_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        bundled = ", ".join(sorted(p.stem for p in CATALOG_DIR.glob("*.yaml")))
        raise FileNotFoundError(f"catalog {name_or_path!r} not found (bundled: {bundled}; or give a .yaml path)")
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    mountains = []
    for entry in doc["mountains"]:
        slug = entry.get("slug") or slugify(entry["name"])
        if not is_slug(slug):
            raise ValueError(f"{path}: slug {slug!r} of {entry['name']!r} must be lowercase letters, digits, dashes")
        mountains.append(Mountain(
            name=entry["name"], slug=slug, search=entry.get("search", entry["name"]),
            latitude=float(entry["latitude"]), longitude=float(entry["longitude"]),
            elevation_m=int(entry["elevation_m"]),
        ))
    slugs = [m.slug for m in mountains]
    if len(set(slugs)) != len(slugs):
        raise ValueError(f"{path}: duplicate slugs in {slugs}")
    return Catalog(name=doc.get("name", path.stem), mountains=tuple(mountains))
