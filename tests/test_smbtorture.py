"""Samba's smbtorture against smbdd, in the normal test run: a regression gate.

`tests/torture/smbdd_passing.txt` lists every smbtorture test smbdd passed when the list was
last made (by `./dev.sh torture`, which also runs the suites against Samba's smbd and writes
tests/torture/RESULTS.md with the reason for each failure). Here each suite runs against a
fresh smbdd; a listed test that no longer passes fails this test. The slow suites that wait
on 35 s oplock break timeouts stay in `./dev.sh torture` only.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.peers.files import world_traversable_dir
from tests.peers.fixtures import build_smbdd_server, find_smbdd_command
from tests.peers.server_under_test import DEFAULT_PROFILE
from tests.torture.runner import SMBDD_TORTURE_ARGS, run_suite, smbtorture_available
from tests.torture.subunit_v1 import Outcome

pytestmark = pytest.mark.peer
PASSING = Path(__file__).parent / "torture" / "smbdd_passing.txt"
SUITES = ["smb2.connect", "smb2.read", "smb2.rw", "smb2.credits", "smb2.lock", "smb2.compound",
          "smb2.dir", "smb2.getinfo", "smb2.setinfo", "smb2.create", "smb2.session", "smb2.streams",
          "smb2.notify", "smb2.oplock", "smb2.durable-open", "smb2.durable-v2-open", "smb2.replay",
          # smb2.multichannel by part: smbtorture 4.17 itself segfaults in leases.test4 when it
          # follows test3 (against Samba too); test4 passes alone.
          "smb2.multichannel.generic", "smb2.multichannel.oplocks", "smb2.multichannel.leases.test1",
          "smb2.multichannel.leases.test2", "smb2.multichannel.leases.test3"]


def expected(suite: str) -> set[str]:
    names = [line.strip() for line in PASSING.read_text().splitlines() if line.strip() and not line.startswith("#")]
    return {n for n in names if n == suite or n.startswith(suite + ".")}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    if not smbtorture_available():
        pytest.skip("smbtorture is not installed (apt: samba-testsuite)")
    command = find_smbdd_command()
    srv = build_smbdd_server(command, DEFAULT_PROFILE, world_traversable_dir(tmp_path_factory.mktemp("torture")),
                             extra=SMBDD_TORTURE_ARGS)
    srv.start()
    yield srv
    srv.stop()


@pytest.mark.timeout(900)
@pytest.mark.parametrize("suite", SUITES)
def test_no_smbtorture_regression(server, suite, tmp_path):
    must_pass = expected(suite)
    if not must_pass:
        pytest.skip(f"no {suite} test passed when smbdd_passing.txt was made")
    run = run_suite(server, suite, timeout=600, output_dir=tmp_path)
    assert not run.crashed and not run.timed_out, run.summary()
    passed = {name for name, r in run.items() if r.outcome in (Outcome.SUCCESS, Outcome.XFAIL)}
    regressed = sorted(must_pass - passed)
    assert not regressed, {n: (run[n].outcome.value, run[n].details[:300]) if n in run else "not run"
                           for n in regressed}
