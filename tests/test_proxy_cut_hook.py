"""The proxy's test hook (smbtorture_fsctl, SIGUSR2) cuts the newest live SMB Direct
connection and no other; the lab test cuts one channel of a multichannel mount with it
(tests/lab/test_multichannel_persistent_lab.py)."""
from __future__ import annotations

from smbdd.proxy.server import Proxy


class FakeConnection:
    def __init__(self, proxy: Proxy, closed: bool = False):
        self.serial = next(proxy.accepted)
        self.closed = closed
        self.reasons: list[str] = []

    def close(self, reason: str = "") -> None:
        self.closed = True
        self.reasons.append(reason)


def test_cut_takes_the_newest_live_connection_only():
    proxy = Proxy(settings=None, supervisor=None, devices=[])
    first, second, newest_closed = (FakeConnection(proxy), FakeConnection(proxy), FakeConnection(proxy, closed=True))
    proxy.connections = {newest_closed, first, second}
    proxy.cut_newest_connection()
    assert second.reasons == ["cut by the test hook"]
    assert first.reasons == [] and not first.closed
    assert newest_closed.reasons == []
    proxy.cut_newest_connection()
    assert first.reasons == ["cut by the test hook"]


def test_cut_with_no_connection_only_logs(caplog):
    proxy = Proxy(settings=None, supervisor=None, devices=[])
    proxy.cut_newest_connection()
    assert "no SMB Direct connection to cut" in caplog.text
