"""smbdd over SMB Direct with the Linux kernel's own client (cifs.ko built with SMB Direct),
in the lab VM on soft-RoCE (rxe0). Runs inside the VM (tests/lab/run.sh).

Every transfer is checked byte for byte (sha256) on the server's disk and read back through
the mount; the proxy's own per-connection counters (logged when a connection closes) show
whether payloads moved by RDMA read/write or inline.
"""
from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SERVER = "10.77.0.1"
TCP_ONLY = "10.77.0.2"  # veth1's address: no RDMA there (deploy/lab/vm-setup.sh)
USER, PASSWORD = "labuser", "lab-pass-1"
CLOSED = re.compile(r"\('10\.77\.0\.1', (\d+)\): SMB Direct connection closed(?: \((.*?)\))?: (\d+) messages in, "
                    r"(\d+) out, RDMA reads (\d+), RDMA writes (\d+) \((\d+) bytes\), sends with invalidate (\d+)")
pytestmark = pytest.mark.skipif(not Path("/proc/fs/cifs/DebugData").exists()
                                or "SMB_DIRECT" not in Path("/proc/fs/cifs/DebugData").read_text(),
                                reason="cifs.ko with SMB Direct is not loaded")


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(4 << 20):
            h.update(chunk)
    return h.hexdigest()


def run(*cmd: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check and r.returncode:
        raise AssertionError(f"{' '.join(cmd)} -> {r.returncode}: {r.stdout}{r.stderr}")
    return r


class LabServer:
    """smbdd in the VM: the share ``data`` at root/share, TCP on 127.0.0.1 and on veth1's
    TCP-only address (vm-setup.sh), SMB Direct on rxe0 unless ``rdma`` is False."""

    def __init__(self, root: Path, *extra: str, rdma: bool = True, port: int = 4455, name: str = "smbdd-rdma"):
        self.share = root / "share"
        self.share.mkdir(parents=True, exist_ok=True)
        self.port = port
        self.log_path = Path(os.environ.get("LAB_OUT", root)) / f"{name}.log"
        self.command = [sys.executable, "-m", "smbdd.cli", "--share", f"data={self.share}",
                        "--user", f"{USER}:{PASSWORD}", "--listen", "127.0.0.1", "--listen", TCP_ONLY,
                        "--port", str(port), "--spare-workers", "2", "--unix-identity", "daemon",
                        *(["--device", "rxe0"] if rdma else ["--no-rdma"]), *extra]
        self.rdma = rdma
        self._log = open(self.log_path, "w")
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen(self.command, stdout=self._log, stderr=subprocess.STDOUT, cwd=REPO)
        mark = "SMB Direct on rxe0" if self.rdma else "smbdd: serving"
        before = self.log().count(mark)
        self.wait_for(lambda log: log.count(mark) > before, 240, f"smbdd to log {mark!r}")

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text()

    def wait_for(self, cond, timeout: float, what: str) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise AssertionError(f"smbdd exited ({self.proc.returncode}) waiting for {what}:\n{self.log()[-3000:]}")
            if cond(self.log()):
                return
            time.sleep(0.5)
        raise AssertionError(f"timed out waiting for {what}:\n{self.log()[-3000:]}")

    def wait_spare(self) -> None:
        """Python starts slowly under emulation: mount only once a started worker is idle,
        or cifs.ko gives up on NEGOTIATE after 30 s."""
        def spare(log: str) -> bool:
            return len(re.findall(r"worker \d+ ready", log)) > len(re.findall(r"worker \d+ serves client", log))
        self.wait_for(spare, 300, "a ready spare worker")

    def closed_connections(self) -> list[dict]:
        keys = ("port", "reason", "msgs_in", "msgs_out", "rdma_reads", "rdma_writes", "rdma_bytes", "invalidate")
        out = []
        for m in CLOSED.finditer(self.log()):
            d = dict(zip(keys, m.groups()))
            out.append({k: (int(v) if k not in ("reason",) and v is not None else v) for k, v in d.items()})
        return out

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self._log.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = LabServer(tmp_path_factory.mktemp("smbdd-rdma"))
    yield srv
    srv.stop()


class Mount:
    def __init__(self, server: LabServer, vers: str, *opts: str, name: str = "m"):
        self.server = server
        self.path = Path(f"/tmp/mnt-{name}-{vers}")
        self.path.mkdir(exist_ok=True)
        self.before = len(server.closed_connections())
        server.wait_spare()
        options = ",".join(["rdma", f"vers={vers}", f"username={USER}", f"password={PASSWORD}", "cache=none", *opts])
        run("mount", "-t", "cifs", f"//{SERVER}/data", str(self.path), "-o", options, timeout=180)
        assert "RDMA" in Path("/proc/fs/cifs/DebugData").read_text()

    def umount(self) -> dict:
        """Unmount; returns the proxy's counters for this mount's connection."""
        run("umount", str(self.path), timeout=120)
        def own() -> list[dict]:
            return [c for c in self.server.closed_connections()[self.before:] if c["reason"] != "worker gone"]
        self.server.wait_for(lambda _: own(), 60, "the proxy to close the connection")
        # One mount, one connection: a client that had to reconnect hit an error it hid.
        # (A channel of another mount whose worker a test killed may close meanwhile.)
        closed = own()
        assert len(closed) == 1, closed
        return closed[-1]


def make_file(path: Path, size: int) -> str:
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 4 << 20)
            f.write(os.urandom(n))
            left -= n
    return sha256(path)


