"""Transports that deliver whole SMB2 messages to a connection (direct TCP, the RDMA proxy)."""
