"""``buildsys build --check-repro KEY``: rebuild an artifact aside and compare it byte for byte.

The rebuild runs the normal build (export, compile, verify) into a temporary
staging directory; nothing is published. Each file is compared by digest;
for a file that differs, the report says what differs where it can tell:
the weights container with the same arrays, the shared library's size and
first differing byte, the manifest fields (some are volatile by design:
when and where it was built, how long each stage took, measured latency).
"""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

import numpy as np

from buildsys.pipeline import isolation
from buildsys.artifacts.digests import digest_file
from buildsys.artifacts import manifest as manifest_format
from buildsys.artifacts.manifest import LIBRARY_NAME, PARAMS_NAME

VOLATILE_FIELDS = {"created_at": "build time", "timings": "stage durations", "latency": "measured latency",
                   "build_host": "host name", "files": "digests of the files above"}


def _first_difference(a: bytes, b: bytes) -> int | None:
    for offset, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return offset
    return None if len(a) == len(b) else min(len(a), len(b))


def _explain_params(stored: bytes, rebuilt: bytes) -> str:
    with np.load(io.BytesIO(stored)) as a, np.load(io.BytesIO(rebuilt)) as b:
        if sorted(a.files) != sorted(b.files):
            return f"different arrays ({len(a.files)} stored, {len(b.files)} rebuilt)"
        changed = [n for n in sorted(a.files) if a[n].shape != b[n].shape or not np.array_equal(a[n], b[n])]
    if not changed:
        return ("same arrays, different container bytes (np.savez stamped zip members with the time; "
                "buildsys now writes params.npz deterministically)")
    return f"{len(changed)} arrays differ in value (first: {changed[0]})"


def check_repro(record, spec, store) -> dict:
    """Rebuild ``record`` from ``spec`` and compare. Returns a report (JSON-able)."""
    from buildsys.pipeline.build import build_artifact

    stored_manifest = manifest_format.read_stored(store, record)
    report: dict = {"key": record.key, "label": spec.describe(), "files": {}, "manifest": {}}
    (store.root / "tmp").mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"repro-{record.key[:12]}-", dir=store.root / "tmp") as tmp:
        args = (spec, record.key, record.key_material, tmp, str(store.root))
        if isolation.in_process():
            outcome = build_artifact(*args)
        else:  # a fresh process, like the build it is compared with (its recorded sources too)
            outcome = isolation.run_isolated(build_artifact, args, key=record.key)
        for name in (LIBRARY_NAME, PARAMS_NAME):
            stored_digest = record.file(name).digest
            rebuilt_path = Path(outcome.staged[name])
            rebuilt_digest = digest_file(rebuilt_path)
            entry = {"identical": stored_digest == rebuilt_digest, "stored": stored_digest, "rebuilt": rebuilt_digest}
            if not entry["identical"]:
                stored_bytes = store.read_verified(stored_digest, key=record.key, name=name)
                rebuilt_bytes = rebuilt_path.read_bytes()
                if name == PARAMS_NAME:
                    entry["why"] = _explain_params(stored_bytes, rebuilt_bytes)
                else:
                    offset = _first_difference(stored_bytes, rebuilt_bytes)
                    entry["why"] = (f"compiler output differs: {len(stored_bytes)} vs {len(rebuilt_bytes)} bytes, "
                                    f"first difference at byte {offset}")
            report["files"][name] = entry
    rebuilt_manifest = outcome.manifest
    differing = sorted(k for k in set(stored_manifest) | set(rebuilt_manifest)
                       if stored_manifest.get(k) != rebuilt_manifest.get(k) and k != "files")
    report["manifest"] = {
        "volatile": {k: VOLATILE_FIELDS[k] for k in differing if k in VOLATILE_FIELDS},
        "differing": [k for k in differing if k not in VOLATILE_FIELDS],
    }
    report["reproducible"] = all(f["identical"] for f in report["files"].values()) and not report["manifest"]["differing"]
    return report


def check_repro_ref(ws, ref: str, on_start=None) -> dict:
    """``buildsys build --check-repro REF``: the artifact rebuilt from the spec that made it."""
    record = ws.registry.resolve(ref)
    spec = ws.spec_of(record, ws.matrix_specs())
    if on_start is not None:
        on_start(f"rebuilding {spec.describe()} ({record.key[:12]}) aside ...")
    return check_repro(record, spec, ws.store)
