"""Progress bars at a terminal: shown there, and not inside bars_hidden() (work under a bar of its own)."""

from __future__ import annotations

import logging
import os
import pty

import pytest

from mountainid.logs import Bar, TextFormatter, bars_hidden
from tests.terminal import read_until_closed


@pytest.fixture()
def terminal(monkeypatch: pytest.MonkeyPatch):
    """The root logger writing text to a pseudo-terminal; yields a function returning what it showed."""
    leader, follower = pty.openpty()
    stream = os.fdopen(follower, "w")
    handler = logging.StreamHandler(stream)
    handler.setFormatter(TextFormatter())
    monkeypatch.setattr(logging.getLogger(), "handlers", [handler])

    def shown() -> str:
        stream.close()  # the reader sees EOF after the last byte written
        return read_until_closed(leader)

    yield shown
    if not stream.closed:
        stream.close()
        os.close(leader)


def test_bars_inside_bars_hidden_draw_nothing(terminal) -> None:
    with Bar("outer", 2) as outer:
        with bars_hidden(), Bar("inner", 3) as inner:
            inner.advance(3)
        outer.advance(2)
    with pytest.raises(RuntimeError), bars_hidden():
        raise RuntimeError("a failed chunk")
    with Bar("after", 1) as after:  # bars show again after it, even after a failure inside it
        after.advance()
    shown = terminal()
    assert "outer" in shown and "2/2" in shown and "after" in shown
    assert "inner" not in shown
