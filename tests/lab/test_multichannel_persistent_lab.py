"""Multichannel and persistent handles with the Linux kernel's client (cifs.ko), in the lab VM.

- multichannel,max_channels=4 over TCP (to veth1's TCP-only address) and over SMB Direct (rxe0):
  /proc/fs/cifs/DebugData lists the extra channels, 256 MiB go there and back byte-identical,
  and one channel is cut in the middle of the transfer without a byte lost (TCP: ss -K; SMB
  Direct: smbdd's test hook disconnects the newest queue pair);
- a continuously available share mounted with persistenthandles: one process keeps writing one
  file while smbdd's worker, and then smbdd itself, are killed with -9 and smbdd starts again;
  the process sees no error and the file on the server is what it wrote.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from test_smbdd_rdma import PASSWORD, SERVER, TCP_ONLY, USER, LabServer, make_file, run, sha256

pytestmark = pytest.mark.skipif(not Path("/proc/fs/cifs/DebugData").exists(), reason="cifs.ko is not loaded")
BIG = 256 << 20
CHANNELS = 4


def debug_data() -> str:
    return Path("/proc/fs/cifs/DebugData").read_text()


def extra_channels(debug: str) -> int:
    """The largest "Extra Channels: N" of the mounted sessions (cifs_debug.c)."""
    return max((int(n) for n in re.findall(r"Extra Channels: (\d+)", debug)), default=0)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    # --smbtorture-fsctl: SIGUSR2 makes the proxy cut its newest SMB Direct connection.
    srv = LabServer(tmp_path_factory.mktemp("smbdd-mc"), "--smbtorture-fsctl", port=4457, name="smbdd-multichannel")
    yield srv
    srv.stop()


def mount(server: LabServer, path: Path, address: str, *opts: str, cache: str = "none") -> None:
    """Over TCP on the server's port; with ``rdma`` cifs.ko tries rdma_cm's 5445, then 445."""
    path.mkdir(exist_ok=True)
    server.wait_spare()
    port = [] if "rdma" in opts else [f"port={server.port}"]
    options = ",".join([*port, "vers=3.1.1", f"username={USER}", f"password={PASSWORD}",
                        f"cache={cache}", *opts])
    run("mount", "-t", "cifs", f"//{address}/data", str(path), "-o", options, timeout=180)


def wait_channels(want: int, timeout: float = 120) -> str:
    """cifs.ko opens the extra channels just after the mount; give it the time the VM needs."""
    end = time.monotonic() + timeout
    while True:
        debug = debug_data()
        if extra_channels(debug) >= want or time.monotonic() > end:
            return debug
        time.sleep(1)


def cut_one_channel(port: int) -> bool:
    """Destroy one of the client's TCP connections to ``port`` (not the first), as a cable pull
    would end it: ss -K aborts the socket and the server sees a reset."""
    out = run("ss", "-Htn", "state", "established", "dst", TCP_ONLY, "dport", "=", f":{port}").stdout
    sports = sorted(int(m) for m in re.findall(rf"{re.escape(TCP_ONLY)}:(\d+)\s+{re.escape(TCP_ONLY)}:{port}\b", out))
    if len(sports) < 2:
        return False
    run("ss", "-K", "dst", TCP_ONLY, "dport", "=", f":{port}", "sport", "=", f":{sports[-1]}")
    return True


def cut_one_rdma_channel(server: LabServer) -> bool:
    """Disconnect the newest of the mount's SMB Direct connections (an extra channel) from the
    server's side, as a failed link would end it. A queue pair has no ss -K, and rxe loops
    local traffic back past any packet filter: smbdd's test hook does it (SIGUSR2)."""
    before = server.log().count("cut by the test hook")
    server.proc.send_signal(signal.SIGUSR2)
    server.wait_for(lambda log: log.count("cut by the test hook") > before, 30, "the proxy to cut a channel")
    return True


