"""Release bundles: artifacts in one tar with a signed manifest, and their import elsewhere.

Layout (a plain, deterministic tar: sorted names, mtime 0, uid/gid 0)::

    release/manifest.json          what is inside: keys, files and digests, specs, versions,
                                   parity and bench figures, aliases
    release/manifest.json.sig      ed25519 signature of manifest.json (hex), when signed
    release/<key>/manifest.json    each artifact's own manifest, byte for byte
    release/<key>/lib.so
    release/<key>/params.npz

Import treats the archive as hostile: only regular files and directories under
``release/`` are accepted (no absolute paths, no ``..``, no links, devices or
FIFOs, no duplicate names, bounded sizes); files are read member by member
(never ``extractall``), hashed while copied into the store, and checked
against both manifests. With a public key configured, a missing or bad
signature is refused before anything is written.

Keys and signatures: ``signing.py``.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import lzma
import tarfile
import tempfile
import zlib
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath

from buildsys.artifacts.space import describe_os_error
from buildsys.errors import StoreError, TrustError, UsageError
from buildsys.artifacts.digests import HASH_ALGORITHM, canonical_json, split_digest
from buildsys.artifacts.manifest import MANIFEST_NAME
from buildsys.artifacts.signing import SIGNATURE_NAME, generate_keypair, load_private_key, load_public_key, verify_signature
from buildsys.artifacts.store import Store

__all__ = ["export_release", "import_release", "generate_keypair", "load_private_key", "load_public_key"]

RELEASE_FORMAT = 1
ROOT = "release"
MAX_MEMBER_BYTES = 8 << 30  # a shared library or weights file larger than this is not ours
MAX_MEMBERS = 10000


# ---------------------------------------------------------------- export

def _add(tar: tarfile.TarFile, name: str, data: bytes | None = None, path: Path | None = None) -> None:
    info = tarfile.TarInfo(name)
    info.mtime, info.uid, info.gid, info.uname, info.gname, info.mode = 0, 0, 0, "", "", 0o644
    if path is not None:
        info.size = path.stat().st_size
        with open(path, "rb") as handle:
            tar.addfile(info, handle)
    else:
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))


def _created_at() -> str:
    """Now, or SOURCE_DATE_EPOCH where set (the reproducible-builds convention): a release job that
    sets it gets the same tar bytes from the same artifacts."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    if epoch is None:
        moment = datetime.now(timezone.utc)
    else:
        try:
            moment = datetime.fromtimestamp(int(epoch), timezone.utc)
        except (ValueError, OverflowError, OSError):
            raise UsageError(f"SOURCE_DATE_EPOCH={epoch!r} is not a whole number of seconds since 1970") from None
    return moment.isoformat(timespec="seconds")


def export_release(records, store: Store, registry, out: str | os.PathLike, private_key=None) -> dict:
    """Write ``out`` (a tar). Every file is re-hashed on the way out. Returns the release manifest."""
    out = Path(out)
    artifacts = []
    with tempfile.TemporaryDirectory(prefix="buildsys-release-") as tmp:
        staged = []
        for record in sorted(records, key=lambda r: r.key):
            files = {}
            for f in record.files:
                dest = Path(tmp) / record.key / f.name
                dest.parent.mkdir(parents=True, exist_ok=True)
                store.copy_verified(f.digest, dest, key=record.key, name=f.name)
                files[f.name] = {"digest": f.digest, "size": f.size}
                staged.append((f"{ROOT}/{record.key}/{f.name}", dest))
            bench = registry.benchmarks(record.key, limit=1)
            artifacts.append({"key": record.key, "model": record.model, "input_size": record.input_size,
                              "files": files, "spec": record.spec, "toolchain": record.toolchain,
                              "parity_max_rel": record.parity_max_rel, "status": record.status,
                              "metrics": dict(record.metrics),
                              "aliases": list(record.aliases), "manifest_digest": record.manifest_digest,
                              "bench": bench[0].results if bench else None})
        manifest = {"release_format": RELEASE_FORMAT, "created_at": _created_at(), "artifacts": artifacts}
        data = canonical_json(manifest)
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            partial = out.with_name(f".{out.name}.{os.getpid()}.partial")
            with tarfile.open(partial, "w", format=tarfile.PAX_FORMAT) as tar:
                _add(tar, f"{ROOT}/{MANIFEST_NAME}", data)
                if private_key is not None:
                    _add(tar, f"{ROOT}/{SIGNATURE_NAME}", private_key.sign(data).hex().encode() + b"\n")
                for name, path in sorted(staged):
                    _add(tar, name, path=path)
            os.replace(partial, out)
        except OSError as exc:
            with contextlib.suppress(OSError, UnboundLocalError):
                partial.unlink()  # no half-written release stays behind
            raise StoreError(f"cannot write {out}: {describe_os_error(exc, exc.filename or out)}") from None
    return manifest


