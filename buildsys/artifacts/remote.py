"""S3-compatible object storage behind the local store.

``BUILDSYS_REMOTE=s3://bucket/prefix`` (or ``--remote``) puts every object the
builder stores at ``<prefix>/sha256/ab/cdef...`` in the bucket as well; on any
machine, an object missing from the local store is downloaded, hashed while it
streams, and kept only if it hashes to its name (the local store is the cache).
The endpoint comes from ``BUILDSYS_S3_ENDPOINT`` (MinIO, Ceph, moto ...) or
boto3's own configuration (``AWS_ENDPOINT_URL``, profiles, credentials).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from urllib.parse import urlparse

from buildsys.errors import IntegrityError, StoreError, UsageError
from buildsys.artifacts.digests import HASH_ALGORITHM, split_digest

REMOTE_ENV = "BUILDSYS_REMOTE"
ENDPOINT_ENV = "BUILDSYS_S3_ENDPOINT"
CHUNK = 1 << 20


class RemoteStore:
    def __init__(self, url: str, endpoint_url: str | None = None):
        parsed = urlparse(url)
        if parsed.scheme != "s3" or not parsed.netloc:
            raise UsageError(f"a remote store is s3://bucket[/prefix], got {url!r}")
        self.url, self.bucket, self.prefix = url, parsed.netloc, parsed.path.strip("/")
        try:
            import boto3
        except ImportError:
            raise UsageError("a remote store needs boto3: pip install 'buildsys[remote]'") from None
        self.client = boto3.client("s3", endpoint_url=endpoint_url or os.environ.get(ENDPOINT_ENV) or None)

    def object_key(self, digest: str) -> str:
        _, hexdigest = split_digest(digest)
        return "/".join(p for p in (self.prefix, HASH_ALGORITHM, hexdigest[:2], hexdigest[2:]) if p)

    def _error(self, action: str, digest: str, exc: Exception) -> StoreError:
        return StoreError(f"remote store {self.url}: cannot {action} {digest}: {exc}")

    def has(self, digest: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self.object_key(digest))
            return True
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise self._error("look up", digest, exc) from None

    def push(self, digest: str, path: Path) -> bool:
        """Upload one object unless the bucket has it. Returns whether it was uploaded."""
        from botocore.exceptions import BotoCoreError, ClientError

        if self.has(digest):
            return False
        try:
            self.client.upload_file(str(path), self.bucket, self.object_key(digest))
        except (BotoCoreError, ClientError, OSError) as exc:
            raise self._error("upload", digest, exc) from None
        return True

    def fetch(self, digest: str, directory: Path) -> Path:
        """Download an object into ``directory``; raises IntegrityError unless it hashes to ``digest``."""
        from botocore.exceptions import BotoCoreError, ClientError

        fd, name = tempfile.mkstemp(prefix="remote.", dir=directory)
        path = Path(name)
        h = hashlib.new(HASH_ALGORITHM)
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self.object_key(digest))["Body"]
            with os.fdopen(fd, "wb") as sink:
                for chunk in iter(lambda: body.read(CHUNK), b""):
                    h.update(chunk)
                    sink.write(chunk)
        except (BotoCoreError, ClientError, OSError) as exc:
            path.unlink(missing_ok=True)
            raise self._error("download", digest, exc) from None
        actual = f"{HASH_ALGORITHM}:{h.hexdigest()}"
        if actual != digest:
            path.unlink(missing_ok=True)
            raise IntegrityError(key=None, path=f"{self.url}/{self.object_key(digest)}", expected=digest, actual=actual)
        return path


def remote_from_env(url: str | None = None) -> RemoteStore | None:
    url = url or os.environ.get(REMOTE_ENV)
    return RemoteStore(url) if url else None


def push_artifacts(records, store) -> tuple[int, int]:
    """Upload each artifact's objects to ``store``'s remote, every one re-checked first (a damaged
    object is never uploaded). Returns (uploaded, already there)."""
    if store.remote is None:
        raise UsageError("no remote store configured: --remote s3://bucket/prefix or BUILDSYS_REMOTE")
    uploaded = present = 0
    for record in records:
        for f in record.files:
            store.read_verified(f.digest, key=record.key, name=f.name)
            if store.remote.push(f.digest, store.object_path(f.digest)):
                uploaded += 1
            else:
                present += 1
    return uploaded, present
