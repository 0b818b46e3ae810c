"""Where the server's shared state lives, and what of it outlasts a restart (smbd.store).

The persistent store, in the state directory, holds the ServerGuid: MS-SMB2 3.3.1.5 gives
a server one ServerGuid, and a client that sees it change between its connections takes it
for another server (no multichannel with it, no reconnect of persistent handles).

The volatile store lives on tmpfs in a folder of this smbdd's own, ``smbdd-run-<pid>``:
every start begins with none of the records of an earlier run, and runs side by side (the
tests start many) never share one. Folders of smbdd processes that are gone are removed at
start, the way a killed smbdd's are left behind.
"""
from __future__ import annotations

import logging
import os
import shutil
import uuid
from pathlib import Path

from smbd.store import open_persistent, pid_alive

log = logging.getLogger("smbdd.state")

RUNTIME_ROOT = Path("/dev/shm")
RUNTIME_PREFIX = "smbdd-run-"


class StateError(Exception):
    pass


def stable_server_guid(state_dir: Path) -> uuid.UUID:
    """This server's ServerGuid: made once, then read back at every start."""
    try:
        store = open_persistent(Path(state_dir) / "store")
    except Exception as e:  # lmdb.Error, OSError: an unusable state directory
        raise StateError(f"state directory {state_dir}: cannot open its store: {e}") from e
    try:
        record = store.update("server", "guid", lambda old: old if _valid_guid(old) else
                              {"guid": str(uuid.uuid4())})
        return uuid.UUID(record["guid"])
    finally:
        store.close()


def _valid_guid(record: dict | None) -> bool:
    try:
        return record is not None and uuid.UUID(record["guid"]).int != 0
    except (KeyError, TypeError, ValueError):
        return False


def make_runtime_dir(root: Path = RUNTIME_ROOT) -> Path:
    sweep_runtime_dirs(root)
    folder = root / f"{RUNTIME_PREFIX}{os.getpid()}"
    shutil.rmtree(folder, ignore_errors=True)  # a pid reused from a killed smbdd
    folder.mkdir(mode=0o700)
    return folder


def sweep_runtime_dirs(root: Path = RUNTIME_ROOT) -> None:
    for folder in root.glob(f"{RUNTIME_PREFIX}*"):
        pid = folder.name[len(RUNTIME_PREFIX):]
        if pid.isdigit() and pid_alive(int(pid)):
            continue
        log.info("removing %s, left by an smbdd that is gone", folder)
        shutil.rmtree(folder, ignore_errors=True)