SIZES = [1, 4095, 4096, 65537, (1 << 20) + 7, 8 << 20]


# 3.0 is the dialect where cifs.ko sends RDMA_V1 and invalidates its own registrations; 3.0.2 and
# 3.1.1 ask for RDMA_V1_INVALIDATE (remote invalidation by SEND_WITH_INVALIDATE).
VERSIONS = ["3.1.1", "3.0.2", "3.0"]


@pytest.mark.parametrize("vers", VERSIONS)
def test_files_roundtrip_over_rdma(server, tmp_path, vers, lab_results):
    big = 256 << 20 if vers == "3.1.1" else 32 << 20
    m = Mount(server, vers, name="rt")
    t_write = t_read = 0.0
    try:
        for size in SIZES + [big]:
            src = tmp_path / f"src-{size}"
            digest = make_file(src, size)
            name = f"f-{vers}-{size}.bin"
            t0 = time.monotonic()
            run("dd", f"if={src}", f"of={m.path / name}", "bs=1M", "oflag=direct", "status=none")
            t_write += time.monotonic() - t0 if size == big else 0
            assert sha256(server.share / name) == digest, f"server stored different bytes ({size})"
            src.unlink()  # the guest's /tmp is RAM: keep at most two copies of the big file
            back = tmp_path / f"back-{size}"
            t0 = time.monotonic()
            run("dd", f"if={m.path / name}", f"of={back}", "bs=1M", "iflag=direct", "status=none")
            t_read += time.monotonic() - t0 if size == big else 0
            assert sha256(back) == digest, f"client read different bytes ({size})"
            back.unlink()
        names = set(os.listdir(m.path))
        assert {f"f-{vers}-{s}.bin" for s in SIZES} <= names
        os.rename(m.path / f"f-{vers}-1.bin", m.path / f"renamed-{vers}.bin")
        assert (server.share / f"renamed-{vers}.bin").exists() and not (server.share / f"f-{vers}-1.bin").exists()
        for n in os.listdir(m.path):
            os.unlink(m.path / n)
        assert not list(server.share.iterdir())
    finally:
        stats = m.umount()
    lab_results[f"rdma_{vers}"] = {**stats, "big_mib": big >> 20, "write_MiBps": (big >> 20) / t_write,
                                   "read_MiBps": (big >> 20) / t_read}
    # Large I/O really went by RDMA: one RDMA read per >= 4 KiB write, one RDMA write per read.
    assert stats["rdma_reads"] >= (big >> 20) and stats["rdma_writes"] >= (big >> 20), stats
    assert stats["rdma_bytes"] >= 2 * big
    if vers == "3.0":
        assert stats["invalidate"] == 0, stats  # RDMA_V1: no remote invalidation
    else:
        assert stats["invalidate"] >= stats["rdma_reads"] + stats["rdma_writes"], stats


