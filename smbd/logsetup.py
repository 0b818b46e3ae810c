"""Where smbdd and its workers log: stderr (journald under systemd), or one file they all
append to, ``--log-file``. The file is reopened by each process when logrotate has moved it
away (logging's WatchedFileHandler checks before each record), so rotation needs neither
copytruncate nor a signal; lines of different processes do not tear, as each is one
O_APPEND write.
"""
from __future__ import annotations

import logging
import logging.handlers
import sys


def configure(level: str, fmt: str, log_file: str | None = None) -> None:
    if log_file:
        handler: logging.Handler = logging.handlers.WatchedFileHandler(log_file, encoding="utf-8")
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(fmt))
    logging.basicConfig(level=level, handlers=[handler], force=True)
