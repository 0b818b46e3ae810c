"""Real-peer test harness: reference servers (Samba), the server under test, and SMB clients.

Everything here drives real programs (smbd, smbclient, smbtorture) over loopback TCP.  The
server is always a parameter (a :class:`~tests.peers.server_under_test.ServerUnderTest`),
so one suite runs unchanged against Samba and against smbdd.
"""