@pytest.mark.parametrize("transport", ["tcp", "rdma"])
def test_multichannel_256_mib_there_and_back(server, tmp_path, transport, lab_results):
    mnt = Path(f"/tmp/mnt-mc-{transport}")
    address = TCP_ONLY if transport == "tcp" else SERVER
    mount(server, mnt, address, "multichannel", f"max_channels={CHANNELS}", "hard",
          *(["rdma"] if transport == "rdma" else []))
    try:
        debug = wait_channels(CHANNELS - 1)
        channels = extra_channels(debug)
        lab_results[f"multichannel_{transport}_extra_channels"] = channels
        assert channels == CHANNELS - 1, debug[-3000:]
        closed_before = len(server.closed_connections())
        src = tmp_path / "src"
        digest = make_file(src, BIG)
        # Halfway through the write, one channel is cut; cifs.ko reconnects it and resends.
        cut = {}

        def cutter():
            dest = server.share / "big.bin"
            end = time.monotonic() + 300
            while time.monotonic() < end and (not dest.exists() or dest.stat().st_size < BIG // 2):
                time.sleep(0.2)
            cut["done"] = cut_one_channel(server.port) if transport == "tcp" else cut_one_rdma_channel(server)
        t = threading.Thread(target=cutter)
        t.start()
        start = time.monotonic()
        run("dd", f"if={src}", f"of={mnt / 'big.bin'}", "bs=1M", "oflag=direct", "status=none", timeout=900)
        write_s = time.monotonic() - start
        t.join(60)
        assert cut.get("done"), "no second channel to cut"
        assert sha256(server.share / "big.bin") == digest
        # The cut channel comes back: cifs.ko reconnects it and binds it to the session again.
        debug = wait_channels(CHANNELS - 1)
        lab_results[f"multichannel_{transport}_extra_channels_after_cut"] = extra_channels(debug)
        back = tmp_path / "back"
        start = time.monotonic()
        run("dd", f"if={mnt / 'big.bin'}", f"of={back}", "bs=1M", "iflag=direct", "status=none", timeout=900)
        read_s = time.monotonic() - start
        assert sha256(back) == digest
        # smbdd status sees the mount's channels, and over SMB Direct the bytes RDMA moved.
        doc = json.loads(run(sys.executable, "-m", "smbdd.cli", "status", "--json", "--pid",
                             str(server.proc.pid)).stdout)
        channels = [ch for w in doc["workers"] for ch in w.get("channels", ())]
        want = "smbdirect" if transport == "rdma" else "tcp"
        mine = [ch for ch in channels if ch["transport"] == want]
        lab_results[f"multichannel_{transport}_status_channels"] = len(mine)
        assert len(mine) >= CHANNELS, channels
        if transport == "rdma":
            assert sum(ch["rdma"]["rdma_bytes"] for ch in mine if ch.get("rdma")) >= BIG, channels  # one cut
        lab_results[f"multichannel_{transport}_MiBps"] = {"write": round(256 / write_s, 1),
                                                           "read": round(256 / read_s, 1)}
        os.unlink(mnt / "big.bin")
    finally:
        run("umount", str(mnt), timeout=120, check=False)
        # The VM's /tmp is RAM: 512 MiB left here would starve the next tests.
        for left in (tmp_path / "src", tmp_path / "back", server.share / "big.bin"):
            left.unlink(missing_ok=True)
    if transport == "rdma":
        # The proxy logs each SMB Direct connection's counters as it closes: the channels of
        # this mount, and the payload moved by RDMA on more than one of them.
        # The channels of this mount: CHANNELS, and the one cut in the middle of the write.
        server.wait_for(lambda _: len(server.closed_connections()) >= closed_before + CHANNELS + 1, 120,
                        "the proxy to close the mount's channels")
        mine = server.closed_connections()[closed_before:]
        assert sum(1 for c in mine if c["reason"] == "cut by the test hook") == 1, mine
        lab_results["multichannel_rdma_bytes_per_channel"] = [c["rdma_bytes"] for c in mine]
        assert sum(1 for c in mine if c["rdma_bytes"] > 0) >= 2, mine
        assert sum(c["rdma_bytes"] for c in mine) >= 2 * BIG, mine


def test_lease_break_over_smb_direct_is_confirmed_by_its_send_completion(server, lab_results):
    """A file held open (with a lease: cache=strict) through an SMB Direct mount, then opened
    for writing through a TCP mount (another ClientGUID, so another worker): the break goes
    to the RDMA client as a tracked send, which the proxy confirms from the send completion of
    its last fragment (relay SENT, smbd.server.break_delivery). Both writers' data lands."""
    rdma_mnt, tcp_mnt = Path("/tmp/mnt-brk-rdma"), Path("/tmp/mnt-brk-tcp")
    closed_before = len(server.closed_connections())
    mount(server, rdma_mnt, SERVER, "rdma", cache="strict")
    holder = None
    try:
        mount(server, tcp_mnt, TCP_ONLY, cache="strict")
        try:
            holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(rdma_mnt / "leased.txt")],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            assert holder.stdout.readline().strip() == "open"
            with open(tcp_mnt / "leased.txt", "r+") as f:  # breaks the RDMA client's lease
                f.seek(0, 2)
                f.write("tcp\n")
            holder.stdin.write("go\n")
            holder.stdin.close()
            assert holder.wait(120) == 0
            assert (server.share / "leased.txt").read_text() == "rdma\ntcp\nrdma again\n"
        finally:
            run("umount", str(tcp_mnt), timeout=120, check=False)
    finally:
        if holder is not None and holder.poll() is None:
            holder.kill()
        run("umount", str(rdma_mnt), timeout=120, check=False)
    server.wait_for(lambda _: len(server.closed_connections()) > closed_before, 120, "the RDMA mount to close")
    tracked = [int(n) for n in re.findall(r"tracked sends (\d+)", server.log())]
    lab_results["tracked_break_sends"] = sum(tracked)
    assert sum(tracked) >= 1, server.log()[-3000:]
    assert "not acknowledged by the transport" not in server.log()