# ---------------------------------------------------------------- import

def _checked_members(tar: tarfile.TarFile) -> dict[str, tarfile.TarInfo]:
    """Every member, checked before anything is read: name -> member."""
    members: dict[str, tarfile.TarInfo] = {}
    for count, member in enumerate(tar, start=1):
        if count > MAX_MEMBERS:
            raise TrustError(f"the archive has more than {MAX_MEMBERS} members")
        name = member.name
        path = PurePosixPath(name)
        if "\\" in name:  # a Windows separator: neither absolute nor a plain name
            raise TrustError(f"archive member {name!r}: backslashes are refused (a release's names use '/', "
                             f"all under {ROOT}/)")
        if path.is_absolute() or name.startswith("/"):
            raise TrustError(f"archive member {name!r}: absolute paths are refused")
        if ".." in path.parts or path.parts[:1] != (ROOT,):
            raise TrustError(f"archive member {name!r}: only paths under {ROOT}/ without '..' are accepted")
        if member.isdir():
            continue
        if not member.isreg():
            kind = "link" if (member.issym() or member.islnk()) else "device or special file"
            raise TrustError(f"archive member {name!r}: a {kind}; only regular files are accepted")
        if member.size > MAX_MEMBER_BYTES:
            raise TrustError(f"archive member {name!r}: {member.size} bytes is more than an artifact holds")
        if name in members:
            raise TrustError(f"archive member {name!r} appears twice")
        members[name] = member
    _check_archive_end(tar)
    return members


def _check_archive_end(tar: tarfile.TarFile) -> None:
    """tarfile stops listing members, without a word, at a header it cannot read past the first:
    a damaged stream then read as a shorter archive ("lib.so is listed but missing"). The members
    must end at the end-of-archive marker (a zero block), and a compressed stream must end whole
    (gzip checks its CRC there: corruption that still inflates is found)."""
    tar.fileobj.seek(tar.offset)
    block = tar.fileobj.read(tarfile.BLOCKSIZE)
    if block.count(0) != tarfile.BLOCKSIZE:
        what = "ends before its end-of-archive marker" if len(block) < tarfile.BLOCKSIZE else \
            f"has a damaged member header at byte {tar.offset}"
        raise TrustError(f"the archive {what}: it is truncated or corrupt; get the release again")
    while tar.fileobj.read(1 << 20):  # the rest: padding, then a compressed stream's own check
        pass


def _release_entries(manifest, path) -> list[dict]:
    """The release manifest's artifact entries, their structure checked (it is hostile input)."""
    if not isinstance(manifest, dict):
        raise TrustError(f"{path}: the release manifest is not a JSON object")
    if manifest.get("release_format") != RELEASE_FORMAT or isinstance(manifest.get("release_format"), bool):
        raise TrustError(f"{path}: release format {manifest.get('release_format')!r}; "
                         f"this buildsys reads {RELEASE_FORMAT}")
    entries = manifest.get("artifacts")
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise TrustError(f"{path}: the release manifest's artifacts are not a list of objects")
    seen = set()
    for entry in entries:
        key = entry.get("key")
        if not (isinstance(key, str) and len(key) == 64 and all(c in "0123456789abcdef" for c in key)):
            raise TrustError(f"{path}: {key!r} is not an artifact key")
        if key in seen:
            raise TrustError(f"{path}: artifact {key[:12]} is listed twice")
        seen.add(key)
        files = entry.get("files")
        if not isinstance(files, dict) or MANIFEST_NAME not in files:
            raise TrustError(f"{path}: the files of {key[:12]} are not a mapping that includes {MANIFEST_NAME}")
        for name, info in files.items():
            if not isinstance(name, str) or "/" in name or "\\" in name or name in ("", ".", ".."):
                raise TrustError(f"{path}: the files of {key[:12]} are refused ({name!r})")
            try:
                split_digest(info["digest"])
            except (ValueError, TypeError, KeyError, AttributeError):
                raise TrustError(f"{path}: {key[:12]}/{name} has no valid digest") from None
        aliases = entry.get("aliases", [])
        if not isinstance(aliases, list) or not all(isinstance(a, str) and a and not any(c.isspace() for c in a)
                                                    for a in aliases):
            raise TrustError(f"{path}: the aliases of {key[:12]} are not a list of names")
        if not isinstance(entry.get("metrics") or {}, dict):
            raise TrustError(f"{path}: the metrics of {key[:12]} are not a mapping")
    return entries


