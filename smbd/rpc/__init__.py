"""DCE/RPC over named pipes: the connection-oriented PDU codec (C706 ch. 12, MS-RPCE 2.2.2),
an NDR 2.0 marshaller (C706 ch. 14) and the srvsvc calls a share browser needs (MS-SRVS).

Everything here is sans-IO: bytes in, bytes out. smbd.server.ipc connects it to SMB2
CREATE/READ/WRITE/IOCTL on the IPC$ share.
"""
from .association import PduFramer, RpcAssociation, RpcFault, RpcInterface
from .errors import NdrError, RpcProtocolError
from .srvsvc import ServerIdentity, ShareEntry, ShareType, SrvsvcInterface

__all__ = ["PduFramer", "RpcAssociation", "RpcFault", "RpcInterface", "NdrError", "RpcProtocolError",
           "ServerIdentity", "ShareEntry", "ShareType", "SrvsvcInterface"]
