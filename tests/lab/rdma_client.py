"""A plain pyverbs RDMA client for the lab tests (runs in its own process, so blocking is fine).

It deliberately does not use smbdd.rdma.verbs: the server side under test is that layer, the
peer is rdma-core's synchronous rdma_create_ep path.  Prints one JSON line with its results.

Modes:
  pingpong HOST PORT COUNT SIZE   send COUNT messages of SIZE bytes, wait for each echo
  silent   HOST PORT SECONDS      connect, send nothing for SECONDS, disconnect
  rdma     HOST PORT LENGTH       buffer exchange: the server RDMA-reads our buffer (pattern A),
                                  RDMA-writes pattern B into it, then we RDMA-write pattern C into
                                  the server's shared-memory slot it advertised.
  inv      HOST PORT LENGTH       send with invalidate, as SMB Direct 3.0.2+ uses it: we expose our
                                  buffer through a type 2 memory window, the server RDMA-writes
                                  pattern D into it and answers with SEND_WITH_INV of its rkey; we
                                  check the invalidation arrived, then ask the server to write
                                  again (b"AGIN"), which must now fail on its side.
Wire messages of the rdma mode (little endian): b"DESC" addr:u64 rkey:u32 length:u32,
b"DONE" + DESC of the server slot, b"WROT".
"""
import json
import struct
import sys
import time

import pyverbs.enums as e
from pyverbs.cm_enums import RDMA_PS_TCP
from pyverbs.cmid import AddrInfo, CMID, ConnParam
from pyverbs.mr import MR
from pyverbs.qp import QPCap, QPInitAttr

DESC = struct.Struct("<4sQII")


