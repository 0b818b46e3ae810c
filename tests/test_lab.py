"""Host side of the soft-RoCE lab.

* ``lab``-marked tests boot the QEMU VM (deploy/lab/vm-run.sh via tests/lab/run.sh), run the
  in-VM tests of tests/lab there and fail unless every one of them passed.  They skip only when
  the machine cannot run the VM at all (no qemu or no guest kernel image).  On a kernel with
  RDMA, vm-run.sh runs them natively instead (checked by running vm-run.sh inside the VM).
* The other tests check smbdd.rdma.verbs pieces that need no RDMA: sysfs discovery on a fake
  tree, the ctypes mirror of the librdmacm/libibverbs ABI, and that importing it is lazy.
"""
import json
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from smbdd.rdma import verbs

REPO = Path(__file__).resolve().parents[1]
KVER = os.environ.get("SMBDD_LAB_KVER", "6.1.0-56-amd64")
KERNEL = Path(f"/boot/vmlinuz-{KVER}")


def _native_lab() -> bool:
    """vm-run.sh's own test: this kernel is the lab's and has soft-RoCE, so no VM is needed."""
    if os.environ.get("SMBDD_LAB_NATIVE") in ("0", "1"):
        return os.environ["SMBDD_LAB_NATIVE"] == "1"
    return os.uname().release == KVER and subprocess.run(
        ["modprobe", "-n", "-q", "rdma_rxe"], capture_output=True).returncode == 0


def _require_vm():
    if _native_lab():
        return
    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip("lab VM unavailable: qemu-system-x86_64 not installed (apt: qemu-system-x86)")
    if not KERNEL.exists():
        pytest.skip(f"lab VM unavailable: no guest kernel {KERNEL} (apt: linux-image-{KVER})")


def _head(path: Path, limit: int) -> str:
    if not path.exists():
        return ""
    text = path.read_text(errors="replace")
    return f"--- {path.name}\n" + (text if len(text) <= limit else text[:limit] + "\n[...]\n")


def _report(capsys, text):
    with capsys.disabled():
        print("\n" + text)


@pytest.mark.lab
@pytest.mark.timeout(1800)
def test_lab_vm_runs_in_vm_tests(tmp_path, capsys):
    _require_vm()
    out = tmp_path / "lab"
    env = dict(os.environ, SMBDD_LAB_OUT=str(out), SMBDD_LAB_PYTHON=sys.executable)
    proc = subprocess.run([str(REPO / "tests/lab/run.sh")], env=env, stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=1700)
    # What the in-VM conftest recorded as it went comes first: the end of the console log only
    # shows which test was running when something went wrong.
    diag = "".join(_head(out / name, 5000) for name in ("kernel-oops.txt", "failures.txt"))
    log_tail = diag + proc.stdout[-4000:]
    junit = out / "junit.xml"
    assert junit.exists(), f"in-VM pytest produced no report (exit {proc.returncode}):\n{log_tail}"
    suite = ET.parse(junit).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    cases = [(c.get("classname"), c.get("name"), [x.tag for x in c]) for c in suite.iter("testcase")]
    summary = [f"lab: in-VM tests {counts}"]
    for name in ("timings.txt",):
        if (out / name).exists():
            summary.append((out / name).read_text().strip())
    lat = out / "ib_send_lat.txt"
    if lat.exists():
        summary += [line for line in lat.read_text().splitlines() if line.strip().startswith("64 ")]
    if (out / "lab-results.json").exists():
        summary.append((out / "lab-results.json").read_text())
    _report(capsys, "\n".join(summary))
    assert counts["tests"] >= 8, f"too few in-VM tests ran: {cases}"
    bad = [c for c in cases if c[2]]
    assert proc.returncode == 0 and not bad, f"in-VM failures/skips {bad}, exit {proc.returncode}:\n{log_tail}"


@pytest.mark.lab
@pytest.mark.timeout(600)
def test_vm_run_propagates_exit_status_without_a_terminal(tmp_path):
    _require_vm()
    out = tmp_path / "vm"
    env = dict(os.environ, SMBDD_LAB_OUT=str(out), SMBDD_LAB_NO_CIFS="1",
               SMBDD_LAB_PYTHON=sys.executable)
    # No stdin, no controlling terminal (start_new_session), as CI runs it.
    proc = subprocess.run([str(REPO / "deploy/lab/vm-run.sh"),
                           'test -e /sys/class/infiniband/rxe0 && echo inside > "$LAB_OUT/mark"; exit 7'],
                          env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=550, start_new_session=True)
    assert proc.returncode == 7, proc.stdout[-3000:]
    assert (out / "mark").read_text().strip() == "inside"
    assert (out / "console.log").exists()


