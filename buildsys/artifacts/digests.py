"""Digests (``sha256:<hex>``) and canonical JSON: how the store names bytes and the key hashes material."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

HASH_ALGORITHM = "sha256"
CHUNK = 1 << 20


def canonical_json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


def digest_bytes(data: bytes) -> str:
    return f"{HASH_ALGORITHM}:{hashlib.sha256(data).hexdigest()}"


def digest_file(path: str | Path) -> str:
    """``sha256:<hex>`` of a file's raw bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
    return f"{HASH_ALGORITHM}:{h.hexdigest()}"


def split_digest(digest: str) -> tuple[str, str]:
    algorithm, sep, hexdigest = digest.partition(":")
    if not sep or algorithm != HASH_ALGORITHM or len(hexdigest) != 64 or not all(
            c in "0123456789abcdef" for c in hexdigest):
        raise ValueError(f"not a {HASH_ALGORITHM} digest: {digest!r}")
    return algorithm, hexdigest
