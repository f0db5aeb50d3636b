"""The manifest that travels with every artifact (``manifest.json``).

It makes an artifact self-describing without the registry: key and key
material, spec, file digests, toolchain and runtime versions, I/O signature,
pass trace, parity and timing figures. Builder writes it; the runtime reads
it. Bump ``MANIFEST_FORMAT`` when a reader would misread an older one.
"""

from __future__ import annotations

import json
import re
from typing import Any, Mapping

from buildsys.errors import CompatibilityError, TrustError
from buildsys.format.signature import check_io

MANIFEST_FORMAT = 1
MANIFEST_NAME = "manifest.json"
LIBRARY_NAME = "lib.so"
PARAMS_NAME = "params.npz"
MAX_MANIFEST_BYTES = 16 << 20  # a manifest has tens of KiB (the pass trace is the bulk)
_KEY = re.compile(r"[0-9a-f]{64}")
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_FILE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}")  # one plain name: no '/', no '..'


def dumps(manifest: Mapping[str, Any]) -> bytes:
    return (json.dumps(manifest, sort_keys=True, indent=2) + "\n").encode("utf-8")


def loads(data: bytes, *, key: str | None = None) -> dict:
    try:
        manifest = json.loads(data)
    except (ValueError, RecursionError) as exc:  # RecursionError: arrays nested thousands deep
        raise CompatibilityError(f"artifact {key or '?'}: manifest.json is not JSON: "
                                 f"{exc if isinstance(exc, ValueError) else 'nested too deeply'}") from None
    fmt = manifest.get("manifest_format") if isinstance(manifest, dict) else None
    if type(fmt) is not int or fmt != MANIFEST_FORMAT:  # true == 1 and 1.0 == 1 in Python
        raise CompatibilityError(
            f"artifact {key or '?'}: manifest format {fmt!r}, this buildsys reads format {MANIFEST_FORMAT}; "
            "rebuild it with this buildsys (`buildsys build --force --only key=<KEY>`)")
    return manifest


def read_stored(store, record=None, *, digest: str | None = None, key: str | None = None) -> dict:
    """An artifact's manifest from the store: its bytes checked against the registry's digest, then
    its format. The one place a stored manifest is read (``record`` or ``digest`` and ``key``)."""
    if record is not None:
        digest, key = record.manifest_digest, record.key
    return loads(store.read_verified(digest, key=key, name=MANIFEST_NAME), key=key)


def check_loadable(manifest: Mapping[str, Any], where: str) -> None:
    """Refuse a manifest that lacks a field the runtime reads, or holds it with another type.

    A bundle's manifest is input like any other (no schema library here: the runtime stays
    small); without this a missing ``files`` or a string where an entry belongs ends in a
    KeyError or TypeError while the artifact is being loaded.
    """
    def refuse(what: str):
        raise TrustError(f"{where}: manifest.json {what}; it is not a manifest buildsys wrote: export the bundle "
                         "again (`buildsys export KEY`) or rebuild the artifact")

    def mapping(parent: Mapping, name: str, path: str, required: bool = True) -> Mapping:
        if name not in parent and not required:
            return {}
        value = parent.get(name)
        if not isinstance(value, dict):
            refuse(f"has no {path} mapping" if name not in parent else f"field {path} is {_kind(value)}, not a mapping")
        return value

    key = manifest.get("key")
    if not isinstance(key, str) or not _KEY.fullmatch(key):
        refuse(f"field key is {_shown(key)}, not a 64-digit hex build key")
    files = mapping(manifest, "files", "files")
    for name in (LIBRARY_NAME, PARAMS_NAME):
        if name not in files:
            refuse(f"lists no {name} under files")
    if len(files) > 16:
        refuse(f"lists {len(files)} files; an artifact has a handful")
    for name, entry in files.items():
        if not _FILE_NAME.fullmatch(name):
            refuse(f"lists the file {_shown(name)}; only plain file names in the bundle are accepted")
        if not isinstance(entry, dict):
            refuse(f"entry files.{name} is {_kind(entry)}, not a mapping with digest and size")
        if not isinstance(entry.get("digest"), str) or not _DIGEST.fullmatch(entry["digest"]):
            refuse(f"entry files.{name} has digest {_shown(entry.get('digest'))}, not sha256:<64 hex digits>")
        size = entry.get("size")
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            refuse(f"entry files.{name} has size {_shown(size)}, not a whole number of bytes")
    tvm = mapping(manifest, "runtime", "runtime").get("tvm")
    if not isinstance(tvm, str):
        refuse(f"field runtime.tvm is {_shown(tvm)}, not a version")
    features = mapping(manifest, "cpu", "cpu", required=False).get("required_features", [])
    if not isinstance(features, list) or not all(isinstance(f, str) for f in features):
        refuse("field cpu.required_features is not a list of names")
    spec = mapping(manifest, "spec", "spec")
    mapping(spec, "target", "spec.target", required=False)
    task = mapping(spec, "model", "spec.model").get("task")
    if not isinstance(task, str):
        refuse(f"field spec.model.task is {_shown(task)}, not a task name")
    io = mapping(manifest, "io", "io")
    shape = mapping(io, "input", "io.input").get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0
                                              for d in shape) or not 1 <= len(shape) <= 8:
        refuse(f"field io.input.shape is {_shown(shape)}, not a list of sizes")
    outputs = io.get("outputs")
    if not isinstance(outputs, list) or not all(isinstance(o, dict) and isinstance(o.get("name"), str)
                                                for o in outputs):
        refuse("field io.outputs is not a list of {name: ...} mappings")
    if len(shape) < 2:
        refuse(f"field io.input.shape is {_shown(shape)}, not an image shape")
    if "inputs" in io:
        check_io(io, refuse, _shown)
    detection = mapping(manifest, "detection", "detection", required=False)
    frame = detection.get("boxes_frame")
    if frame is not None and not (isinstance(frame, list) and len(frame) == 2 and all(
            isinstance(d, (int, float)) and not isinstance(d, bool) and d > 0 for d in frame)):
        refuse(f"field detection.boxes_frame is {_shown(frame)}, not [height, width]")
    categories = detection.get("categories")
    if categories is not None and not (isinstance(categories, list) and all(isinstance(c, str) for c in categories)):
        refuse("field detection.categories is not a list of names")
    if "cuda" in manifest:
        _check_cuda(mapping(manifest, "cuda", "cuda"), refuse)
    if not isinstance(manifest.get("label"), str):
        refuse(f"field label is {_shown(manifest.get('label'))}, not text")


