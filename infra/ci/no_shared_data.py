"""pytest plugin for Cloud Build, where ../shared (real photos, ImageNet weights) is not present.

Deselects every test that needs the ``shared_dir`` fixture, directly or through another fixture
(``weights_path``, ``make_settings``, ...), and reports how many, so the build runs the rest instead
of failing on missing data. cloudbuild.yaml loads it only when no copy of ../shared was fetched:
``PYTHONPATH=infra/ci python -m pytest -p no_shared_data``.
"""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    needs_shared = [item for item in items if "shared_dir" in getattr(item, "fixturenames", ())]
    if needs_shared:
        config.hook.pytest_deselected(items=needs_shared)
        items[:] = [item for item in items if item not in needs_shared]
    config.stash[_DESELECTED] = len(needs_shared)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    count = config.stash.get(_DESELECTED, 0)
    terminalreporter.write_line(f"no_shared_data: {count} tests that need ../shared were deselected")


_DESELECTED = pytest.StashKey[int]()
