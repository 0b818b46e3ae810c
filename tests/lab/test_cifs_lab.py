"""The SMB Direct cifs.ko built by deploy/lab/build-cifs.sh: it loads in the lab VM, and as a real
SMB Direct client it connects to smbdd.rdma.verbs and negotiates."""
import asyncio
import os
import struct
import subprocess
from pathlib import Path

import pytest

from smbdd.rdma import verbs

from aio_server import AioServer, ShmPool


def test_cifs_module_has_smb_direct():
    ko = os.environ.get("LAB_CIFS_KO")
    if not ko:
        pytest.skip("vm-run.sh was told not to load cifs.ko (SMBDD_LAB_NO_CIFS=1)")
    debug = Path("/proc/fs/cifs/DebugData").read_text()
    features = next(line for line in debug.splitlines() if line.startswith("Features:"))
    assert "SMB_DIRECT" in features.split(":", 1)[1].split(",")
    info = subprocess.run(["modinfo", "-F", "depends", ko], capture_output=True, text=True, check=True)
    assert "rdma_cm" in info.stdout.split(",")


# ---- the kernel's SMB Direct client against smbdd.rdma.verbs --------------------------------

# MS-SMBD 2.2.1 negotiate request, 2.2.2 negotiate response, 2.2.3 data transfer header.
NEG_REQ = struct.Struct("<HHHHIII")
NEG_RESP = struct.Struct("<HHHHHHIIIII")
DATA_HDR = struct.Struct("<HHHHIIII")
SMBD_V1 = 0x0100


class CifsNegotiateHandler:
    """Answer cifs.ko's SMB Direct negotiate request, then capture its first data message."""

    def __init__(self, recv_credits: int):
        self.recv_credits = recv_credits
        self.done = asyncio.Event()
        self.seen: dict = {}

    def on_completion(self, conn, c):
        pool, lkey = conn.server.pool, conn.server.mr.lkey
        if c.status != verbs.WC_SUCCESS:
            if c.status != verbs.WC_WR_FLUSH_ERR:
                self.seen.setdefault("errors", []).append(c)
            return
        if c.opcode != verbs.WcOpcode.RECV:
            return
        msg = bytes(pool.view(c.wr_id, c.byte_len))
        if "negotiate" not in self.seen:
            self.seen["negotiate"] = NEG_REQ.unpack_from(msg) if len(msg) >= NEG_REQ.size else msg
            _, _, _, credits_req, pref_send, max_recv, max_frag = self.seen["negotiate"]
            resp = NEG_RESP.pack(SMBD_V1, SMBD_V1, SMBD_V1, 0, 8, self.recv_credits, 0, 1 << 20,
                                 min(1364, max_recv), pool.slot_size, 1 << 20)
            out = conn.spare_slots[0]
            pool.view(out, len(resp))[:] = resp
            conn.repost(c.wr_id)
            conn.ep.post_send(9001, pool.addr(out), len(resp), lkey)
        else:
            conn.repost(c.wr_id)
            # A data transfer without data is 20 bytes (no Padding): cifs.ko sends one to grant
            # credits once its receives are posted.
            hdr = DATA_HDR.unpack_from(msg) if len(msg) >= DATA_HDR.size else NEG_REQ.unpack_from(msg)
            length = hdr[6]
            if length == 0:
                self.seen["empty_messages"] = self.seen.get("empty_messages", 0) + 1
                return
            self.seen["data_header"] = hdr
            self.seen["payload"] = msg[hdr[5]:hdr[5] + length]
            self.done.set()


def test_cifs_ko_connects_to_our_listener_and_negotiates(lab_results):
    """cifs.ko (mount -o rdma) reaches our Listener on 5445 (the port it tries first) over rxe0,
    we accept with our verbs layer, answer its SMB Direct negotiate from the shm pool and receive
    its first SMB2 message (NEGOTIATE) as an SMB Direct data transfer."""
    if not os.environ.get("LAB_CIFS_KO"):
        pytest.skip("vm-run.sh was told not to load cifs.ko (SMBDD_LAB_NO_CIFS=1)")

    async def main():
        loop = asyncio.get_running_loop()
        pool = ShmPool("smbdd-lab-cifs", 2048, 64)
        handler = CifsNegotiateHandler(recv_credits=8)
        srv = AioServer(loop, pool, handler, port=5445, recv_slots=8, spare_slots=2)
        srv.start()
        Path("/tmp/lab-mnt").mkdir(exist_ok=True)
        mount = await asyncio.create_subprocess_exec(
            "mount", "-t", "cifs", "//10.77.0.1/share", "/tmp/lab-mnt",
            "-o", "rdma,vers=3.1.1,username=labuser,password=labpass",
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
        try:
            await asyncio.wait_for(handler.done.wait(), 90)
            assert len(srv.conns) == 1, "cifs.ko reconnected: it rejected something"
            return handler.seen, srv.conns[0].ep
        finally:
            mount.kill()
            await mount.wait()
            srv.close()
            pool.close()

    seen, ep = asyncio.run(main())
    assert not seen.get("errors"), seen.get("errors")
    min_v, max_v, _, credits_req, pref_send, max_recv, max_frag = seen["negotiate"]
    assert (min_v, max_v) == (SMBD_V1, SMBD_V1)
    assert credits_req > 0 and max_recv >= 128 and max_frag >= 131072
    # cifs.ko connects with initiator_depth 0 and responder_resources min(device, 32): it never
    # RDMA-reads us, we may RDMA-read it (the SMB2 WRITE path).
    assert ep.offered_responder_resources == 0
    assert ep.offered_initiator_depth == min(32, ep.device.max_qp_rd_atom)
    assert ep.initiator_depth == min(ep.offered_initiator_depth, ep.device.max_qp_init_rd_atom) > 0
    assert ep.responder_resources == 0
    lab_results["cifs_ko_smbd_negotiate"] = {
        "credits_requested": credits_req, "preferred_send_size": pref_send,
        "max_receive_size": max_recv, "max_fragmented_size": max_frag,
        "offered_initiator_depth": ep.offered_initiator_depth,
        "offered_responder_resources": ep.offered_responder_resources,
        "empty_credit_messages_before_smb2": seen.get("empty_messages", 0)}
    payload = seen["payload"]
    assert payload[:4] == b"\xfeSMB", payload[:16]
    assert struct.unpack_from("<H", payload, 12)[0] == 0, "first SMB2 command must be NEGOTIATE"