@pytest.mark.lab
@pytest.mark.timeout(600)
def test_vm_run_runs_natively_on_a_kernel_with_rdma(tmp_path):
    """On a machine whose own kernel has RDMA (Debian's, with rdma_rxe) vm-run.sh runs CMD there,
    with no VM. The lab VM is such a machine: vm-run.sh called inside it must take that path
    (auto-detected), set up rxe0 and hand back CMD's status."""
    _require_vm()
    out = tmp_path / "vm"
    env = dict(os.environ, SMBDD_LAB_OUT=str(out), SMBDD_LAB_NO_CIFS="1", SMBDD_LAB_PYTHON=sys.executable)
    nested = ('SMBDD_LAB_OUT="$LAB_OUT/native" SMBDD_LAB_NO_CIFS=1 SMBDD_LAB_PYTHON="$LAB_PYTHON" '
              '"$LAB_REPO/deploy/lab/vm-run.sh" '
              "'test -e /sys/class/infiniband/rxe0 && echo native >\"$LAB_OUT/mark\"; exit 5'; "
              'echo "nested exit $?" >"$LAB_OUT/mark"; exit 0')
    proc = subprocess.run([str(REPO / "deploy/lab/vm-run.sh"), nested], env=env, stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=550,
                          start_new_session=True)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert (out / "mark").read_text().strip() == "nested exit 5", proc.stdout[-3000:]
    assert (out / "native" / "mark").read_text().strip() == "native"
    timings = (out / "native" / "timings.txt").read_text()
    assert "native_total_s" in timings and "vm_boot_s" not in timings, timings  # no VM inside the VM


# ---- no RDMA needed ---------------------------------------------------------------------------

def _fake_device(root: Path, name: str, node_type: str, link_layer: str, gids: dict[int, tuple[str, str]]):
    port = root / name / "ports" / "1"
    (port / "gids").mkdir(parents=True)
    (port / "gid_attrs" / "ndevs").mkdir(parents=True)
    (root / name / "node_type").write_text(node_type + "\n")
    (port / "link_layer").write_text(link_layer + "\n")
    for idx, (gid, ndev) in gids.items():
        (port / "gids" / str(idx)).write_text(gid + "\n")
        (port / "gid_attrs" / "ndevs" / str(idx)).write_text(ndev + "\n")


def test_discovery_roce_addresses_from_gid_table(tmp_path):
    # GID table as rxe0 shows it in the lab VM for veth0 = 10.77.0.1 (RoCE v1 and v2 entries).
    _fake_device(tmp_path, "rxe0", "1: CA", "Ethernet", {
        0: ("fe80:0000:0000:0000:5c1e:0aff:fe3f:1a2b", "veth0"),
        1: ("fe80:0000:0000:0000:5c1e:0aff:fe3f:1a2b", "veth0"),
        2: ("0000:0000:0000:0000:0000:ffff:0a4d:0001", "veth0"),
        3: ("0000:0000:0000:0000:0000:ffff:0a4d:0001", "veth0"),
    })
    assert verbs.list_devices(tmp_path) == ["rxe0"]
    info = verbs.describe_device("rxe0", tmp_path)
    assert info.transport == "roce"
    assert info.smbd_port == 445
    assert info.netdevs == ("veth0",)
    assert info.addresses == ("fe80::5c1e:aff:fe3f:1a2b", "10.77.0.1")


def test_discovery_iwarp_uses_port_5445_and_netdev_addresses(tmp_path):
    _fake_device(tmp_path, "siw0", "4: RNIC", "Ethernet", {0: ("0202:0202:0202:0000:0000:0000:0000:0000", "lo")})
    info = verbs.describe_device("siw0", tmp_path)
    assert info.transport == "iwarp"
    assert info.smbd_port == 5445
    assert "127.0.0.1" in info.addresses  # read from the real "lo" via SIOCGIFADDR


def test_discovery_without_rdma(tmp_path):
    assert verbs.list_devices(tmp_path / "missing") == []


