"""Artifact bundles: a directory per artifact that loads without the registry.

``<out>/<key>/manifest.json`` (the stored manifest, byte for byte), ``lib.so``
and ``params.npz``. Every file is re-hashed on the way out and again by the
loader. With a signing key, ``manifest.json.sig`` (ed25519, hex) is written
beside the manifest, and a loader with ``BUILDSYS_PUBLIC_KEY`` set refuses a
bundle whose manifest it does not verify. Release tars: ``release.py``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from buildsys.errors import StoreError
from buildsys.artifacts.manifest import MANIFEST_NAME
from buildsys.artifacts.signing import SIGNATURE_NAME
from buildsys.artifacts.space import describe_os_error
from buildsys.artifacts.store import Store


def export_bundle(record, store: Store, out_dir: str | os.PathLike, private_key=None) -> Path:
    out_dir = Path(out_dir)
    dest = out_dir / record.key
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{record.key[:12]}-", dir=out_dir))
    except OSError as exc:
        raise StoreError(f"cannot write bundle under {out_dir}: {describe_os_error(exc, exc.filename or out_dir)}") from None
    try:
        for f in record.files:
            store.copy_verified(f.digest, staging / f.name, key=record.key, name=f.name)
        if not (staging / MANIFEST_NAME).is_file():
            raise StoreError(f"artifact {record.key[:12]} has no {MANIFEST_NAME} in the registry")
        if private_key is not None:
            signature = private_key.sign((staging / MANIFEST_NAME).read_bytes()).hex()
            (staging / SIGNATURE_NAME).write_text(signature + "\n")
        os.chmod(staging, 0o755)  # mkdtemp makes it private
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(staging, dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return dest