def import_release(path: str | os.PathLike, store: Store, registry, public_key=None,
                   set_aliases: bool = True) -> list[str]:
    """Verify ``path`` and register its artifacts (files into the store, rows into the
    registry). Returns the keys imported; artifacts already registered are checked and kept.

    All or nothing: every artifact of the release is read, hashed and checked (both manifests,
    every digest, the key material) before the first one is written; a release refused for any
    reason leaves no object, row or alias behind."""
    try:
        return _import_release(path, store, registry, public_key, set_aliases)
    except (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, OSError) as exc:
        # Staging and store errors are translated where they happen; what is left is reading the archive
        # (a cut gzip stream is an EOFError, a bad bzip2 one an OSError).
        raise TrustError(f"{path}: the archive is truncated, corrupt or unreadable "
                         f"({type(exc).__name__}: {exc})") from None


def _import_release(path, store: Store, registry, public_key, set_aliases: bool) -> list[str]:
    from buildsys.pipeline.publish import check_files, publish_checked

    path = Path(path)
    try:
        if not path.is_file():
            raise UsageError(f"{path}: not a regular file")
        tar = tarfile.open(path, "r:*")
    except (OSError, tarfile.TarError) as exc:
        raise UsageError(f"{path}: not a readable tar archive ({exc})") from None
    with tar:
        members = _checked_members(tar)

        def read(name: str, limit: int = 64 << 20) -> bytes:
            member = members.get(f"{ROOT}/{name}")
            if member is None:
                raise TrustError(f"{path}: {ROOT}/{name} is missing")
            if member.size > limit:
                raise TrustError(f"{path}: {ROOT}/{name} is too large ({member.size} bytes)")
            return tar.extractfile(member).read()

        data = read(MANIFEST_NAME)
        if public_key is not None:
            signature = read(SIGNATURE_NAME, 4096) if f"{ROOT}/{SIGNATURE_NAME}" in members else None
            verify_signature(public_key, data, signature, f"release {path}")
        try:
            manifest = json.loads(data)
        except (ValueError, RecursionError) as exc:
            raise TrustError(f"{path}: the release manifest is not JSON ({exc})") from None
        entries = _release_entries(manifest, path)
        listed = {f"{ROOT}/{MANIFEST_NAME}", f"{ROOT}/{SIGNATURE_NAME}"}
        for entry in entries:
            for name in entry["files"]:
                if f"{ROOT}/{entry['key']}/{name}" not in members:
                    raise TrustError(f"{path}: {ROOT}/{entry['key']}/{name} is listed but missing")
                listed.add(f"{ROOT}/{entry['key']}/{name}")
        unlisted = sorted(set(members) - listed)
        if unlisted:
            raise TrustError(f"{path}: members not in the release manifest: {', '.join(unlisted[:5])}")
        try:
            store.root.joinpath("tmp").mkdir(parents=True, exist_ok=True)
            staging = tempfile.TemporaryDirectory(prefix="buildsys-import-", dir=store.root / "tmp")
        except OSError as exc:
            raise StoreError(f"cannot stage the import under {store.root / 'tmp'}: "
                             f"{describe_os_error(exc, exc.filename or store.root / 'tmp')}") from None
        with staging as tmp:
            # Phase 1: stage and check everything; nothing is in the store or the registry yet.
            checked = []
            for entry in entries:
                key = entry["key"]
                staged = {}
                for name, info in entry["files"].items():
                    member_name = f"{ROOT}/{key}/{name}"
                    dest = Path(tmp) / key / name
                    dest.parent.mkdir(exist_ok=True)
                    digest = hashlib.new(HASH_ALGORITHM)
                    try:
                        with tar.extractfile(members[member_name]) as source, open(dest, "wb") as sink:
                            for chunk in iter(lambda: source.read(1 << 20), b""):
                                digest.update(chunk)
                                sink.write(chunk)
                    except OSError as exc:
                        raise StoreError(f"cannot stage {member_name}: "
                                         f"{describe_os_error(exc, dest, needed=info.get('size'))}") from None
                    actual = f"{HASH_ALGORITHM}:{digest.hexdigest()}"
                    if actual != info["digest"]:
                        raise TrustError(f"{path}: {member_name} has digest {actual}, the release "
                                         f"manifest says {info['digest']}")
                    staged[name] = dest
                checked.append(check_files(key, staged, metrics=entry.get("metrics")))
            # Phase 2: the whole release passed; publish it.
            imported = []
            for item, entry in zip(checked, entries):
                if registry.get(item.key) is None:
                    publish_checked(item, store, registry)
                    imported.append(item.key)
            if set_aliases:
                for entry in entries:
                    for alias in entry.get("aliases", []):
                        registry.set_alias(alias, entry["key"])
    return imported
