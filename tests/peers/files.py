"""Test data: fast random files and SHA-256 digests of files."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

CHUNK = 4 * 1024 * 1024


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, read in chunks so large files do not fill memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def make_random_file(path: str | os.PathLike, size: int) -> str:
    """Write *size* random bytes to *path* and return their hex SHA-256.

    os.urandom in 4 MiB chunks: about 0.1 s for 64 MiB, and incompressible, so no layer
    (compression, sparse files) can make a transfer look better than it is.
    """
    digest = hashlib.sha256()
    remaining = size
    with open(path, "wb") as f:
        while remaining > 0:
            chunk = os.urandom(min(CHUNK, remaining))
            f.write(chunk)
            digest.update(chunk)
            remaining -= len(chunk)
    return digest.hexdigest()


def world_traversable_dir(path: Path) -> Path:
    """Create *path* with mode 0755 so a server that switches to another uid can reach it."""
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o755)
    return path
