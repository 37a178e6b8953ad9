"""Checks of what a user typed on a command line, before anything starts (no heavy imports: every
command's parser uses them before it loads anything)."""

from __future__ import annotations

import socket
from pathlib import Path

from mountainid.config import ConfigError


def existing_folder(value: str) -> Path:
    """An argparse type for a photo folder: a missing one stops the command with one line (ConfigError
    escapes argparse, which would otherwise print its usage), before any server starts or file is written."""
    path = Path(value)
    if not path.is_dir():
        raise ConfigError(f"photo folder {value} does not exist (or is not a folder)")
    return path


def check_port_free(host: str, port: int) -> None:
    """Fail at once, in our words, when the site could not start on this port (not after minutes of
    ingest and training, nor as a web server's traceback)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds: TIME_WAIT is free
        try:
            probe.bind((host, port))
        except OSError as error:
            raise ConfigError(f"port {port} is not free ({error.strerror}): stop what uses it, or pass --port N "
                              "(or set PORT)") from None
