"""smbclient put/get throughput: Samba (reference) vs the server under test, same run.

    python -m bench.smbclient_bench [--smbdd-command "smbdd"] [--size-mib 256] [--runs 3]
        [--protocol SMB3_11] [--client-protection off|sign|encrypt]

For each server: `put` a random file, then `get` it to /dev/null (no local disk write on the
client side), *runs* times each, interleaving the servers run by run so drift (page cache,
CPU frequency, other load) hits both alike.  Throughput is smbclient's own figure for the
transfer (its "average ... kb/s", which leaves out process start, negotiate and logon);
the wall time of the whole smbclient process is printed alongside.  Prints medians in MiB/s
and the smbdd/Samba ratios, with the min-max range: on a shared 2-core machine one busy
neighbour process moves single transfers by 2x, so read ratios near 1 as "equal".
"""
from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tests.peers.files import make_random_file, sha256_file, world_traversable_dir
from tests.peers.fixtures import build_smbdd_server, find_smbdd_command
from tests.peers.samba_server import SambaServer
from tests.peers.server_under_test import ServerUnderTest, SecurityProfile
from tests.peers.smbclient_runner import check, smbclient

# "putting file X as \Y (356173.7 kb/s) (average 356173.9 kb/s)"
# "getting file \Y of size N as /dev/null (1489451.2 KiloBytes/sec) (average ...)"
# smbclient's kb is 1024 bytes (bytes / 1024 / seconds in source3/client/client.c).
_RATE = re.compile(r"\(average ([\d.]+) (?:kb/s|KiloBytes/sec)\)")


@dataclass(frozen=True, slots=True)
class Sample:
    mib_per_s: float
    wall_s: float


def transfer_rate(result: subprocess.CompletedProcess) -> float:
    """MiB/s from smbclient's progress line (printed on stderr)."""
    check(result)
    match = _RATE.search(result.stderr) or _RATE.search(result.stdout)
    if not match:
        raise ValueError(f"no transfer rate in smbclient output:\n{result.stderr}")
    return float(match[1]) / 1024


def put_once(server: ServerUnderTest, local: Path, protocol: str, extra) -> Sample:
    started = time.monotonic()
    rate = transfer_rate(smbclient(server, [f'put "{local}" bench.bin'], protocol, extra))
    return Sample(rate, time.monotonic() - started)


def get_once(server: ServerUnderTest, protocol: str, extra) -> Sample:
    started = time.monotonic()
    rate = transfer_rate(smbclient(server, ["get bench.bin /dev/null"], protocol, extra))
    return Sample(rate, time.monotonic() - started)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smbdd-command", help="server under test (shell words); default: the "
                    "smbdd console script / $SMBDD_COMMAND, if present")
    ap.add_argument("--samba-only", action="store_true")
    ap.add_argument("--size-mib", type=int, default=256)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1, help="unmeasured rounds first")
    ap.add_argument("--protocol", default="SMB3_11")
    ap.add_argument("--client-protection", choices=("off", "sign", "encrypt"),
                    help="smbclient --client-protection (default: smbclient's default)")
    args = ap.parse_args(argv)
    extra = ((f"--client-protection={args.client_protection}",)
             if args.client_protection else ())

    command = None
    if not args.samba_only:
        command = (shlex.split(args.smbdd_command) if args.smbdd_command
                   else find_smbdd_command())
        if command is None:
            print("no smbdd command found: Samba only", file=sys.stderr)

    base = world_traversable_dir(Path(tempfile.mkdtemp(prefix="smbdd-bench-")))
    servers: dict[str, ServerUnderTest] = {"samba": SambaServer(base / "samba")}
    if command:
        servers["smbdd"] = build_smbdd_server(command, SecurityProfile(),
                                              world_traversable_dir(base / "smbdd"))
    local = base / "payload.bin"
    size = args.size_mib * 1024 * 1024
    digest = make_random_file(local, size)
    samples: dict[tuple[str, str], list[Sample]] = {}
    try:
        for server in servers.values():
            server.start()
        for _ in range(args.warmup):  # first transfers run ~3x slower: not measured
            for server in servers.values():
                put_once(server, local, args.protocol, extra)
                get_once(server, args.protocol, extra)
        for run in range(args.runs):
            for name, server in servers.items():
                # Same starting state for every put: no old file to truncate, and no dirty
                # pages from the previous run being written back during this one (without
                # this, Samba's put ranged 214-707 MiB/s within one run of this script).
                (server.share_path / "bench.bin").unlink(missing_ok=True)
                os.sync()
                put = put_once(server, local, args.protocol, extra)
                get = get_once(server, args.protocol, extra)
                samples.setdefault((name, "put"), []).append(put)
                samples.setdefault((name, "get"), []).append(get)
                print(f"run {run + 1} {name:5s}: put {put.mib_per_s:8.1f} MiB/s "
                      f"({put.wall_s:.2f} s)  get {get.mib_per_s:8.1f} MiB/s "
                      f"({get.wall_s:.2f} s)")
            # Verify once per run that what the server stored is the payload.
            for name, server in servers.items():
                if sha256_file(server.share_path / "bench.bin") != digest:
                    raise SystemExit(f"{name} stored different bytes")
    finally:
        for server in servers.values():
            server.stop()
        shutil.rmtree(base, ignore_errors=True)

    print(f"\n{args.size_mib} MiB, {args.runs} runs after {args.warmup} warm-up, {args.protocol}"
          f"{' ' + extra[0] if extra else ''}; medians in MiB/s (smbclient's transfer rate)")
    medians = {key: statistics.median(s.mib_per_s for s in values)
               for key, values in samples.items()}
    spread = {key: [s.mib_per_s for s in values] for key, values in samples.items()}
    walls = {key: statistics.median(s.wall_s for s in values)
             for key, values in samples.items()}
    for op in ("put", "get"):
        line = f"{op}: " + "  ".join(
            f"{name} {medians[name, op]:8.1f} (range {min(spread[name, op]):.0f}-"
            f"{max(spread[name, op]):.0f}, wall {walls[name, op]:.2f} s)" for name in servers)
        if "smbdd" in servers:
            line += f"  ratio smbdd/Samba {medians['smbdd', op] / medians['samba', op]:.2f}"
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
