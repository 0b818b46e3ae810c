"""Run smbtorture suites against Samba (the reference) and smbdd; write a Markdown report.

    python -m tests.torture.compare --suites smb2.connect,smb2.read --out tests/torture/RESULTS.md
        [--smbdd-command "smbdd"] [--samba-only] [--timeout 600] [--json results.json]

Each server gets a fresh private instance sharing an empty writable folder, emptied again
between suites.  If a server dies during a suite it is restarted for the next one and the
report says so.  The report lists pass/fail/skip counts and wall time per suite and server,
and the tests that fail on smbdd while passing on Samba.
"""
from __future__ import annotations

import argparse
import datetime
import json
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.peers.files import world_traversable_dir
from tests.peers.fixtures import build_smbdd_server, find_smbdd_command
from tests.peers.samba_server import (TORTURE_GLOBAL_OPTIONS, TORTURE_SHARE_OPTIONS,
                                     SambaServer)
from tests.peers.server_under_test import DEFAULT_PROFILE, CommandServer

from .subunit_v1 import Outcome
from .runner import SMBDD_TORTURE_ARGS, SuiteRun, run_suite, smbtorture_available

DEFAULT_SUITES = ("smb2.connect,smb2.read,smb2.rw,smb2.dir,smb2.getinfo,smb2.setinfo,"
                  "smb2.create,smb2.lock,smb2.compound,smb2.credits,smb2.session,"
                  "smb2.lease,smb2.durable-open,smb2.durable-v2-open,smb2.streams,smb2.notify,"
                  "smb2.oplock,smb2.replay,smb2.multichannel")


def empty_folder(path: Path) -> None:
    """Delete everything inside *path* (what a suite left behind), keeping *path* itself."""
    for child in path.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)


def run_against(label: str, server: CommandServer, suites: list[str], timeout: float,
                output_dir: Path, log=print) -> dict[str, SuiteRun]:
    runs: dict[str, SuiteRun] = {}
    server.start()
    try:
        for suite in suites:
            empty_folder(server.share_path)
            run = run_suite(server, suite, timeout, output_dir=output_dir / label)
            if not server.running:
                run.note = (run.note + "; " if run.note else "") + "server died, restarted"
                server.stop()
                server.start()
            runs[suite] = run
            s = run.summary()
            log(f"[{label}] {suite}: {s['pass']} pass, {s['fail']} fail, {s['skip']} skip "
                f"in {run.seconds:.1f} s (exit {run.returncode}) {run.note}")
    finally:
        server.stop()
    return runs


def regressions(reference: SuiteRun, candidate: SuiteRun) -> list[str]:
    """Tests that pass on *reference* and fail (or never ran to an outcome) on *candidate*."""
    names = []
    for name, ref in reference.items():
        if not ref.outcome.passed:
            continue
        got = candidate.get(name)
        if got is None or got.outcome.failed:
            names.append(name)
    return sorted(names)


def _cells(run: SuiteRun | None) -> list[str]:
    if run is None:
        return ["-", "-", "-", "-"]
    s = run.summary()
    return [str(s["pass"]), str(s["fail"]), str(s["skip"]), f"{run.seconds:.1f}"]


def _first_line(details: str) -> str:
    for line in details.splitlines():
        if line.strip():
            return line.strip()[:160]
    return ""


def render_markdown(suites: list[str], samba: dict[str, SuiteRun],
                    smbdd: dict[str, SuiteRun] | None, header: str) -> str:
    out = [header, ""]
    out.append("| suite | Samba pass | fail | skip | s | smbdd pass | fail | skip | s | notes |")
    out.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for suite in suites:
        ref = samba.get(suite)
        cand = smbdd.get(suite) if smbdd else None
        notes = "; ".join(f"{who}: {r.note}" for who, r in (("Samba", ref), ("smbdd", cand))
                          if r is not None and r.note)
        out.append(f"| {suite} | " + " | ".join(_cells(ref) + _cells(cand)) + f" | {notes} |")
    total = lambda runs: sum(r.seconds for r in runs.values())  # noqa: E731
    out.append("")
    out.append(f"Wall time: Samba {total(samba):.0f} s"
               + (f", smbdd {total(smbdd):.0f} s" if smbdd else ", smbdd not run") + ".")

    if smbdd:
        out += ["", "## Failing on smbdd, passing on Samba", ""]
        any_listed = False
        for suite in suites:
            if suite in samba and suite in smbdd:
                for name in regressions(samba[suite], smbdd[suite]):
                    got = smbdd[suite].get(name)
                    why = f"{got.outcome.value}: {_first_line(got.details)}" if got else "not run"
                    out.append(f"- `{name}` ({why})")
                    any_listed = True
        if not any_listed:
            out.append("None.")

    out += ["", "## Not passing on Samba (reference baseline)", ""]
    for suite in suites:
        run = samba.get(suite)
        if run is None:
            continue
        bad = sorted((n, r) for n, r in run.items() if not r.outcome.passed)
        if bad:
            out.append(f"- {suite}: " + ", ".join(
                f"`{n.removeprefix(suite + '.')}` ({r.outcome.value})" for n, r in bad))
    return "\n".join(out) + "\n"


