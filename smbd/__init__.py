"""smbd: the SMB 2.0.2 to 3.1.1 worker (protocol core, sessions, VFS)."""
