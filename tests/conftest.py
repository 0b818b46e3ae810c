"""Fixtures shared by the test modules: the real-peer harness (Samba, smbdd, payload files)."""
pytest_plugins = ["tests.peers.fixtures"]