def test_compound_padding_over_rdma(server):
    """Renames whose SET_INFO member needs 0, 2, 4 and 6 bytes of compound padding.

    cifs.ko sends a rename as CREATE + SET_INFO + CLOSE; a member that is not 8-byte aligned is
    followed by a padding kvec pointing at the module's smb2_padding[]. The 6.1 client mapped
    that address with virt_to_page(), which is wrong for module memory: on rxe it read from a
    bogus address and, depending on KASLR, panicked the guest (deploy/lab/build-cifs.sh patches
    it). The SET_INFO member is 118 + 2 * len(name) bytes (header, FILE_RENAME_INFORMATION, the
    UTF-16 name and its terminator), so four consecutive name lengths give every padding size;
    the roundtrip's "renamed-3.0.bin" (148 bytes + 4 of padding) is the one that crashed.
    """
    m = Mount(server, "3.1.1", name="pad")
    try:
        (m.path / "p0").write_text("padding")
        current = "p0"
        for n in range(8, 16):
            target = f"{n:02d}" + "r" * (n - 2)
            os.rename(m.path / current, m.path / target)
            assert (server.share / target).read_text() == "padding", target
            assert not (server.share / current).exists(), current
            current = target
        os.unlink(m.path / current)
    finally:
        m.umount()


def test_client_sees_rdma_capable_interface(server):
    """FSCTL_QUERY_NETWORK_INTERFACE_INFO as the real client reads it.

    cifs.ko asks for the server's interfaces at every mount (smb3_qfs_tcon) and lists them in
    DebugData under "Server interfaces", each with "Capabilities: rdma" when the server set
    RDMA_CAPABLE (MS-SMB2 2.2.32.5). Windows clients choose their RDMA channels by that flag.
    The lab's only RDMA address is rxe0's, on veth0."""
    m = Mount(server, "3.1.1", name="ifaces")
    try:
        debug = Path("/proc/fs/cifs/DebugData").read_text()
    finally:
        m.umount()
    assert "Server interfaces:" in debug, debug
    ifaces = dict((ip, caps.split()) for caps, ip in re.findall(r"Capabilities: ([a-z ]*)\n\s*IPv4: ([\d.]+)", debug))
    assert ifaces.get(SERVER) is not None, debug
    assert "rdma" in ifaces[SERVER], ifaces


@pytest.mark.parametrize("opt", ["sign", "seal"])
def test_signed_or_sealed_sessions_go_inline(server, tmp_path, opt):
    """cifs.ko sends data inline when its session signs or encrypts (shared/LAB.md)."""
    m = Mount(server, "3.1.1", opt, name=opt)
    try:
        src = tmp_path / "src"
        digest = make_file(src, 4 << 20)
        run("dd", f"if={src}", f"of={m.path / 'x.bin'}", "bs=1M", "oflag=direct", "status=none")
        assert sha256(server.share / "x.bin") == digest
        back = tmp_path / "back"
        run("dd", f"if={m.path / 'x.bin'}", f"of={back}", "bs=1M", "iflag=direct", "status=none")
        assert sha256(back) == digest
        os.unlink(m.path / "x.bin")
    finally:
        stats = m.umount()
    assert stats["rdma_reads"] == 0 and stats["rdma_writes"] == 0, stats
    assert stats["msgs_in"] > 8, stats  # the 4 MiB went as fragmented inline messages


