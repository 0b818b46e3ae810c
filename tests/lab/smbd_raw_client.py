"""A raw SMB Direct peer for malformed-message tests, on plain pyverbs (its own process).

It speaks MS-SMBD by hand, built from the spec's field layouts (2.2.1 negotiate request,
2.2.3 data transfer message), not with smbdd's codec, and sends what a broken or hostile
client would. Prints one JSON line: what it sent and what it received back, if anything.

Modes (HOST PORT MODE):
  bad-version    negotiate offering only version 0x0200       -> NOT_SUPPORTED, then closed
  zero-credits   negotiate with CreditsRequested 0            -> closed
  bad-offset     valid negotiate, then DataOffset 7            -> closed
  oversize       valid negotiate, then a fragment promising more than MaxFragmentedSize -> closed
  no-credit      valid negotiate, then CreditsRequested 0 in a data message -> closed
"""
import json
import os
import struct
import sys
import time

import pyverbs.enums as e
from pyverbs.cm_enums import RDMA_PS_TCP
from pyverbs.cmid import AddrInfo, CMID, ConnParam
from pyverbs.qp import QPCap, QPInitAttr

NEGOTIATE_REQUEST = struct.Struct("<HHHHIII")  # MS-SMBD 2.2.1
NEGOTIATE_RESPONSE = struct.Struct("<HHHHHHIIIII")  # MS-SMBD 2.2.2
DATA_HEADER = struct.Struct("<HHHHIIII")  # MS-SMBD 2.2.3
SIZE = 1364


def negotiate(version=0x0100, credits=255):
    return NEGOTIATE_REQUEST.pack(version, version, 0, credits, SIZE, SIZE, 1 << 20)


def data(offset=24, credits=255, remaining=0, payload=b"\xfeSMB" + bytes(60)):
    head = DATA_HEADER.pack(credits, 1, 0, 0, remaining, offset, len(payload), 0)
    return head + bytes(max(0, offset - len(head))) + payload


def run(host, port, mode):
    ai = AddrInfo(dst=host, dst_service=str(port), port_space=RDMA_PS_TCP)
    cmid = CMID(creator=ai, qp_init_attr=QPInitAttr(qp_type=e.IBV_QPT_RC,
                                                    cap=QPCap(max_send_wr=8, max_recv_wr=8)))
    cmid.connect(ConnParam(resources=4, depth=4))
    out, inbox = cmid.reg_msgs(SIZE), cmid.reg_msgs(SIZE)
    cmid.post_recv(inbox, SIZE)
    result = {"mode": mode}

    def send(msg):
        out.write(msg, len(msg))
        cmid.post_send(out, e.IBV_SEND_SIGNALED, len(msg))
        result.setdefault("send_status", []).append(cmid.get_send_comp().status)

    first = {"bad-version": negotiate(0x0200), "zero-credits": negotiate(credits=0)}.get(mode, negotiate())
    send(first)
    if mode == "zero-credits":
        # The server must drop us without answering. Nothing to wait for: a blocked pyverbs
        # call would hold the GIL, so no in-process timeout could end it (shared/LAB.md).
        result["recv_status"] = "not awaited"
    elif mode == "bad-version":
        wc = cmid.get_recv_comp()  # MS-SMBD 3.3.5.2: a negotiate response with NOT_SUPPORTED
        if wc.status == 0 and wc.byte_len >= NEGOTIATE_RESPONSE.size:
            fields = NEGOTIATE_RESPONSE.unpack(inbox.read(NEGOTIATE_RESPONSE.size, 0))
            result["response_status"] = fields[6]
        result["recv_status"] = wc.status
    else:
        wc = cmid.get_recv_comp()
        fields = NEGOTIATE_RESPONSE.unpack(inbox.read(NEGOTIATE_RESPONSE.size, 0))
        result["negotiate_status"] = fields[6]
        bad = {"bad-offset": data(offset=7),
               "oversize": data(remaining=1 << 30),
               "no-credit": data(credits=0)}[mode]
        send(bad)
    time.sleep(2)  # give the server time to tear down first
    print(json.dumps(result), flush=True)
    os._exit(0)  # skip a teardown that may wait on a peer that is already gone


if __name__ == "__main__":
    run(sys.argv[1], int(sys.argv[2]), sys.argv[3])
