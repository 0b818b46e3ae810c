"""Samba behind smbdd's command line: checks the harness's smbdd path before smbdd exists.

    SMBDD_COMMAND="python -m tests.peers.samba_as_smbdd" pytest tests/test_smbclient.py
    python -m tests.torture.compare --smbdd-command "python -m tests.peers.samba_as_smbdd"

Accepts the agreed arguments (--share NAME=PATH, --user NAME:PASSWORD, --listen, --port,
--encrypt, --config), runs a private Samba with them until SIGTERM/SIGINT.  Against this
stand-in every comparison should show "no regressions" and ratios near 1.
"""
from __future__ import annotations

import argparse
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

from .files import world_traversable_dir
from .samba_server import SambaServer
from .server_under_test import SecurityProfile


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--share", required=True, action="append")
    ap.add_argument("--user", required=True)
    ap.add_argument("--listen", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--encrypt", choices=("off", "desired", "required"), default="off")
    ap.add_argument("--config")
    args = ap.parse_args(argv)
    if len(args.share) != 1:
        ap.error("the stand-in serves exactly one share")
    share_name, _, share_path = args.share[0].partition("=")
    user, _, password = args.user.partition(":")

    workdir = world_traversable_dir(Path(tempfile.mkdtemp(prefix="samba-as-smbdd-")))
    server = SambaServer(workdir, share_name=share_name, share_path=Path(share_path),
                         user=user, password=password, host=args.listen, port=args.port,
                         profile=SecurityProfile(encrypt=args.encrypt))
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))
    server.start()
    print(f"samba-as-smbdd listening on {args.listen}:{args.port}", flush=True)
    try:
        while not stop and server.running:
            time.sleep(0.2)
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
