"""[MS-SMBD] SMB Direct protocol core without I/O: wire codec (wire.py) and the
server-side connection state machine (connection.py).  The RDMA proxy drives it."""
from .connection import SmbdConfig, SmbdConnection, State
from .errors import SmbdLocalError, SmbdProtocolError
from .events import (CloseConnection, Event, MessageReceived, NegotiateDone,
                     NegotiatedParams, PostReceives, PostSend)
from .wire import (SMB_DIRECT_RESPONSE_REQUESTED, SMBD_VERSION_1, BufferDescriptorV1,
                   DataTransferHeader, NegotiateRequest, NegotiateResponse,
                   build_data_transfer, pack_buffer_descriptor_list,
                   parse_buffer_descriptor_list)

__all__ = [
    "SmbdConfig", "SmbdConnection", "State", "SmbdLocalError", "SmbdProtocolError",
    "CloseConnection", "Event", "MessageReceived", "NegotiateDone", "NegotiatedParams",
    "PostReceives", "PostSend", "SMB_DIRECT_RESPONSE_REQUESTED", "SMBD_VERSION_1", "BufferDescriptorV1",
    "DataTransferHeader", "NegotiateRequest", "NegotiateResponse", "build_data_transfer",
    "pack_buffer_descriptor_list", "parse_buffer_descriptor_list",
]
