"""Run one smbtorture suite against a :class:`ServerUnderTest` and collect per-test results.

Command line from shared/LAB.md (the team's lab notes): `-s /dev/null`, `--target=samba3`, the share/write-time
delays Samba's own selftest uses, `--format=subunit --fullname` (names like
``smb2.read.eof``), always under coreutils `timeout` because some tests wait on 35 s break
timeouts and smb2.notify can hang forever.  Exit status 134/139 (or -6/-11 without
`timeout`) is smbtorture itself crashing: the test that was running is marked CRASH.
"""
from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Sequence

from tests.peers.server_under_test import ServerUnderTest

from .subunit_v1 import Outcome, SubunitParser, TestResult

TIMEOUT_EXIT = 124           # coreutils timeout: the command timed out
CRASH_EXITS = {134, 139, -6, -11}  # SIGABRT / SIGSEGV, via `timeout` (128+n) or direct
KILL_GRACE = 10              # seconds between timeout's SIGTERM and SIGKILL

# smbdd's twin of the Samba reference's "smbd:FSCTL_SMBTORTURE = yes" (samba_server.py):
# the test-only FSCTLs with which smbtorture simulates a dead channel.
SMBDD_TORTURE_ARGS = ("--smbtorture-fsctl",)

TORTURE_OPTIONS = (
    "--target=samba3",
    "--option=torture:sharedelay=100000",
    "--option=torture:writetimeupdatedelay=500000",
    "--option=torture:progress=no",
)


def smbtorture_available() -> bool:
    return shutil.which("smbtorture") is not None


class SuiteRun(dict):
    """name -> :class:`TestResult` for one suite run, plus how the run went."""

    def __init__(self, suite: str, results: dict[str, TestResult], *, seconds: float,
                 returncode: int, output_path: Path | None, note: str = ""):
        super().__init__(results)
        self.suite = suite
        self.seconds = seconds
        self.returncode = returncode
        self.output_path = output_path
        self.note = note

    @property
    def crashed(self) -> bool:
        return self.returncode in CRASH_EXITS

    @property
    def timed_out(self) -> bool:
        return self.returncode == TIMEOUT_EXIT

    def count(self, *outcomes: Outcome) -> int:
        return sum(1 for r in self.values() if r.outcome in outcomes)

    def summary(self) -> dict[str, int]:
        return {
            "pass": sum(1 for r in self.values() if r.outcome.passed),
            "fail": sum(1 for r in self.values() if r.outcome.failed),
            "skip": self.count(Outcome.SKIP),
        }


def smbtorture_argv(server: ServerUnderTest, suite: str, *, basedir: Path,
                    extra: Sequence[str] = (), max_runtime: int = 600) -> list[str]:
    return ["smbtorture", "-s", "/dev/null", server.unc, "-p", str(server.port),
            "-U", f"{server.user}%{server.password}", *TORTURE_OPTIONS,
            f"--maximum-runtime={max_runtime}", f"--basedir={basedir}",
            "--format=subunit", "--fullname", *extra, suite]


def run_suite(server: ServerUnderTest, suite: str, timeout: float = 600, *,
              extra: Sequence[str] = (), output_dir: Path | None = None) -> SuiteRun:
    """Run *suite* (e.g. ``smb2.read``) and return its per-test results.

    The raw stream is kept in *output_dir*/SUITE.subunit when given (for reading failure
    details later).  Tests that started but never finished get CRASH, TIMEOUT or
    INCOMPLETE according to how smbtorture ended.
    """
    timeout = int(timeout)
    with tempfile.TemporaryDirectory(prefix="smbtorture-") as basedir:
        argv = ["timeout", "-k", str(KILL_GRACE), str(timeout),
                *smbtorture_argv(server, suite, basedir=Path(basedir), extra=extra,
                                 max_runtime=timeout)]
        started = time.monotonic()
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, timeout=timeout + KILL_GRACE + 30)
        seconds = time.monotonic() - started
    text = proc.stdout.decode("utf-8", errors="replace")
    output_path = None
    if output_dir is not None:
        output_dir.mkdir(parents=True, exist_ok=True)
        output_path = output_dir / f"{suite}.subunit"
        output_path.write_text(text)

    parser = SubunitParser()
    parser.feed(text)
    parser.close()
    results = dict(parser.results)
    if proc.returncode in CRASH_EXITS:
        unfinished_outcome = Outcome.CRASH
    elif proc.returncode == TIMEOUT_EXIT:
        unfinished_outcome = Outcome.TIMEOUT
    else:
        unfinished_outcome = Outcome.INCOMPLETE
    for name in parser.unfinished():
        results[name] = TestResult(name, unfinished_outcome,
                                   f"smbtorture exit status {proc.returncode}")
    note = ""
    if "Unknown torture operation" in text:
        note = "unknown suite"
    elif not results:
        note = f"no results (exit {proc.returncode}): " + " | ".join(text.splitlines()[-3:])
    return SuiteRun(suite, results, seconds=seconds, returncode=proc.returncode,
                    output_path=output_path, note=note)
