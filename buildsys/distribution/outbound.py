"""``buildsys export``: artifacts out of the store, as a release tar or as bundle directories."""

from __future__ import annotations

from buildsys.errors import UsageError


def export_artifacts(ws, refs, *, export_all: bool = False, out_path: str, sign_key: str | None = None,
                     allow_unverified: bool = False) -> list[str]:
    """A release tar when ``out_path`` ends in .tar (artifacts + a signed manifest, for ``buildsys
    import``), else a bundle directory per artifact (loadable directly). Returns a line per result.
    A signature vouches for what it signs: artifacts never verified against PyTorch (built for a
    machine nothing here could run) are refused when signing, unless ``allow_unverified``."""
    from buildsys.format.status import ArtifactStatus
    from buildsys.artifacts.signing import load_private_key

    if not refs and not export_all:
        raise UsageError("name artifacts to export (KEY, prefix or alias), or pass --all")
    private_key = load_private_key(sign_key)
    records = ws.records(() if export_all else refs)
    unverified = [r for r in records if r.status == ArtifactStatus.UNVERIFIED]
    if unverified and private_key is not None and not allow_unverified:
        named = ", ".join(f"{r.key[:12]} ({r.model}, {_built_for(r.target)})" for r in unverified)
        raise UsageError(
            f"{len(unverified)} of the artifacts to sign were never verified against PyTorch (no machine or emulator "
            f"could run them): {named}; "
            "verify them (for another CPU: install qemu-user-static and rebuild with --force, or on a board over "
            "RPC; CUDA code: parity on a GPU is not implemented yet) or pass --allow-unverified to sign them anyway")
    if out_path.endswith(".tar"):
        from buildsys.distribution.release import export_release

        manifest = export_release(records, ws.store, ws.registry, out_path, private_key)
        return [f"{out_path}: {len(manifest['artifacts'])} artifacts, "
                f"{'signed' if private_key is not None else 'NOT signed (no --sign-key)'}"]
    from buildsys.distribution.bundle import export_bundle

    return [f"{record.key[:12]} -> {export_bundle(record, ws.store, out_path, private_key)}" for record in records]


def _built_for(target) -> str:
    if target.get("kind") == "cuda":
        return f"cuda {','.join(target.get('arch', []))}"
    return target.get("mtriple", "host")