_CUDA_ARCH = re.compile(r"sm_[0-9]{2,3}[a-z]?")
_VERSION = re.compile(r"[0-9]{1,3}\.[0-9]{1,3}")


def _check_cuda(cuda: Mapping, refuse) -> None:
    """A CUDA artifact's ``cuda`` section, as the loader's GPU check (runtime/gpu.py) reads it."""
    archs = cuda.get("archs")
    if not isinstance(archs, list) or not 1 <= len(archs) <= 32 or not all(
            isinstance(a, str) and _CUDA_ARCH.fullmatch(a) for a in archs):
        refuse(f"field cuda.archs is {_shown(archs)}, not a list of GPU architectures (sm_80, ...)")
    if not isinstance(cuda.get("ptx", False), bool):
        refuse(f"field cuda.ptx is {_shown(cuda.get('ptx'))}, not true or false")
    for name in ("cuda_version", "min_driver"):
        value = cuda.get(name)
        if value is not None and not (isinstance(value, str) and (name == "min_driver" or _VERSION.fullmatch(value))
                                      and len(value) <= 32):
            refuse(f"field cuda.{name} is {_shown(value)}, not a version")


def _kind(value: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "text", bool: "true/false", type(None): "null"}.get(
        type(value), "a number" if isinstance(value, (int, float)) else type(value).__name__)


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


PARAMS_ALIGNMENT = 64  # bytes: where each array's data starts in params.npz (TVM's kernels want it)
_ALIGNMENT_EXTRA_ID = 0xD935  # the zip extra field Android's zipalign pads with; readers skip it


def write_params(path, arrays) -> None:
    """``params.npz`` that ``np.load`` reads, byte-identical for identical arrays: np.savez
    stamps each zip member with the current time, which would make every rebuild differ.

    Members are stored, and each one's local header is padded (an extra field, as zipalign
    does) so that its data starts at a multiple of PARAMS_ALIGNMENT; npy pads its own header to
    64 bytes, so every array's data is aligned in the file, and the loader's views into the
    file's bytes can go to TVM without a copy."""
    import struct
    import zipfile

    import numpy as np

    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        for i, array in enumerate(arrays):
            info = zipfile.ZipInfo(f"p{i:05d}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            info.extra = struct.pack("<HH", _ALIGNMENT_EXTRA_ID, 0)
            info.CRC = info.compress_size = info.file_size = 0  # set again by open(); FileHeader needs them
            data_at = archive.fp.tell() + len(info.FileHeader(zip64=True))  # the header open() writes next
            padding = -data_at % PARAMS_ALIGNMENT
            info.extra = struct.pack("<HH", _ALIGNMENT_EXTRA_ID, padding) + bytes(padding)
            with archive.open(info, "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.ascontiguousarray(array), allow_pickle=False)