def test_several_processes_at_once(server, tmp_path):
    m = Mount(server, "3.1.1", name="par")
    try:
        digests = {}
        for i in range(4):
            digests[i] = make_file(tmp_path / f"p{i}", 6 << 20)
        script = ("dd if={src} of={dst} bs=1M oflag=direct status=none && "
                  "dd if={dst} of={back} bs=1M iflag=direct status=none")
        procs = [subprocess.Popen(["sh", "-c", script.format(src=tmp_path / f"p{i}", dst=m.path / f"p{i}.bin",
                                                             back=tmp_path / f"b{i}")]) for i in range(4)]
        assert all(p.wait(300) == 0 for p in procs)
        for i, d in digests.items():
            assert sha256(server.share / f"p{i}.bin") == d
            assert sha256(tmp_path / f"b{i}") == d
            os.unlink(m.path / f"p{i}.bin")
    finally:
        m.umount()


def test_unmount_mid_transfer_frees_everything(server, tmp_path):
    m = Mount(server, "3.1.1", name="cut")
    src = tmp_path / "src"
    make_file(src, 64 << 20)
    writer = subprocess.Popen(["dd", f"if={src}", f"of={m.path / 'cut.bin'}", "bs=1M", "oflag=direct", "status=none"])
    time.sleep(3)
    writer.kill()
    run("umount", "-f", "-l", str(m.path), check=False)
    server.wait_for(lambda _: len(server.closed_connections()) > m.before, 120, "the cut connection to close")
    server.wait_for(lambda log: re.search(r"pool: 0 of \d+ slots in use", log) is not None, 60, "slots freed")
    writer.wait(60)
    # The proxy goes on: a new mount works.
    again = Mount(server, "3.1.1", name="after-cut")
    try:
        (again.path / "ok.txt").write_text("still serving")
        assert (server.share / "ok.txt").read_text() == "still serving"
        os.unlink(again.path / "ok.txt")
        if (again.path / "cut.bin").exists():
            os.unlink(again.path / "cut.bin")
    finally:
        again.umount()


def test_worker_killed_other_client_goes_on(server, tmp_path):
    a = Mount(server, "3.1.1", name="victim")
    (a.path / "a.txt").write_text("a")
    pids = [int(p) for p in re.findall(r"worker (\d+) serves client", server.log())]
    victim = pids[-1]
    b = Mount(server, "3.0.2", name="survivor")
    try:
        os.kill(victim, signal.SIGKILL)
        server.wait_for(lambda log: f"worker {victim} for client" in log, 60, "the supervisor to see the crash")
        src = tmp_path / "src"
        digest = make_file(src, 8 << 20)
        run("dd", f"if={src}", f"of={b.path / 'b.bin'}", "bs=1M", "oflag=direct", "status=none")
        assert sha256(server.share / "b.bin") == digest
        server.wait_for(lambda log: "connection closed (worker gone)" in log, 60, "the proxy to drop the dead channel")
        os.unlink(b.path / "b.bin")
        os.unlink(server.share / "a.txt")
    finally:
        b.umount()
        run("umount", "-f", "-l", str(a.path), check=False)


@pytest.mark.parametrize("mode", ["bad-version", "zero-credits", "bad-offset", "oversize", "no-credit"])
def test_malformed_smbdirect_messages_end_only_that_connection(server, mode):
    before = len(server.closed_connections())
    r = run(sys.executable, str(Path(__file__).with_name("smbd_raw_client.py")), SERVER, "445", mode,
            timeout=120, check=False)
    server.wait_for(lambda _: len(server.closed_connections()) > before, 60, f"the {mode} connection to close")
    closed = server.closed_connections()[-1]
    assert closed["reason"] and ("protocol error" in closed["reason"] or "disconnected" in closed["reason"]), closed
    if mode == "bad-version":
        assert '"response_status": 3221225659' in r.stdout, r.stdout  # STATUS_NOT_SUPPORTED
    assert server.proc.poll() is None
    # And the server still serves a real client.
    m = Mount(server, "3.1.1", name=f"after-{mode}")
    try:
        (m.path / "ok").write_text(mode)
        assert (server.share / "ok").read_text() == mode
        os.unlink(m.path / "ok")
    finally:
        m.umount()
