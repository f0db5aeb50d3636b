"""Into the store and the registry: files first, manifest next, the registry row last.

A crash at any point leaves either nothing registered or a whole artifact (the
objects are renamed into place whole; the row, written last, is what makes them
an artifact). Builds publish what they staged (``publish``); release imports
check an artifact built elsewhere completely before publishing it
(``check_files``, then ``publish_checked``). Imports neither torch nor TVM.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from buildsys.artifacts import manifest as manifest_format
from buildsys.errors import BuildsysError, TrustError
from buildsys.pipeline.keys import build_key
from buildsys.artifacts.manifest import MANIFEST_NAME
from buildsys.artifacts.registry import FileRecord, NewArtifact
from buildsys.format.status import ArtifactStatus, artifact_status
from buildsys.config.spec import BuildSpec
from buildsys.artifacts.store import Store


def publish(outcome, spec: BuildSpec, store: Store, registry):
    """Files into the store first, manifest next, registry row last."""
    files = []
    manifest = dict(outcome.manifest)
    manifest["files"] = {}
    for name, path in sorted(outcome.staged.items()):
        digest, size = store.put(path)
        files.append(FileRecord(name, digest, size))
        manifest["files"][name] = {"digest": digest, "size": size}
    manifest_digest, manifest_size = store.put_bytes(manifest_format.dumps(manifest), name="manifest")
    files.append(FileRecord(MANIFEST_NAME, manifest_digest, manifest_size))
    return _register(registry, outcome.key, spec, manifest, manifest_digest, files, outcome.metrics)


def _register(registry, key: str, spec: BuildSpec, manifest: Mapping, manifest_digest: str,
              files: list[FileRecord], metrics: Mapping[str, tuple[float, str]]):
    """The registry row, written last (its files are already in the store). An artifact whose
    manifest says nothing could run it is registered as unverified."""
    parity = manifest["parity"]
    return registry.publish(NewArtifact(
        key=key, model=spec.model.name, task=spec.model.task, input_size=spec.size_label,
        target=spec.target, opt_level=spec.opt_level, disabled_passes=spec.disabled_passes,
        spec=spec.to_dict(), key_material=manifest["key_material"], toolchain=manifest["toolchain"],
        manifest_digest=manifest_digest, files=tuple(files), metrics=metrics,
        parity_max_abs=parity["max_abs"], parity_max_rel=parity["max_rel"],
        status=artifact_status(manifest)))


@dataclass(frozen=True)
class CheckedImport:
    """An artifact built elsewhere whose staged files passed every check (``check_files``);
    ``publish_checked`` then puts it into the store and the registry without reading it again."""

    key: str
    staged: Mapping[str, Path]
    manifest: Mapping
    spec: BuildSpec
    metrics: Mapping[str, float]


def check_files(key: str, staged: Mapping[str, Path], metrics: Mapping[str, float] | None = None) -> CheckedImport:
    """Everything about an artifact built elsewhere (a release import), checked before any of it is
    written: its manifest must name this key, its key must be the hash of its key material, its files
    must be what it lists, and the fields the registry row needs must be there with the right types.
    Raises TrustError; never a KeyError or TypeError from a hostile manifest."""
    from buildsys.artifacts.digests import digest_file
    from buildsys.config.spec import spec_from_manifest

    if MANIFEST_NAME not in staged:
        raise TrustError(f"artifact {key[:12]} comes without its {MANIFEST_NAME}")
    try:
        manifest = manifest_format.loads(Path(staged[MANIFEST_NAME]).read_bytes(), key=key)
    except BuildsysError as exc:
        raise TrustError(f"artifact {key[:12]}: {exc}") from None
    try:
        if manifest.get("key") != key or build_key(manifest["key_material"]) != key:
            raise TrustError(f"artifact {key[:12]}: its manifest names another key, or its key is not the hash "
                             "of its key material")
        listed = manifest.get("files")
        if not isinstance(listed, dict) or not all(isinstance(v, dict) for v in listed.values()):
            raise TrustError(f"artifact {key[:12]}: its manifest's files are not a mapping of name to digest")
        if set(listed) != set(staged) - {MANIFEST_NAME}:
            raise TrustError(f"artifact {key[:12]}: files {sorted(set(staged) - {MANIFEST_NAME})} but the manifest "
                             f"lists {sorted(listed)}")
        for name, info in listed.items():
            if digest_file(staged[name]) != info.get("digest"):
                raise TrustError(f"artifact {key[:12]}: {name} does not match its manifest")
        parity = manifest["parity"]
        unverified = artifact_status(manifest) == ArtifactStatus.UNVERIFIED
        for field_name in ("max_abs", "max_rel"):
            if unverified and parity[field_name] is None:
                continue  # never measured, and the row says so
            if not isinstance(parity[field_name], (int, float)) or isinstance(parity[field_name], bool):
                raise TrustError(f"artifact {key[:12]}: parity.{field_name} is not a number")
        if not isinstance(manifest["toolchain"], dict) or not isinstance(manifest["key_material"], dict):
            raise TrustError(f"artifact {key[:12]}: toolchain and key_material must be mappings")
        spec = spec_from_manifest(manifest)
    except TrustError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        raise TrustError(f"artifact {key[:12]}: its manifest is malformed ({type(exc).__name__}: {exc})") from None
    metrics = dict(metrics or {})
    if not all(isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool)
               for k, v in metrics.items()):
        raise TrustError(f"artifact {key[:12]}: its metrics are not a mapping of name to number")
    return CheckedImport(key, dict(staged), manifest, spec, metrics)


def publish_checked(checked: CheckedImport, store: Store, registry):
    """Files into the store, the registry row last (``check_files`` has passed)."""
    files = []
    for name, path in sorted(checked.staged.items()):
        digest, size = store.put(path)
        files.append(FileRecord(name, digest, size))
    manifest_digest = next(f.digest for f in files if f.name == MANIFEST_NAME)
    return _register(registry, checked.key, checked.spec, checked.manifest, manifest_digest, files,
                     {name: (value, "") for name, value in checked.metrics.items()})
