"""How the site and the API describe the live model: its plots and its mountains.

Shared by the pages and the API blueprints, which stay peers: neither imports the other.
"""

from __future__ import annotations

from mountainid.catalog import Catalog
from web.context import services

MODEL_PLOTS = ("confusion.png", "curves.png", "reliability.png")  # written by training beside each model version


def mountain_list(labels: list[str], known: Catalog) -> list[dict[str, object]]:
    """The model's classes with what the site's catalog and the model know about each (maybe nothing)."""
    catalog = services().catalog.merged(known)
    mountains = []
    for slug in labels:
        found = catalog.find(slug)
        mountains.append({"slug": slug, "name": found.name if found else slug.replace("-", " ").title(),
                          "elevation_m": found.elevation_m if found else None,
                          "latitude": found.latitude if found else None,
                          "longitude": found.longitude if found else None,
                          "map_url": found.map_url if found else None})
    return mountains
