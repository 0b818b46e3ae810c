"""RDMA transport pieces of the smbdd proxy (SMB Direct, MS-SMBD).

`smbdd.rdma.verbs` is the only module here that touches pyverbs/librdmacm; it imports them lazily
so this package can be imported on hosts without RDMA.
"""
