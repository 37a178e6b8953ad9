"""Progress bars at a terminal: shown there, and only the outermost one when bars are nested."""

from __future__ import annotations

import logging
import os
import pty

import pytest

from mountainid.logs import Bar, TextFormatter


@pytest.fixture()
def terminal(monkeypatch: pytest.MonkeyPatch):
    """The root logger writing text to a pseudo-terminal; yields a function returning what it showed."""
    leader, follower = pty.openpty()
    stream = os.fdopen(follower, "w")
    handler = logging.StreamHandler(stream)
    handler.setFormatter(TextFormatter())
    monkeypatch.setattr(logging.getLogger(), "handlers", [handler])
    yield lambda: os.read(leader, 65536).decode()
    stream.close()
    os.close(leader)


def test_a_bar_inside_a_bar_stays_hidden(terminal) -> None:
    with Bar("outer", 2) as outer:
        with Bar("inner", 3) as inner:
            inner.advance(3)
        outer.advance(2)
    with Bar("after", 1) as after:  # the outer bar is closed: a new one shows again
        after.advance()
    shown = terminal()
    assert "outer" in shown and "2/2" in shown and "after" in shown
    assert "inner" not in shown
