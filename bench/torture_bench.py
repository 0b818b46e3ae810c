"""Small-operation rates with smbtorture's smb2.bench: Samba (reference) vs smbdd, same run.

    python -m bench.torture_bench [--runs 3] [--timelimit 10] [--nprocs 4]
        [--before REV ...] [--tests echo,path-contention-shared,oplock1]

- smb2.bench.echo: ECHO round trips on ``nprocs`` connections;
- smb2.bench.path-contention-shared: open+close of one path, shared, from every connection
  (the opens and share modes every open consults);
- smb2.bench.oplock1: one file opened BATCH with no sharing from each connection in turn; each
  open breaks the previous holder, whose client closes on the break (the oplock hand-over
  between clients, i.e. between smbdd's workers).

``--before REV`` also runs smbdd as it was at git revision REV (a temporary worktree, the
same venv), so a change's effect is measured against the code before it in the same run.
The servers take turns run by run, so drift on a shared 2-core machine hits all alike.
Prints each median (smbtorture's own num/s or ops/second over the run) and its ratio to Samba.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.peers.files import world_traversable_dir
from tests.peers.fixtures import build_smbdd_server, find_smbdd_command
from tests.peers.samba_server import SambaServer
from tests.peers.server_under_test import SecurityProfile, ServerUnderTest

REPO = Path(__file__).resolve().parents[1]
TESTS = ("echo", "path-contention-shared", "oplock1")
_NUM_PER_S = re.compile(r"(\w+)\[num/s=(\d+)")  # "3.00 second: open[num/s=3515,avslat=..."
_OPS_PER_S = re.compile(r"([\d.]+) ops/second")  # oplock1's "920.59 ops/second"


def rate_of(test: str, output: str) -> float:
    """The whole run's rate from smbtorture's last report line."""
    if test == "oplock1":
        found = _OPS_PER_S.findall(output)
        if found:
            return float(found[-1])
    else:
        first_op = {"echo": "echo", "path-contention-shared": "open"}[test]
        found = [int(n) for op, n in _NUM_PER_S.findall(output) if op == first_op]
        if found:
            return float(found[-1])
    raise ValueError(f"no rate in smbtorture's output of {test}:\n{output[-2000:]}")


def run_bench(server: ServerUnderTest, test: str, timelimit: int, nprocs: int) -> float | str:
    """The rate, or why the run failed (smbtorture's first failure line)."""
    argv = ["smbtorture", "-s", "/dev/null", f"//{server.host}/{server.share_name}", "-p", str(server.port),
            "-U", f"{server.user}%{server.password}", "--option=torture:progress=no",
            f"--option=torture:timelimit={timelimit}", f"--option=torture:nprocs={nprocs}", f"smb2.bench.{test}"]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timelimit + 120)
    if f"success: {test}" not in result.stdout:
        why = re.search(r"\.c:\d+: (.*)", result.stdout)
        return why[1] if why else f"smbtorture exit status {result.returncode}"
    return rate_of(test, result.stdout + result.stderr)


def smbdd_at(rev: str, base: Path) -> tuple[Path, ServerUnderTest]:
    """smbdd as of ``rev``: a git worktree run by this venv's Python, its tree first on the path."""
    tree = base / f"smbdd-{rev}"
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(tree), rev], check=True,
                   capture_output=True)
    server = build_smbdd_server([sys.executable, "-m", "smbdd.cli"], SecurityProfile(),
                                world_traversable_dir(base / f"work-{rev}"))
    if subprocess.run(["git", "-C", str(REPO), "grep", "-q", "unix-identity", rev, "--", "smbdd/cli.py"]).returncode:
        # Older than user identities: it knows no --unix-identity and runs all as itself anyway.
        i = server.argv.index("--unix-identity")
        del server.argv[i:i + 2]
    server.env = {**os.environ, "PYTHONPATH": str(tree)}
    server.cwd = tree
    return tree, server


def bench_servers(command: list[str], base: Path, revisions: list[str]) -> tuple[dict[str, ServerUnderTest], list[Path]]:
    """The servers a bench compares: Samba, this smbdd, and smbdd at each older revision
    (each a worktree to remove with ``remove_trees``)."""
    servers: dict[str, ServerUnderTest] = {"samba": SambaServer(base / "samba"),
                                           "smbdd": build_smbdd_server(command, SecurityProfile(),
                                                                       world_traversable_dir(base / "smbdd"))}
    trees = []
    for rev in revisions:
        tree, server = smbdd_at(rev, base)
        trees.append(tree)
        servers[f"smbdd@{rev}"] = server
    return servers, trees


def remove_trees(trees: list[Path]) -> None:
    for tree in trees:
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)], capture_output=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--timelimit", type=int, default=10, help="seconds per smbtorture run")
    ap.add_argument("--nprocs", type=int, default=4, help="connections per run")
    ap.add_argument("--tests", default=",".join(TESTS))
    ap.add_argument("--before", action="append", default=[], metavar="REV",
                    help="also run smbdd at this git revision (repeatable)")
    args = ap.parse_args(argv)
    tests = [t for t in args.tests.split(",") if t]
    unknown = set(tests) - set(TESTS)
    if unknown:
        ap.error(f"unknown tests: {', '.join(sorted(unknown))}")
    if shutil.which("smbtorture") is None:
        print("smbtorture is not installed (apt: samba-testsuite)", file=sys.stderr)
        return 2
    command = find_smbdd_command()
    if command is None:
        print("no smbdd command found (./dev.sh installs it)", file=sys.stderr)
        return 2

    base = world_traversable_dir(Path(tempfile.mkdtemp(prefix="smbdd-torture-bench-")))
    servers, trees = bench_servers(command, base, args.before)
    rates: dict[tuple[str, str], list[float]] = {}
    failures: dict[tuple[str, str], list[str]] = {}
    try:
        for server in servers.values():
            server.start()
        for run in range(args.runs):
            for test in tests:
                for name, server in servers.items():
                    rate = run_bench(server, test, args.timelimit, args.nprocs)
                    if isinstance(rate, str):
                        failures.setdefault((name, test), []).append(rate)
                        print(f"run {run + 1} {test:24s} {name:18s}     failed: {rate}", flush=True)
                        continue
                    rates.setdefault((name, test), []).append(rate)
                    print(f"run {run + 1} {test:24s} {name:18s} {rate:10.0f}/s", flush=True)
    finally:
        for server in servers.values():
            server.stop()
        remove_trees(trees)
        shutil.rmtree(base, ignore_errors=True)

    print(f"\nsmb2.bench, {args.nprocs} connections, {args.timelimit} s each, {args.runs} runs; "
          "medians in operations per second, ratio to Samba in brackets")
    for test in tests:
        samba = statistics.median(rates["samba", test]) if ("samba", test) in rates else None
        cells = []
        for name in servers:
            got = rates.get((name, test))
            if not got:
                cells.append(f"{name} failed")
                continue
            median = statistics.median(got)
            cell = f"{name} {median:8.0f}"
            if name != "samba" and samba:
                cell += f" ({median / samba:.2f})"
            if (name, test) in failures:
                cell += f" [{len(failures[name, test])} of {args.runs} runs failed]"
            cells.append(cell)
        print(f"{test:24s} " + "  ".join(cells))
    for (name, test), why in sorted(failures.items()):
        print(f"{name} {test}: {why[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
