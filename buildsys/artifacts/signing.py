"""Ed25519 keys and signatures for releases and bundles (``cryptography``).

``buildsys keygen`` writes a PEM private key and its raw public key (hex); the
private key comes from ``--sign-key FILE`` or ``BUILDSYS_SIGNING_KEY`` (a path),
the public key from ``--public-key FILE`` or ``BUILDSYS_PUBLIC_KEY`` (a path).
A signature is the hex of the ed25519 signature of a manifest's bytes, in
``<manifest>.sig`` beside it. Both sides use this module: the release and
bundle exporters sign, the importer and the thin loader verify.
"""

from __future__ import annotations

import os
from pathlib import Path

from buildsys.errors import TrustError, UsageError
from buildsys.artifacts.manifest import MANIFEST_NAME

SIGNATURE_NAME = MANIFEST_NAME + ".sig"


def generate_keypair(private_path: str | os.PathLike) -> tuple[Path, Path]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    private_path = Path(private_path)
    if private_path.exists():
        raise UsageError(f"{private_path} exists; not overwriting a key")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
    public_path = private_path.with_name(private_path.name + ".pub")
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    public_path.write_text(raw.hex() + "\n")
    return private_path, public_path


def _key_path(explicit: str | None, env: str) -> Path | None:
    value = explicit or os.environ.get(env)
    return Path(value) if value else None


def load_private_key(explicit: str | None = None):
    from cryptography.hazmat.primitives import serialization

    path = _key_path(explicit, "BUILDSYS_SIGNING_KEY")
    if path is None:
        return None
    try:
        return serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise UsageError(f"signing key {path}: {exc}") from None


def load_public_key(explicit: str | None = None):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    path = _key_path(explicit, "BUILDSYS_PUBLIC_KEY")
    if path is None:
        return None
    try:
        return Ed25519PublicKey.from_public_bytes(bytes.fromhex(path.read_text().strip()))
    except (OSError, ValueError) as exc:
        raise UsageError(f"public key {path}: not a hex ed25519 public key ({exc})") from None


def verify_signature(public_key, data: bytes, signature_hex: bytes | None, what: str) -> None:
    from cryptography.exceptions import InvalidSignature

    if signature_hex is None:
        raise TrustError(f"{what} is not signed, and a public key is configured")
    try:
        public_key.verify(bytes.fromhex(signature_hex.decode().strip()), data)
    except (InvalidSignature, ValueError, UnicodeDecodeError):
        raise TrustError(f"{what}: the signature does not match the configured public key") from None
