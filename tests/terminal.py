"""Reading what a pseudo-terminal showed, once its writer has closed it."""

from __future__ import annotations

import os
import re

# ANSI control sequences: colours and the cursor moves with which a live progress bar redraws itself.
_CONTROL = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def read_until_closed(leader: int) -> str:
    """Everything written to the terminal whose follower end is closed, as text without control sequences.
    One ``os.read`` may return only the first line the line discipline has processed, so read until EOF
    (EIO on Linux)."""
    seen = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: every writer closed the terminal
            break
        if not chunk:
            break
        seen += chunk
    os.close(leader)
    return _CONTROL.sub("", seen.decode("utf-8", "replace"))
