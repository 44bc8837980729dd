"""A model file's identity for feedback: ratings of an old file are never credited to a new one.

Hashing a whole GGUF (1–2 GB) on every load would cost seconds on a small CPU box, so the identity
is a sha256 over the file's size, its first and last MiB and 16 blocks spread through it: two
fine-tunes of one base differ in every tensor, so they differ in these blocks; a copied or renamed
file keeps its identity. Computed once per (path, inode, size, mtime) in this process.
"""

from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path

EDGE = 1 << 20  # bytes read at each end
BLOCK = 1 << 16  # bytes read at each of the spread positions
SPREAD = 16


def file_identity(path: Path) -> str:
    """'gguf:' + 16 hex digits, stable for one file's content (see the module docstring)."""
    stat = os.stat(path)
    return _identity(str(path), stat.st_ino, stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _identity(path: str, _inode: int, size: int, _mtime_ns: int) -> str:
    digest = hashlib.sha256(size.to_bytes(8, "little"))
    with open(path, "rb") as file:
        digest.update(file.read(EDGE))
        for index in range(1, SPREAD + 1):
            file.seek(size * index // (SPREAD + 1))
            digest.update(file.read(BLOCK))
        file.seek(max(0, size - EDGE))
        digest.update(file.read(EDGE))
    return "gguf:" + digest.hexdigest()[:16]


def remote_identity(served_model: str | None, name: str) -> str:
    """A remote entry has no file here: the model name its servers serve stands for it."""
    return f"remote:{served_model or name}"
