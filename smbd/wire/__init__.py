"""MS-SMB2 wire structures: parsing requests and building responses, no I/O.

Offsets inside SMB2 messages are relative to the start of the SMB2 header, so every
parser takes the whole message (header included) as a memoryview.
"""
