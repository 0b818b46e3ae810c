"""The SMB2 server: objects typed after MS-SMB2 3.3.1 and the command handlers."""
