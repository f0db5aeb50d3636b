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


def write_params(path, arrays) -> None:
    """``params.npz`` that ``np.load`` reads, byte-identical for identical arrays: np.savez
    stamps each zip member with the current time, which would make every rebuild differ."""
    import zipfile

    import numpy as np

    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        for i, array in enumerate(arrays):
            info = zipfile.ZipInfo(f"p{i:05d}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            with archive.open(info, "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.ascontiguousarray(array), allow_pickle=False)
