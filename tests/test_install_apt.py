"""deploy/install-apt.sh, the apt step of `./dev.sh serve|test`, against stand-ins for dpkg and apt.

A fresh Debian 12 machine is one whose dpkg has never heard of most of the packages: the stand-in
`dpkg-query` knows only what the stand-in `apt-get install` "installed" (a JSON file of name ->
version), and exits non-zero for every unknown name as the real one does.  The stand-in `apt-cache`
answers `policy` and `madison` from a table of what the archive offers.  Each test checks what
the script asked apt to do, and its exit status and message.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "deploy" / "install-apt.sh"
KVER = "6.1.0-56-amd64"
IMAGE_VERSION = "6.1.192-2"

# dpkg-query -W -f=FORMAT NAME...: a line per installed name, an error line and exit 1 for others.
FAKE_DPKG_QUERY = r'''
import json, os, sys
args = sys.argv[1:]
if os.environ.get("FAKE_DPKG_BROKEN"):
    sys.exit(2)
fmt = next(a[3:] for a in args if a.startswith("-f="))
names = [a for a in args if not a.startswith("-")]
db = json.load(open(os.environ["FAKE_DB"]))
rc = 0
for n in names:
    if n in db:
        line = (fmt.replace("${Package}", n).replace("${Version}", db[n])
                .replace("${db:Status-Status}", "installed").replace("\\n", "\n"))
        sys.stdout.write(line)
    else:
        print(f"dpkg-query: no packages found matching {n}", file=sys.stderr)
        rc = 1
sys.exit(rc)
'''

# apt-get update | install -y ... NAME[=VERSION]...: logs the call; install records the names
# in the fake dpkg database unless told to fail or to do nothing.
FAKE_APT_GET = r'''
import json, os, sys
args = sys.argv[1:]
with open(os.environ["FAKE_LOG"], "a") as log:
    log.write(json.dumps({"argv": args, "policy_rc_d": os.path.exists(os.environ["SMBDD_POLICY_RC_D"])}) + "\n")
if args and args[0] == "install":
    names = [a for a in args[1:] if not a.startswith("-") and not a.startswith("Dpkg::")]
    archive = json.load(open(os.environ["FAKE_ARCHIVE"]))
    bad = [n for n in names if n.split("=")[0] not in archive]
    if bad:
        print(f"E: Unable to locate package {bad[0]}", file=sys.stderr)
        sys.exit(100)
    if os.environ.get("FAKE_APT_NOOP"):
        sys.exit(0)
    db = json.load(open(os.environ["FAKE_DB"]))
    for n in names:
        name, _, version = n.partition("=")
        db[name] = version or archive[name][0]
    json.dump(db, open(os.environ["FAKE_DB"], "w"))
'''

# apt-cache policy NAME / madison NAME from the archive table (name -> versions, newest first).
FAKE_APT_CACHE = r'''
import json, os, sys
verb, name = sys.argv[1], sys.argv[2]
archive = json.load(open(os.environ["FAKE_ARCHIVE"]))
versions = archive.get(name, [])
if verb == "policy":
    print(f"{name}:\n  Installed: (none)\n  Candidate: {versions[0] if versions else '(none)'}")
elif verb == "madison":
    for v in versions:
        print(f"{name:>20} | {v} | http://deb.debian.org/debian-security bookworm-security/main amd64 Packages")
'''


def package_list() -> list[str]:
    out = subprocess.run(["bash", str(SCRIPT), "--list"], capture_output=True, text=True, check=True,
                         env=dict(os.environ, SMBDD_LAB_KVER=KVER))
    return out.stdout.split()


def default_archive() -> dict[str, list[str]]:
    archive = {p: ["1.0-1"] for p in package_list()}
    archive[f"linux-image-{KVER}"] = [IMAGE_VERSION]
    # The newest source belongs to the next ABI, as in bookworm-security at the time of writing.
    archive["linux-source-6.1"] = ["6.1.192-3", IMAGE_VERSION, "6.1.192-1"]
    return archive


class FakeMachine:
    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.bin = tmp / "bin"
        self.bin.mkdir()
        for name, body in (("dpkg-query", FAKE_DPKG_QUERY), ("apt-get", FAKE_APT_GET),
                           ("apt-cache", FAKE_APT_CACHE)):
            path = self.bin / name
            path.write_text(f"#!{sys.executable}\n{body}")
            path.chmod(0o755)
        self.db = tmp / "dpkg.json"
        self.archive = tmp / "archive.json"
        self.log = tmp / "apt.log"
        self.policy = tmp / "policy-rc.d"
        self.installed({})
        self.offers(default_archive())

    def installed(self, db: dict[str, str]) -> None:
        self.db.write_text(json.dumps(db))

    def offers(self, archive: dict[str, list[str]]) -> None:
        self.archive.write_text(json.dumps(archive))

    def run(self, **env) -> subprocess.CompletedProcess:
        full = dict(os.environ, PATH=f"{self.bin}:{os.environ['PATH']}", FAKE_DB=str(self.db),
                    FAKE_ARCHIVE=str(self.archive), FAKE_LOG=str(self.log),
                    SMBDD_POLICY_RC_D=str(self.policy), SMBDD_LAB_KVER=KVER, **env)
        return subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, env=full, timeout=60)

    def apt_calls(self) -> list[dict]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]

    def install_requests(self) -> list[list[str]]:
        return [[a for a in c["argv"][1:] if not a.startswith("-") and not a.startswith("Dpkg::")]
                for c in self.apt_calls() if c["argv"][0] == "install"]


@pytest.fixture
def machine(tmp_path):
    return FakeMachine(tmp_path)


def everything_installed() -> dict[str, str]:
    db = {p: "1.0-1" for p in package_list()}
    db[f"linux-image-{KVER}"] = IMAGE_VERSION
    db["linux-source-6.1"] = IMAGE_VERSION
    return db


def test_a_fresh_machine_gets_every_package_installed(machine):
    result = machine.run()
    assert result.returncode == 0, result.stderr
    calls = machine.apt_calls()
    assert [c["argv"][0] for c in calls] == ["update", "install"]
    (request,) = machine.install_requests()
    wanted = package_list()
    assert {r.split("=")[0] for r in request} == set(wanted)
    assert f"missing {len(wanted)} of {len(wanted)}" in result.stdout
    # Every package the lab build needs from a minimal Debian 12 is on the list.
    for needed in ("samba", "smbclient", "python3-pyverbs", "python3-venv", "gcc", "make", "xz-utils",
                   f"linux-headers-{KVER}", f"linux-image-{KVER}", "qemu-system-x86", "file"):
        assert needed in wanted


def test_the_kernel_source_is_pinned_to_the_lab_kernels_version(machine):
    machine.run()
    (request,) = machine.install_requests()
    assert f"linux-source-6.1={IMAGE_VERSION}" in request


def test_nothing_is_asked_of_apt_when_everything_is_installed(machine):
    machine.installed(everything_installed())
    result = machine.run()
    assert result.returncode == 0, result.stderr
    assert machine.apt_calls() == []
    assert f"all {len(package_list())} apt packages present" in result.stdout


def test_only_the_missing_package_is_installed(machine):
    db = everything_installed()
    del db["samba"]
    machine.installed(db)
    result = machine.run()
    assert result.returncode == 0, result.stderr
    assert machine.install_requests() == [["samba"]]


def test_a_source_of_another_kernel_counts_as_missing(machine):
    db = everything_installed()
    db["linux-source-6.1"] = "6.1.192-3"
    machine.installed(db)
    result = machine.run()
    assert result.returncode == 0, result.stderr
    assert machine.install_requests() == [[f"linux-source-6.1={IMAGE_VERSION}"]]


def test_a_check_that_cannot_run_installs_everything(machine):
    machine.installed(everything_installed())
    result = machine.run(FAKE_DPKG_BROKEN="1")
    # The re-check after installing cannot run either, so the script cannot say it succeeded.
    assert result.returncode != 0
    (request,) = machine.install_requests()
    assert {r.split("=")[0] for r in request} == set(package_list())


def test_a_package_apt_does_not_have_is_named(machine):
    archive = default_archive()
    del archive["perftest"]
    machine.offers(archive)
    result = machine.run()
    assert result.returncode != 0
    assert "step apt-get install failed" in result.stderr
    assert "perftest" in result.stderr.split("no candidate for:")[1]


def test_an_install_that_installs_nothing_is_not_reported_as_present(machine):
    result = machine.run(FAKE_APT_NOOP="1")
    assert result.returncode != 0
    assert "left these not installed" in result.stderr
    assert "samba" in result.stderr


def test_no_daemon_may_start_during_the_install(machine):
    machine.run()
    install = [c for c in machine.apt_calls() if c["argv"][0] == "install"]
    assert install and install[0]["policy_rc_d"], "policy-rc.d must forbid starting smbd during apt-get install"
    # ...and the file written for the install is gone after it.
    assert not machine.policy.exists()


def test_an_existing_policy_rc_d_is_left_alone(machine):
    machine.policy.write_text("#!/bin/sh\nexit 0\n")
    machine.run()
    assert machine.policy.read_text() == "#!/bin/sh\nexit 0\n"
