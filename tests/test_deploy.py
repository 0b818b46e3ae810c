"""deploy/: the service units, the soft-RoCE helper, logrotate and the log file smbdd and its
workers reopen after rotation."""
from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from smbdd.cli import parser
from tests.smbdd_process import PASSWORD, USER, Smbdd, wait_until

REPO = Path(__file__).resolve().parents[1]


def unit_commands(unit: Path) -> dict[str, list[str]]:
    out = {}
    for line in unit.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and key.startswith("Exec"):
            out[key] = shlex.split(value)
    return out


def test_service_units_name_real_options_and_files(tmp_path):
    r = subprocess.run([str(REPO / "deploy/install-service.sh"), "--destdir", str(tmp_path)], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    unit = tmp_path / "etc/systemd/system/smbdd.service"
    cmds = unit_commands(unit)
    assert cmds["ExecStartPre"][1:3] == ["check-config", "/etc/smbdd/smbdd.toml"]
    args = parser().parse_args(cmds["ExecStart"][1:])  # the options the unit passes exist
    assert args.config == "/etc/smbdd/smbdd.toml" and args.log_file == "/var/log/smbdd/smbdd.log"
    assert cmds["ExecReload"] == ["/bin/kill", "-HUP", "$MAINPID"]
    helper = tmp_path / "usr/local/lib/smbdd/rxe-link.sh"
    rxe = unit_commands(tmp_path / "etc/systemd/system/smbdd-rxe@.service")
    assert rxe["ExecStart"] == ["/usr/local/lib/smbdd/rxe-link.sh", "up", "%i"] and helper.stat().st_mode & 0o111
    assert (tmp_path / "etc/logrotate.d/smbdd").read_text().count("/var/log/smbdd/smbdd.log") == 1
    assert (tmp_path / "etc/smbdd/smbdd.toml").exists()


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_systemd_accepts_the_units(tmp_path):
    # Point the units at this checkout's files, which exist here, and let systemd check the rest.
    for name in ("smbdd.service", "smbdd-rxe@.service"):
        text = (REPO / "deploy/systemd" / name).read_text()
        text = text.replace("/opt/smbdd/venv/bin/smbdd", shutil.which("true") or "/bin/true")
        text = text.replace("/usr/local/lib/smbdd/rxe-link.sh", str(REPO / "deploy/rxe-link.sh"))
        (tmp_path / name.replace("@", "@lo")).write_text(text)
    r = subprocess.run(["systemd-analyze", "verify", str(tmp_path / "smbdd.service"),
                        str(tmp_path / "smbdd-rxe@lo.service")], capture_output=True, text=True, timeout=60)
    problems = [l for l in (r.stdout + r.stderr).splitlines() if "smbdd" in l]
    assert not problems, problems


def test_rxe_helper_usage_error():
    r = subprocess.run([str(REPO / "deploy/rxe-link.sh"), "sideways", "lo"], capture_output=True, text=True)
    assert r.returncode == 2 and "usage" in r.stderr


def test_log_file_is_reopened_after_rotation(tmp_path):
    log = tmp_path / "smbdd.log"
    srv = Smbdd(tmp_path, "--log-file", str(log))
    try:
        def client():
            r = subprocess.run(["smbclient", "-s", "/dev/null", "//127.0.0.1/data", "-p", str(srv.port),
                                "-U", f"{USER}%{PASSWORD}", "-m", "SMB3_11", "-c", "ls"],
                               capture_output=True, text=True, timeout=60)
            assert r.returncode == 0, r.stdout + r.stderr
        client()
        assert wait_until(lambda: "worker[" in log.read_text() and "smbdd smbdd" in log.read_text(), 10)
        log.rename(tmp_path / "smbdd.log.1")  # what logrotate does
        client()
        assert wait_until(lambda: log.exists() and "worker[" in log.read_text() and "serves client" in log.read_text(),
                          10)
    finally:
        srv.stop()
