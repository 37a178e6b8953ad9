"""The mountain catalog: which mountains MountainID knows, read from a YAML file.

Adding a mountain is adding an entry to the file. Every storage path that names a mountain uses
its slug, which :func:`slugify` makes safe (ASCII letters, digits and dashes only), so no name
can escape its prefix in the bucket.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml

from mountainid.config import ConfigError

Number = TypeVar("Number", int, float)

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


class CatalogError(ConfigError, ValueError):
    """A catalog (or a photo folder's mountains) cannot be used; one line naming the file and field."""


@dataclass(frozen=True)
class Mountain:
    """A mountain; where it is (coordinates, elevation) is optional: a photo folder may only name it."""

    name: str
    slug: str
    search: str
    latitude: float | None = None
    longitude: float | None = None
    elevation_m: int | None = None

    @property
    def map_url(self) -> str | None:
        if self.latitude is None or self.longitude is None:
            return None
        return (f"https://www.openstreetmap.org/?mlat={self.latitude}&mlon={self.longitude}"
                f"#map=11/{self.latitude}/{self.longitude}")

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "slug": self.slug, "search": self.search, "latitude": self.latitude,
                "longitude": self.longitude, "elevation_m": self.elevation_m}


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

    def merged(self, other: Catalog) -> Catalog:
        """This catalog with ``other``'s mountains added (``other`` wins where both know a slug)."""
        theirs = {m.slug for m in other.mountains}
        return Catalog(self.name, tuple(m for m in self.mountains if m.slug not in theirs) + other.mountains)


def load_catalog(name_or_path: str) -> Catalog:
    """Load a bundled catalog by name ("mountains11", "peaks14") or any YAML file by path."""
    path = Path(name_or_path)
    if not path.suffix:
        path = CATALOG_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        bundled = ", ".join(sorted(p.stem for p in CATALOG_DIR.glob("*.yaml")))
        raise CatalogError(f"catalog {name_or_path!r} not found (bundled: {bundled}; or give a .yaml path "
                           "in MOUNTAINID_CATALOG)")
    return parse_catalog(path.read_text(encoding="utf-8"), str(path), path.stem)


def parse_catalog(text: str, source: str, default_name: str) -> Catalog:
    """Mountains from YAML text (``mountains: [{name, slug?, search?, latitude?, longitude?,
    elevation_m?}]``); raises CatalogError naming ``source`` and the entry and field at fault."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise CatalogError(f"{source}: not valid YAML ({' '.join(str(error).split())})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("mountains"), list):
        raise CatalogError(f"{source}: expected a 'mountains:' list of entries with at least a 'name'")
    mountains = [_mountain(entry, f"{source}: mountains[{index}]") for index, entry in enumerate(doc["mountains"])]
    slugs = [m.slug for m in mountains]
    duplicates = sorted({slug for slug in slugs if slugs.count(slug) > 1})
    if duplicates:
        raise CatalogError(f"{source}: duplicate slugs {duplicates}")
    return Catalog(name=str(doc.get("name") or default_name), mountains=tuple(mountains))


def _mountain(entry: object, where: str) -> Mountain:
    if not isinstance(entry, dict) or not str(entry.get("name") or "").strip():
        raise CatalogError(f"{where}: every mountain needs a 'name'")
    name = str(entry["name"]).strip()
    fields: dict[str, Any] = entry  # narrowed by the check above, for number() below
    try:
        slug = str(entry.get("slug") or slugify(name))
    except ValueError as error:
        raise CatalogError(f"{where}: {error}") from None
    if not is_slug(slug):
        raise CatalogError(f"{where}: slug {slug!r} of {name!r} must be lowercase letters, digits, dashes")

    def number(field: str, kind: Callable[[Any], Number], low: float, high: float) -> Number | None:
        value = fields.get(field)
        if value is None:
            return None
        try:
            parsed = kind(value)
        except (TypeError, ValueError):
            raise CatalogError(f"{where} ({name}): '{field}' must be a number, got {value!r}") from None
        if not low <= parsed <= high:
            raise CatalogError(f"{where} ({name}): '{field}' {parsed} is outside {low}..{high}")
        return parsed

    latitude, longitude = number("latitude", float, -90, 90), number("longitude", float, -180, 180)
    if (latitude is None) != (longitude is None):
        raise CatalogError(f"{where} ({name}): give both 'latitude' and 'longitude', or neither")
    return Mountain(name=name, slug=slug, search=str(entry.get("search") or name), latitude=latitude,
                    longitude=longitude, elevation_m=number("elevation_m", int, -500, 9000))
