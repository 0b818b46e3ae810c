"""smbdd: the central daemon (TCP acceptor, worker supervisor, SMB Direct proxy)."""