def pattern(tag: int, length: int) -> bytes:
    unit = bytes((tag + i) & 0xFF for i in range(251))  # prime period: catches misplaced pages
    return (unit * (length // len(unit) + 1))[:length]


def connect(host: str, port: int, resources: int = 4, depth: int = 4) -> CMID:
    ai = AddrInfo(dst=host, dst_service=str(port), port_space=RDMA_PS_TCP)
    init = QPInitAttr(qp_type=e.IBV_QPT_RC, cap=QPCap(max_send_wr=8, max_recv_wr=8))
    cmid = CMID(creator=ai, qp_init_attr=init)
    cmid.connect(ConnParam(resources=resources, depth=depth))
    return cmid


def pingpong(host, port, count, size):
    cmid = connect(host, port)
    send_mr, recv_mr = cmid.reg_msgs(size), cmid.reg_msgs(size)
    send_mr.write(pattern(7, size), size)
    rtts = []
    for i in range(count):
        cmid.post_recv(recv_mr, size)
        t0 = time.perf_counter()
        cmid.post_send(send_mr, e.IBV_SEND_SIGNALED, size)
        wc = cmid.get_recv_comp()
        rtts.append(time.perf_counter() - t0)
        cmid.get_send_comp()
        if wc.status != 0 or wc.byte_len != size:
            raise SystemExit(f"bad echo {i}: status {wc.status} len {wc.byte_len}")
    if recv_mr.read(size, 0) != pattern(7, size):
        raise SystemExit("echo content differs")
    cmid.close()
    rtts.sort()
    return {"count": count, "size": size, "rtt_median_us": rtts[len(rtts) // 2] * 1e6,
            "rtt_p99_us": rtts[int(len(rtts) * 0.99) - 1] * 1e6, "total_s": sum(rtts)}


def silent(host, port, seconds):
    cmid = connect(host, port)
    time.sleep(seconds)
    cmid.close()
    return {"silent_s": seconds}


def rdma(host, port, length):
    cmid = connect(host, port)
    access = e.IBV_ACCESS_LOCAL_WRITE | e.IBV_ACCESS_REMOTE_WRITE | e.IBV_ACCESS_REMOTE_READ
    buf = MR(cmid.pd, length, access)
    buf.write(pattern(0xA, length), length)
    msg_out, msg_in = cmid.reg_msgs(64), cmid.reg_msgs(64)
    cmid.post_recv(msg_in, 64)
    msg_out.write(DESC.pack(b"DESC", buf.buf, buf.rkey, length), DESC.size)
    cmid.post_send(msg_out, e.IBV_SEND_SIGNALED, DESC.size)
    cmid.get_send_comp()
    wc = cmid.get_recv_comp()
    tag, saddr, srkey, slen = DESC.unpack(msg_in.read(DESC.size, 0))
    if wc.status != 0 or tag != b"DONE":
        raise SystemExit(f"expected DONE, got {tag!r} status {wc.status}")
    got_b = buf.read(length, 0) == pattern(0xB, length)
    # Now we write pattern C into the server's shared-memory slot.
    buf.write(pattern(0xC, slen), slen)
    t0 = time.perf_counter()
    cmid.post_write(buf, slen, saddr, srkey)
    wc = cmid.get_send_comp()
    write_s = time.perf_counter() - t0
    if wc.status != 0:
        raise SystemExit(f"RDMA write to server failed: status {wc.status}")
    msg_out.write(b"WROT", 4)
    cmid.post_send(msg_out, e.IBV_SEND_SIGNALED, 4)
    cmid.get_send_comp()
    cmid.close()
    return {"server_write_landed": got_b, "client_write_s": write_s, "length": length}


def poll_one(cq, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        n, wcs = cq.poll()
        if n:
            return wcs[0]
        time.sleep(0.0005)
    raise SystemExit("timed out waiting for a completion")


def inv(host, port, length):
    """Active side with our own QP (the simple CMID path cannot post a memory-window bind)."""
    from pyverbs.cq import CQ
    from pyverbs.mr import MW, MWBindInfo
    from pyverbs.qp import QP
    from pyverbs.wr import RecvWR, SendWR, SGE

    cmid = CMID(creator=AddrInfo(dst=host, dst_service=str(port), port_space=RDMA_PS_TCP))
    cq = CQ(cmid.context, 32)
    qp = QP(cmid.pd, QPInitAttr(qp_type=e.IBV_QPT_RC, scq=cq, rcq=cq,
                                cap=QPCap(max_send_wr=8, max_recv_wr=8)))
    attr, mask = cmid.init_qp_attr(e.IBV_QPS_INIT)
    attr.qp_access_flags = (e.IBV_ACCESS_LOCAL_WRITE | e.IBV_ACCESS_REMOTE_WRITE |
                            e.IBV_ACCESS_REMOTE_READ)
    qp.modify(attr, mask | e.IBV_QP_ACCESS_FLAGS)
    msg_in = MR(cmid.pd, 64, e.IBV_ACCESS_LOCAL_WRITE)
    msg_out = MR(cmid.pd, 64, e.IBV_ACCESS_LOCAL_WRITE)
    qp.post_recv(RecvWR(wr_id=1, num_sge=1, sg=[SGE(msg_in.buf, 64, msg_in.lkey)]))
    cmid.connect(ConnParam(resources=4, depth=4, qp_num=qp.qp_num))
    for state in (e.IBV_QPS_RTR, e.IBV_QPS_RTS):
        attr, mask = cmid.init_qp_attr(state)
        qp.modify(attr, mask)
    cmid.establish()

    buf = MR(cmid.pd, length, e.IBV_ACCESS_LOCAL_WRITE | e.IBV_ACCESS_REMOTE_WRITE |
             e.IBV_ACCESS_MW_BIND)
    buf.write(bytes(length), length)
    mw = MW(cmid.pd, e.IBV_MW_TYPE_2)
    bind = SendWR(wr_id=2, opcode=e.IBV_WR_BIND_MW, send_flags=e.IBV_SEND_SIGNALED)
    bind.set_bind_wr(mw, MWBindInfo(buf, buf.buf, length, e.IBV_ACCESS_REMOTE_WRITE))
    rkey = bind.rkey
    qp.post_send(bind)
    wc = poll_one(cq)
    if wc.status != 0:
        raise SystemExit(f"memory window bind failed: status {wc.status}")

    qp.post_recv(RecvWR(wr_id=3, num_sge=1, sg=[SGE(msg_in.buf, 64, msg_in.lkey)]))
    msg_out.write(DESC.pack(b"DESC", buf.buf, rkey, length), DESC.size)
    qp.post_send(SendWR(wr_id=4, num_sge=1, sg=[SGE(msg_out.buf, DESC.size, msg_out.lkey)]))
    got = {}
    while "recv" not in got:
        wc = poll_one(cq)
        if wc.status != 0:
            raise SystemExit(f"completion {wc.wr_id} failed: status {wc.status}")
        if wc.opcode == e.IBV_WC_RECV:
            got["recv"] = wc
    wc = got["recv"]
    result = {"tag": msg_in.read(4, 0).decode(errors="replace"),
              # rxe hands the kernel's wc_flags through unconverted: the kernel's
              # IB_WC_WITH_INVALIDATE is 1<<2, which libibverbs calls IBV_WC_IP_CSUM_OK; on a
              # converting provider it is IBV_WC_WITH_INV (1<<3).  Seen in the lab: flags 0x5.
              "with_inv": bool(wc.wc_flags & (e.IBV_WC_WITH_INV | 4)),
              # ibv_wc: union { __be32 imm_data; uint32_t invalidated_rkey; }
              "invalidated_rkey_matches": wc.imm_data == rkey,
              "data_landed": buf.read(length, 0) == pattern(0xD, length),
              "wc": {"flags": wc.wc_flags, "imm": wc.imm_data, "opcode": wc.opcode, "len": wc.byte_len},
              "rkey": rkey}
    msg_out.write(b"AGIN", 4)
    qp.post_send(SendWR(wr_id=5, num_sge=1, sg=[SGE(msg_out.buf, 4, msg_out.lkey)]))
    poll_one(cq)
    time.sleep(1.0)  # let the server's second write hit the invalidated window
    result["buffer_untouched_after_inv"] = buf.read(length, 0) == pattern(0xD, length)
    t0 = time.perf_counter()
    cmid.disconnect()  # synchronous: returns once the server answered our DREQ
    result["disconnect_s"] = time.perf_counter() - t0
    qp.close()
    cmid.close()
    return result


def main(argv):
    mode, host, port = argv[0], argv[1], int(argv[2])
    if mode == "pingpong":
        res = pingpong(host, port, int(argv[3]), int(argv[4]))
    elif mode == "silent":
        res = silent(host, port, float(argv[3]))
    elif mode == "rdma":
        res = rdma(host, port, int(argv[3]))
    elif mode == "inv":
        res = inv(host, port, int(argv[3]))
    else:
        raise SystemExit(f"unknown mode {mode}")
    print(json.dumps(res), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
