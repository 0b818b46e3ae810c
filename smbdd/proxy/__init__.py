"""The SMB Direct (RDMA) proxy."""
