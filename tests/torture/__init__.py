"""smbtorture (Samba's SMB protocol test suite) against any :class:`ServerUnderTest`.

- :mod:`.subunit_v1`: parser for the subunit v1 stream smbtorture writes with --format=subunit
- :mod:`.runner`: run one suite under `timeout`, map results per test, detect client crashes
- :mod:`.compare`: run suites against Samba and smbdd and write RESULTS.md
"""
