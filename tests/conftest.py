"""Fixtures shared by the test modules: the real-peer harness (Samba, smbdd, payload files)."""
import json
import os
import shutil
from pathlib import Path

import pytest

pytest_plugins = ["tests.peers.fixtures"]


@pytest.fixture(scope="session", autouse=True)
def _no_session_records_left():
    """In-process servers (ServerState in the unit tests) publish their sessions under
    /dev/shm/smbdd-sessions-* like workers do, and not every test shuts its server down:
    remove this process's records at the end, as smbdd does for its workers'."""
    yield
    for folder in Path("/dev/shm").glob("smbdd-sessions-*"):
        try:
            pids = {json.loads(p.read_text()).get("pid") for p in folder.iterdir() if not p.suffix}
        except (OSError, ValueError):
            continue
        if pids == {os.getpid()}:
            shutil.rmtree(folder, ignore_errors=True)
