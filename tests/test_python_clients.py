"""smbprotocol at 3.1.1 with encryption required, once per cipher and signing algorithm, and
impacket's SMBConnection: write, read, list, delete, byte-identical."""
from __future__ import annotations

import hashlib
import io
import os
import uuid

import pytest
from impacket.smbconnection import SMBConnection
from smbprotocol.connection import Ciphers, Connection, Dialects, SigningAlgorithms
from smbprotocol.open import (CreateDisposition, CreateOptions, FileAttributes, FilePipePrinterAccessMask,
                              ImpersonationLevel, Open, ShareAccess)
from smbprotocol.session import Session
from smbprotocol.tree import TreeConnect

from tests.smbdd_process import PASSWORD, USER, Smbdd

pytestmark = pytest.mark.peer
PAYLOAD = os.urandom(3 * 1024 * 1024 + 12345)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = Smbdd(tmp_path_factory.mktemp("pyclients"), "--encrypt", "required")
    yield srv
    srv.stop()


def _open(tree: TreeConnect, name: str, disposition: int, options: int = CreateOptions.FILE_NON_DIRECTORY_FILE):
    op = Open(tree, name)
    op.create(ImpersonationLevel.Impersonation,
              FilePipePrinterAccessMask.GENERIC_READ | FilePipePrinterAccessMask.GENERIC_WRITE
              | FilePipePrinterAccessMask.DELETE,
              FileAttributes.FILE_ATTRIBUTE_NORMAL, ShareAccess.FILE_SHARE_READ, disposition, options)
    return op


@pytest.mark.parametrize("cipher", [Ciphers.AES_128_CCM, Ciphers.AES_128_GCM, Ciphers.AES_256_CCM,
                                    Ciphers.AES_256_GCM])
@pytest.mark.parametrize("signing", [SigningAlgorithms.AES_CMAC, SigningAlgorithms.AES_GMAC])
def test_smbprotocol_encrypted_roundtrip(server, cipher, signing):
    conn = Connection(uuid.uuid4(), "127.0.0.1", server.port)
    conn.connect(Dialects.SMB_3_1_1, timeout=10, preferred_encryption_algos=[cipher],
                 preferred_signing_algos=[signing])
    assert conn.cipher_id == cipher
    session = Session(conn, USER, PASSWORD, require_encryption=True)
    session.connect()
    assert session.encrypt_data  # the server asked for encryption of the whole session
    tree = TreeConnect(session, rf"\\127.0.0.1\data")
    tree.connect()
    name = f"f-{cipher}-{signing}.bin"
    f = _open(tree, name, CreateDisposition.FILE_OVERWRITE_IF)
    chunk = conn.max_write_size
    for off in range(0, len(PAYLOAD), chunk):
        f.write(PAYLOAD[off:off + chunk], off)
    f.close()
    assert hashlib.sha256((server.share / name).read_bytes()).digest() == hashlib.sha256(PAYLOAD).digest()
    f = _open(tree, name, CreateDisposition.FILE_OPEN)
    got = bytearray()
    while len(got) < len(PAYLOAD):
        got += f.read(len(got), min(conn.max_read_size, len(PAYLOAD) - len(got)))
    f.close()
    assert bytes(got) == PAYLOAD
    d = _open(tree, "", CreateDisposition.FILE_OPEN, CreateOptions.FILE_DIRECTORY_FILE)
    names = [e["file_name"].get_value().decode("utf-16-le") for e in d.query_directory("*", 37)]
    d.close()
    assert name in names
    f = _open(tree, name, CreateDisposition.FILE_OPEN, CreateOptions.FILE_NON_DIRECTORY_FILE
              | CreateOptions.FILE_DELETE_ON_CLOSE)
    f.close()
    assert not (server.share / name).exists()
    tree.disconnect()
    session.disconnect()
    conn.disconnect()


def test_smbprotocol_without_encryption_is_refused(server):
    """--encrypt required: a client that cannot encrypt (SMB 2.1) cannot log in."""
    conn = Connection(uuid.uuid4(), "127.0.0.1", server.port)
    conn.connect(Dialects.SMB_2_1_0, timeout=10)
    session = Session(conn, USER, PASSWORD, require_encryption=False)
    with pytest.raises(Exception) as err:
        session.connect()
    assert "ACCESS_DENIED" in str(err.value).upper() or "0xc0000022" in str(err.value).lower()
    conn.disconnect()


def test_impacket_roundtrip(tmp_path):
    srv = Smbdd(tmp_path)
    try:
        c = SMBConnection("127.0.0.1", "127.0.0.1", sess_port=srv.port, timeout=30)
        c.login(USER, PASSWORD)
        data = os.urandom(2 * 1024 * 1024 + 7)
        c.putFile("data", "imp.bin", io.BytesIO(data).read)
        got = io.BytesIO()
        c.getFile("data", "imp.bin", got.write)
        assert got.getvalue() == data
        assert "imp.bin" in [f.get_longname() for f in c.listPath("data", "*")]
        c.deleteFile("data", "imp.bin")
        assert "imp.bin" not in [f.get_longname() for f in c.listPath("data", "*")]
        with pytest.raises(Exception) as err:
            c.getFile("data", "imp.bin", io.BytesIO().write)
        assert "STATUS_OBJECT_NAME_NOT_FOUND" in str(err.value)
        c.logoff()
        bad = SMBConnection("127.0.0.1", "127.0.0.1", sess_port=srv.port, timeout=30)
        with pytest.raises(Exception) as err:
            bad.login(USER, "wrong")
        assert "STATUS_LOGON_FAILURE" in str(err.value)
    finally:
        srv.stop()
