"""Content ids the Hub publishes, computed locally so that downloads and uploads can be checked.

The Hub identifies a file in one of two ways: an LFS file (weights, tokenizer models) by the sha256 of
its content, a regular git file (JSON, the card) by its git blob id, the sha1 of ``b"blob <size>\\0"``
followed by the content.  Both are checked, so every file of a download is verified, not only the large
ones.
"""

from __future__ import annotations

import hashlib
import os
import re

_CHUNK = 1 << 20
SHA256_HEX = re.compile(r"[0-9a-f]{64}")
SHA1_HEX = re.compile(r"[0-9a-f]{40}")


def git_blob_sha1(path: str | os.PathLike[str]) -> str:
    """The git blob id of a file (what ``git hash-object`` prints)."""
    digest = hashlib.sha1(usedforsecurity=False)
    digest.update(b"blob %d\0" % os.path.getsize(path))
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
