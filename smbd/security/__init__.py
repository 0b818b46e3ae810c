"""Windows security descriptors for files: the MS-DTYP codec (sid.py, sd.py), the descriptor
a file has when the client never set one (default.py), the DACL a new file inherits from its
parent (inherit.py), persistence in an extended attribute (store.py) and the narrowing of a
CREATE's access by a stored DACL (access.py).

Enforcement stays with POSIX: the kernel checks every open against the Unix permissions of
the server process as before. A stored DACL is returned faithfully and can only take
rights away from what the share and POSIX allow (access.py); it never grants more.
"""
