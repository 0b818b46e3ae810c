"""run_suite: outcomes of unfinished tests (crash, timeout) and a real run against Samba."""
from __future__ import annotations

import pytest

from tests.peers.server_under_test import ServerUnderTest
from tests.torture.runner import run_suite, smbtorture_available
from tests.torture.subunit_v1 import Outcome

pytest_plugins = ["tests.peers.fixtures"]

FAKE_SERVER = ServerUnderTest(host="127.0.0.1", port=1, share_name="share", share_path="/",
                              user="u", password="p")


@pytest.fixture
def fake_smbtorture(tmp_path, monkeypatch):
    """Put a shell script named smbtorture first on PATH; the test writes its body."""
    script = tmp_path / "smbtorture"
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")

    def write(body: str):
        script.write_text("#!/bin/sh\n" + body)
        script.chmod(0o755)
    return write


def test_client_crash_marks_running_test(fake_smbtorture):
    fake_smbtorture('echo "test: s.a"; echo "success: s.a"; echo "test: s.b"; '
                    'kill -SEGV $$\n')
    run = run_suite(FAKE_SERVER, "s", timeout=30)
    # coreutils timeout re-raises the signal the child died of: -11 here, 139 from a shell
    assert run.crashed and run.returncode in (139, -11)
    assert run["s.a"].outcome is Outcome.SUCCESS
    assert run["s.b"].outcome is Outcome.CRASH


def test_hang_is_cut_by_timeout(fake_smbtorture):
    fake_smbtorture('echo "test: s.hang"; exec sleep 60\n')
    run = run_suite(FAKE_SERVER, "s", timeout=1)
    assert run.timed_out and run.seconds < 10
    assert run["s.hang"].outcome is Outcome.TIMEOUT


@pytest.mark.peer
@pytest.mark.skipif(not smbtorture_available(), reason="smbtorture not installed")
def test_real_suite_against_samba(samba_server, tmp_path):
    run = run_suite(samba_server, "smb2.rw", timeout=120, output_dir=tmp_path)
    assert run.returncode == 0, run.output_path.read_text()
    assert set(run) == {"smb2.rw.rw1", "smb2.rw.rw2", "smb2.rw.invalid"}
    assert all(r.outcome is Outcome.SUCCESS for r in run.values())
