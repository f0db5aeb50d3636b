"""The manifest that travels with every artifact (``manifest.json``).

It makes an artifact self-describing without the registry: key and key
material, spec, file digests, toolchain and runtime versions, I/O signature,
pass trace, parity and timing figures. Builder writes it; the runtime reads
it. Bump ``MANIFEST_FORMAT`` when a reader would misread an older one.
"""

from __future__ import annotations

import json
from typing import Any, Mapping

from .errors import CompatibilityError

MANIFEST_FORMAT = 1
MANIFEST_NAME = "manifest.json"
LIBRARY_NAME = "lib.so"
PARAMS_NAME = "params.npz"


def dumps(manifest: Mapping[str, Any]) -> bytes:
    return (json.dumps(manifest, sort_keys=True, indent=2) + "\n").encode("utf-8")


def loads(data: bytes, *, key: str | None = None) -> dict:
    try:
        manifest = json.loads(data)
    except ValueError as exc:
        raise CompatibilityError(f"artifact {key or '?'}: manifest.json is not JSON: {exc}") from None
    fmt = manifest.get("manifest_format") if isinstance(manifest, dict) else None
    if fmt != MANIFEST_FORMAT:
        raise CompatibilityError(
            f"artifact {key or '?'}: manifest format {fmt!r}, this buildsys reads format {MANIFEST_FORMAT}; "
            "rebuild it with this buildsys (`buildsys build --force --only key=<KEY>`)")
    return manifest
