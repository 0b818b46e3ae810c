"""64 clients at once: how long until every one has listed the share, and the server's memory
while they stay connected; Samba against smbdd (and smbdd at older revisions), same run.

    python -m bench.many_clients [--clients 64] [--runs 3] [--before REV ...]

Each client is an smbclient process reading commands from a pipe: all are started together,
each sends ``ls``, and the clock stops when the last listing has arrived. Then, with all of
them still connected, the memory of the server's processes (every process of its session:
Samba's smbd and its children, smbdd with its zygote and workers) is summed as PSS from
/proc/PID/smaps_rollup, which counts pages shared between processes once, split among them.
The servers take turns run by run.
"""
from __future__ import annotations

import argparse
import os
import select
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.torture_bench import bench_servers, remove_trees
from tests.peers.files import world_traversable_dir
from tests.peers.fixtures import find_smbdd_command
from tests.peers.server_under_test import ServerUnderTest

DONE = b"blocks available"  # the last line of smbclient's ls


def session_pss_kib(leader: int) -> tuple[int, int]:
    """(PSS in KiB, process count) of every process in the session ``leader`` started."""
    total = count = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            sid = int(stat.rsplit(")", 1)[1].split()[3])
            if sid != leader:
                continue
            for line in Path(f"/proc/{entry}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
                    count += 1
        except (OSError, ValueError, IndexError):
            continue
    return total, count


def one_run(server: ServerUnderTest, clients: int) -> tuple[float, int, int]:
    """Seconds until all listed, server PSS (KiB) and process count with them connected."""
    # stdbuf: smbclient writes to a pipe through stdio, which would hold the listing back until exit.
    argv = ["stdbuf", "-o0", "smbclient", "-s", "/dev/null", f"//{server.host}/{server.share_name}", "-p", str(server.port),
            "-U", f"{server.user}%{server.password}", "-m", "SMB3_11"]
    start = time.monotonic()
    procs = [subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
             for _ in range(clients)]
    try:
        for p in procs:
            p.stdin.write(b"ls\n")
            p.stdin.flush()
        waiting = {p.stdout.fileno(): (p, bytearray()) for p in procs}
        deadline = start + 120
        while waiting and time.monotonic() < deadline:
            ready, _, _ = select.select(list(waiting), [], [], 1)
            for fd in ready:
                p, got = waiting[fd]
                chunk = os.read(fd, 65536)
                got += chunk
                if DONE in got:
                    del waiting[fd]
                elif not chunk:
                    raise RuntimeError(f"a client failed: {bytes(got[-300:])!r}")
        if waiting:
            raise RuntimeError(f"{len(waiting)} clients had no listing after 120 s")
        elapsed = time.monotonic() - start
        time.sleep(0.5)  # every server process settled
        pss, count = session_pss_kib(server.process.pid)
        return elapsed, pss, count
    finally:
        for p in procs:
            try:
                p.stdin.write(b"quit\n")
                p.stdin.close()
            except OSError:
                pass
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--before", action="append", default=[], metavar="REV")
    args = ap.parse_args(argv)
    command = find_smbdd_command()
    if command is None or shutil.which("smbclient") is None:
        print("needs smbdd (./dev.sh installs it) and smbclient", file=sys.stderr)
        return 2
    base = world_traversable_dir(Path(tempfile.mkdtemp(prefix="smbdd-many-clients-")))
    servers, trees = bench_servers(command, base, args.before)
    results: dict[str, list[tuple[float, int, int]]] = {name: [] for name in servers}
    try:
        for server in servers.values():
            server.start()
        time.sleep(1)
        for run in range(args.runs):
            for name, server in servers.items():
                elapsed, pss, count = one_run(server, args.clients)
                results[name].append((elapsed, pss, count))
                print(f"run {run + 1} {name:18s} {elapsed:6.2f} s until all listed, {pss / 1024:7.1f} MiB PSS "
                      f"in {count} processes", flush=True)
                time.sleep(2)  # the clients' workers/children exit before the next server's turn
    finally:
        for server in servers.values():
            server.stop()
        remove_trees(trees)
        shutil.rmtree(base, ignore_errors=True)
    print(f"\n{args.clients} clients at once, {args.runs} runs, medians; ratio to Samba in brackets "
          "(time: lower is better; memory: per client)")
    samba_t = statistics.median(r[0] for r in results["samba"])
    samba_m = statistics.median(r[1] for r in results["samba"])
    for name, rows in results.items():
        t = statistics.median(r[0] for r in rows)
        m = statistics.median(r[1] for r in rows)
        print(f"{name:18s} all listed {t:6.2f} s ({t / samba_t:.2f})   PSS {m / 1024:7.1f} MiB, "
              f"{m / 1024 / args.clients:5.2f} MiB per client ({m / samba_m:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
