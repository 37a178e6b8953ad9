"""The list of slow tests names tests that exist: a renamed test would otherwise leave it and run in
`make test-fast`."""

from __future__ import annotations

import re

from tests.conftest import REPO, SLOW


def test_every_slow_entry_names_a_module_and_a_test_in_it() -> None:
    for entry in SLOW:
        module, _, name = entry.partition("::")
        path = REPO / module
        assert path.is_file(), f"SLOW names {module}, which does not exist"
        if name:
            assert re.search(rf"^def {re.escape(name)}\w*\(", path.read_text(), re.MULTILINE), \
                f"SLOW names {entry}, which is no test in {module}"