def test_ctypes_abi_matches_rdma_core_headers():
    """Sizes/offsets printed by gcc with Debian's librdmacm-dev/libibverbs-dev 44.0-2 headers
    (offsetof/sizeof); the ctypes mirror must agree or rdma_init_qp_attr would write out of
    bounds and events would be misread."""
    import ctypes
    assert ctypes.sizeof(verbs._IbvQpAttr) == 144
    assert verbs._IbvQpAttr.ah_attr.offset == 56
    assert verbs._IbvQpAttr.pkey_index.offset == 120
    assert verbs._IbvQpAttr.max_rd_atomic.offset == 126
    assert ctypes.sizeof(verbs._IbvAhAttr) == 32
    assert verbs._RdmaCmId.route.offset == 32
    assert verbs._RdmaCmId.route.offset + verbs._RdmaRoute.addr.offset + verbs._RdmaAddr.dst.offset == 160
    assert verbs._RdmaCmId.ps.offset == 344 and verbs._RdmaCmId.port_num.offset == 348
    assert verbs._RdmaCmEvent.conn.offset == 24
    assert ctypes.sizeof(verbs._RdmaConnParam) == 24 and verbs._RdmaConnParam.qp_num.offset == 16


def test_sockaddr_encoding():
    raw = bytes(verbs._sockaddr("10.77.0.1", 445))
    assert raw[:8] == bytes([2, 0, 0x01, 0xBD, 10, 77, 0, 1])
    raw6 = bytes(verbs._sockaddr("fe80::1", 5445))
    assert raw6[:4] == bytes([10, 0, 0x15, 0x45]) and raw6[8:24] == bytes.fromhex("fe80" + "00" * 13 + "01")
    storage = verbs._SockaddrStorage()
    import ctypes
    ctypes.memmove(ctypes.byref(storage), verbs._sockaddr("10.77.0.1", 445), 128)
    assert verbs._sockaddr_to_str(storage) == ("10.77.0.1", 445)


def test_gid_text_form_is_what_pyverbs_parses():
    raw = bytes.fromhex("00000000000000000000ffff0a4d0001")
    assert verbs._gid_str(raw) == "0000:0000:0000:0000:0000:ffff:0a4d:0001"


def test_import_is_lazy():
    code = "import sys, smbdd.rdma.verbs; print('pyverbs' in sys.modules)"
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert res.stdout.strip() == "False"


def _lab_conftest():
    import importlib.util
    spec = importlib.util.spec_from_file_location("lab_conftest", REPO / "tests/lab/conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# The guest's log from a lab run that failed (trimmed): a warning of the unpatched cifs.ko 6.1
# at umount (its receive queue refilled after the flush), then the NULL dereference that
# build-cifs.sh now patches away.
_GUEST_DMESG = """\
[  101.957877] ------------[ cut here ]------------
[  101.957981] failed to drain recv queue: -12
[  101.958564] WARNING: CPU: 0 PID: 332 at drivers/infiniband/core/verbs.c:2824 __ib_drain_rq+0x1be/0x1d0 [ib_core]
[  101.963676] ---[ end trace 0000000000000000 ]---
[  200.359622] CIFS: VFS: RDMA transport established
[  201.088780] BUG: kernel NULL pointer dereference, address: 0000000000000000
[  201.089727] Oops: 0000 [#1] PREEMPT SMP NOPTI
[  201.090060] Workqueue: smbd_000000002ac6cc08 smbd_post_send_credits [cifs]
[  201.090318] RIP: 0010:smbd_post_recv+0x13e/0x250 [cifs]
[  212.379110] CIFS: Attempting to mount \\\\10.77.0.1\\data
"""


def test_lab_kernel_bug_check_sees_oopses_not_warnings():
    """The in-VM conftest fails a test during which the guest kernel oopsed: a bug logged after
    the test began counts, with the lines around it; warnings and older bugs do not."""
    lab = _lab_conftest()
    assert lab.last_stamp(_GUEST_DMESG) == 212.379110
    assert lab.last_stamp("no stamps\n") == -1.0
    assert lab.kernel_bug_since(_GUEST_DMESG, 100.0).splitlines()[3].startswith("[  201.088780] BUG: kernel NULL")
    assert "smbd_post_recv" in lab.kernel_bug_since(_GUEST_DMESG, 100.0)
    assert lab.kernel_bug_since(_GUEST_DMESG.split("[  200.")[0], 100.0) is None  # the warning alone
    assert lab.kernel_bug_since(_GUEST_DMESG, 201.5) is None  # logged before the test began
