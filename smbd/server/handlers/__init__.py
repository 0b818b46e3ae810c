"""The command dispatch table: one handler per SMB2 command (MS-SMB2 3.3.5.x)."""
from __future__ import annotations

from smbd.wire.header import Command

from . import files, info, locks, negotiate, notify, session


async def _ioctl(req):
    from .ioctl import handle_ioctl  # imported late: it pulls in the RPC code for IPC$
    return await handle_ioctl(req)


class HandlerTable:
    """Maps each command to its handler; SMB1 negotiate is separate (it is not SMB2)."""

    def __init__(self):
        self.table = {
            Command.NEGOTIATE: negotiate.handle_negotiate,
            Command.SESSION_SETUP: session.handle_session_setup,
            Command.LOGOFF: session.handle_logoff,
            Command.TREE_CONNECT: session.handle_tree_connect,
            Command.TREE_DISCONNECT: session.handle_tree_disconnect,
            Command.ECHO: session.handle_echo,
            Command.CREATE: files.handle_create,
            Command.CLOSE: files.handle_close,
            Command.FLUSH: files.handle_flush,
            Command.READ: files.handle_read,
            Command.WRITE: files.handle_write,
            Command.LOCK: locks.handle_lock,
            Command.IOCTL: _ioctl,
            Command.QUERY_DIRECTORY: info.handle_query_directory,
            Command.CHANGE_NOTIFY: notify.handle_change_notify,
            Command.QUERY_INFO: info.handle_query_info,
            Command.SET_INFO: info.handle_set_info,
            Command.OPLOCK_BREAK: files.handle_oplock_break,
        }
        self.smb1_negotiate = negotiate.handle_smb1_negotiate