# The RDMA side: write, keep the file open (and leased) until told, then append again.
HOLDER = r"""
import sys
with open(sys.argv[1], "w") as f:
    f.write("rdma\n")
    f.flush()
    print("open", flush=True)
    sys.stdin.readline()
    f.seek(0, 2)
    f.write("rdma again\n")
"""


# ---- persistent handles ---------------------------------------------------------------------------

WRITER = r"""
import hashlib, os, sys, time
path, chunks, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
h = hashlib.sha256()
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
for i in range(chunks):
    block = hashlib.sha512(b"%d" % i).digest() * (size // 64)
    done = 0
    while done < len(block):
        done += os.write(fd, block[done:])
    h.update(block)
    print(i, flush=True)
    time.sleep(0.05)
os.close(fd)
print("sha256", h.hexdigest(), flush=True)
"""


def test_persistent_handle_survives_kill_9_of_worker_and_of_smbdd(tmp_path, lab_results):
    root = tmp_path / "ca"
    root.mkdir()
    config = root / "smbdd.toml"
    config.write_text(f'[shares.ca]\npath = "{root / "ca-share"}"\ncontinuous_availability = true\n')
    (root / "ca-share").mkdir()
    srv = LabServer(root, "--config", str(config), "--state-dir", str(root / "state"), rdma=False, port=4458,
                    name="smbdd-persistent")
    mnt = Path("/tmp/mnt-ca")
    mnt.mkdir(exist_ok=True)
    writer = None
    try:
        srv.wait_spare()
        options = ",".join([f"port={srv.port}", "vers=3.1.1", f"username={USER}", f"password={PASSWORD}",
                            "cache=none", "persistenthandles", "hard"])
        run("mount", "-t", "cifs", f"//{TCP_ONLY}/ca", str(mnt), "-o", options, timeout=180)
        chunks, size = 400, 64 << 10
        writer = subprocess.Popen([sys.executable, "-c", WRITER, str(mnt / "kept.bin"), str(chunks), str(size)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        progress: list[str] = []
        reader = threading.Thread(target=lambda: progress.extend(writer.stdout), daemon=True)
        reader.start()

        def wait_progress(n: int, what: str) -> None:
            end = time.monotonic() + 300
            while len(progress) < n and writer.poll() is None and time.monotonic() < end:
                time.sleep(0.2)
            if len(progress) >= n:
                return
            ended = "" if writer.poll() is None else f"writer exited {writer.returncode}: {writer.stderr.read()}; "
            raise AssertionError(f"writer stalled {what}: {len(progress)} chunks; {ended}{srv.log()[-4000:]}")

        wait_progress(50, "before the kills")
        workers = [int(p) for p in re.findall(r"worker (\d+) serves client", srv.log())]
        victim = next(p for p in reversed(workers) if Path(f"/proc/{p}").exists())
        os.kill(victim, signal.SIGKILL)
        at = len(progress)
        wait_progress(at + 50, "after kill -9 of the worker")
        srv.proc.send_signal(signal.SIGKILL)
        srv.proc.wait(30)
        time.sleep(2)
        srv.start()  # same state dir: the persistent records of the dead run wait there
        at = len(progress)
        wait_progress(at + 50, "after kill -9 and restart of smbdd")
        writer.wait(600)
        reader.join(30)
        assert writer.returncode == 0, writer.stderr.read()
        line = next(x for x in progress if x.startswith("sha256"))
        expected = line.split()[1]
        data = root / "ca-share" / "kept.bin"
        assert data.stat().st_size == chunks * size
        assert sha256(data) == expected
        lab_results["persistent_kills_survived"] = 2
        assert "persistent" in srv.log()
    finally:
        if writer is not None and writer.poll() is None:
            writer.kill()
        run("umount", "-f", str(mnt), timeout=120, check=False)
        srv.stop()
        (root / "ca-share" / "kept.bin").unlink(missing_ok=True)
