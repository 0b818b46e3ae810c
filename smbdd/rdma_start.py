"""Starting SMB Direct beside TCP: find RDMA devices, start the proxy on them."""
from __future__ import annotations

import logging
import os
import sys

log = logging.getLogger("smbdd.rdma")
SYS_RDMA = "/sys/class/infiniband"


def present_devices() -> list[str]:
    try:
        return sorted(os.listdir(SYS_RDMA))
    except OSError:
        return []


async def start_rdma(settings, supervisor, args):
    """Start the SMB Direct proxy, or say why not. Explicit --device names must exist."""
    found = present_devices()
    wanted = settings.devices
    if wanted:
        missing = [d for d in wanted if d not in found]
        if missing:
            print(f"smbdd: RDMA device {', '.join(missing)} not found "
                  f"(present: {', '.join(found) or 'none'})", file=sys.stderr)
            raise SystemExit(1)
    else:
        wanted = found
    if not wanted:
        print("smbdd: no RDMA devices found; serving TCP only", flush=True)
        return None
    try:
        from .proxy.server import Proxy
    except ImportError as e:
        print(f"smbdd: SMB Direct unavailable ({e}); serving TCP only", file=sys.stderr)
        return None
    proxy = Proxy(settings, supervisor, wanted, listen=args.rdma_listen)
    await proxy.start()
    return proxy