def _version(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True).stdout.strip()
        return out.splitlines()[0] if out else "?"
    except OSError:
        return "?"


def to_json(runs: dict[str, SuiteRun]) -> dict:
    return {suite: {"seconds": run.seconds, "returncode": run.returncode, "note": run.note,
                    "tests": {n: r.outcome.value for n, r in run.items()}}
            for suite, run in runs.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--suites", default=DEFAULT_SUITES,
                    help="comma-separated smbtorture suites (default: %(default)s)")
    ap.add_argument("--out", type=Path, default=Path("tests/torture/RESULTS.md"))
    ap.add_argument("--json", type=Path, help="also write per-test outcomes as JSON")
    ap.add_argument("--timeout", type=float, default=600, help="per suite, seconds")
    ap.add_argument("--smbdd-command", help="smbdd executable (shell words); default: the "
                    "smbdd console script / $SMBDD_COMMAND")
    ap.add_argument("--samba-only", action="store_true")
    ap.add_argument("--samba-vanilla", action="store_true",
                    help="plain Samba share, without the Windows-like VFS modules")
    ap.add_argument("--keep", action="store_true", help="keep server folders and raw output")
    ap.add_argument("--passing-list", type=Path,
                    help="write the smbdd tests that passed, one a line (tests/test_smbtorture.py's gate)")
    args = ap.parse_args(argv)

    if not smbtorture_available():
        print("smbtorture is not installed (apt package samba-testsuite)", file=sys.stderr)
        return 2
    suites = [s.strip() for s in args.suites.split(",") if s.strip()]
    smbdd_command = None
    if not args.samba_only:
        smbdd_command = (shlex.split(args.smbdd_command) if args.smbdd_command
                         else find_smbdd_command())
        if smbdd_command is None:
            print("no smbdd command found: running Samba only", file=sys.stderr)

    base = world_traversable_dir(Path(tempfile.mkdtemp(prefix="smbdd-torture-")))
    started = time.monotonic()
    try:
        samba = (SambaServer(base / "samba") if args.samba_vanilla else
                 SambaServer(base / "samba", share_options=TORTURE_SHARE_OPTIONS,
                             global_options=TORTURE_GLOBAL_OPTIONS))
        samba_runs = run_against("samba", samba, suites, args.timeout, base / "output")
        smbdd_runs = None
        if smbdd_command:
            server = build_smbdd_server(smbdd_command, DEFAULT_PROFILE,
                                        world_traversable_dir(base / "smbdd"), extra=SMBDD_TORTURE_ARGS)
            smbdd_runs = run_against("smbdd", server, suites, args.timeout, base / "output")
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
        else:
            print(f"kept {base}")

    samba_config = ("vanilla" if args.samba_vanilla else ", ".join(
        f"`{k} = {v}`" for k, v in {**TORTURE_SHARE_OPTIONS, **TORTURE_GLOBAL_OPTIONS}.items()))
    header = (f"# smbtorture results: Samba (reference) vs smbdd\n\n"
              f"Generated {datetime.date.today()} by `python -m tests.torture.compare "
              f"--suites {','.join(suites)}` in {time.monotonic() - started:.0f} s; "
              f"{_version(['smbtorture', '--version'])}, Samba smbd "
              f"{_version(['smbd', '--version'])}; per-suite timeout {args.timeout:.0f} s.\n"
              f"Samba share: {samba_config}.\n"
              f"\"fail\" counts failure, error, unexpected success, and tests cut short by "
              f"a client crash or the timeout; xfail counts as pass.")
    args.out.write_text(render_markdown(suites, samba_runs, smbdd_runs, header))
    if args.json:
        args.json.write_text(json.dumps({"samba": to_json(samba_runs),
                                         "smbdd": to_json(smbdd_runs or {})}, indent=1))
    if args.passing_list and smbdd_runs:
        passed = sorted(name for run in smbdd_runs.values() for name, r in run.items()
                        if r.outcome in (Outcome.SUCCESS, Outcome.XFAIL))
        args.passing_list.write_text("# smbtorture tests smbdd passed; written by tests.torture.compare "
                                     "--passing-list\n" + "\n".join(passed) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
