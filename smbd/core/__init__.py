"""SMB2 connection machinery that does no I/O: framing, compounding, credits, signing."""
