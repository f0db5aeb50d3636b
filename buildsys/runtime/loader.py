"""Resolve -> verify -> load -> predict, with TVM's runtime library alone."""

from __future__ import annotations

import errno
import os
import re
import shutil
import stat
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from buildsys.artifacts import manifest as manifest_format
from buildsys import platforms
from buildsys.runtime.cpu import HostFacts, host_facts, missing_features
from buildsys.errors import CompatibilityError, IntegrityError, TrustError
from buildsys.artifacts.locations import resolve_locations
from buildsys.artifacts.manifest import LIBRARY_NAME, MANIFEST_NAME, PARAMS_NAME
from buildsys.artifacts.registry.lookup import resolve as resolve_sqlite
from buildsys.artifacts.registry.lookup import sqlite_path
from buildsys.artifacts.store import Store, copy_verified, read_verified
from buildsys.format.versions import runtime_versions
from buildsys.runtime.detections import image_to_input, to_detections
from buildsys.runtime.ffi import outputs_to_numpy, runtime_ffi, to_device
from buildsys.runtime.params import read_params
from buildsys.format.signature import Signature
from buildsys.runtime.gpu import GpuFacts, check_gpu

def _base_version(version: str | None) -> str | None:
    return version.split("+")[0].split(".post")[0] if version else version


def _built_for(manifest: Mapping[str, Any]) -> tuple[str | None, str]:
    """(architecture, "triple (cpu)" in words) an artifact was built for, from its manifest; the
    architecture is None for a manifest from before buildsys recorded it (its ELF header decides)."""
    cpu = manifest.get("cpu", {})
    target = manifest.get("spec", {}).get("target", {})
    if not isinstance(target, Mapping):
        target = {}
    arch = cpu.get("arch") if isinstance(cpu.get("arch"), str) else None
    triple = cpu.get("triple") or target.get("mtriple")
    if arch is None and isinstance(triple, str):
        arch = platforms.triple_arch(triple)
    mcpu = target.get("mcpu")
    words = (f"{triple} ({mcpu})" if triple and mcpu else str(triple or mcpu or arch or "a generic target"))
    return arch, words


def _foreign(built_arch: str, words: str, host: HostFacts, key: str, what: str = "") -> CompatibilityError:
    return CompatibilityError(
        f"artifact {key[:12]} was built for {words}{what}; this machine is {host.machine}, which cannot run it. "
        f"Load it on a machine of that architecture ({built_arch}), or build the entry for this one (target \"llvm -mcpu=native\") "
        "and load that key instead")


def foreign_build(manifest: Mapping[str, Any], host: HostFacts | None = None) -> str | None:
    """"aarch64-linux-gnu (cortex-a72)" when the artifact was built for another architecture than
    ``host``'s (default: this machine), else None."""
    host = host or host_facts()
    built_arch, words = _built_for(manifest)
    return words if built_arch is not None and built_arch != host.arch else None


def check_compatibility(manifest: Mapping[str, Any], key: str, cpu_flags: set[str] | None = None,
                        host: HostFacts | None = None, gpu: GpuFacts | None = None) -> None:
    """Refuse an artifact built for another architecture, for CPU features this host lacks, for a
    GPU this machine has not (runtime/gpu.py), or for another TVM runtime. ``host`` (default: this
    machine), ``cpu_flags`` (its features) and ``gpu`` are injectable: a test checks an ARM
    machine's or a GPU machine's refusals on any host."""
    host = host or host_facts()
    if cpu_flags is not None:
        host = HostFacts(host.machine, frozenset(cpu_flags))
    built_arch, words = _built_for(manifest)
    if foreign_build(manifest, host) is not None:
        raise _foreign(built_arch, words, host, key)
    required = manifest.get("cpu", {}).get("required_features", [])
    lacking = missing_features(required, host.flags)
    if lacking:
        raise CompatibilityError(
            f"artifact {key[:12]} was compiled for {words} and uses CPU features this host "
            f"lacks: {', '.join(lacking)}; running it would crash (SIGILL). Build it for this host "
            "(target \"llvm -mcpu=native\") and load that key instead")
    if isinstance(manifest.get("cuda"), Mapping):
        check_gpu(manifest["cuda"], key, gpu)

    built = manifest.get("runtime", {}).get("tvm")
    installed = runtime_versions()["tvm"]  # what the builder wrote into the manifest, read here
    if installed is None:
        raise CompatibilityError("apache-tvm is not installed; `pip install 'buildsys[runtime]'`")
    if _base_version(built) != _base_version(installed):
        raise CompatibilityError(
            f"artifact {key[:12]} was built with TVM {built}, this runtime is TVM {installed}; the executable "
            f"format is not stable across TVM releases. Rebuild it here (`buildsys build --force --only "
            f"key={key[:12]}`) or install apache-tvm=={built}")


def check_library(library: str | os.PathLike, manifest: Mapping[str, Any], key: str,
                  host: HostFacts | None = None) -> None:
    """The library's own ELF header against this machine, before dlopen (which, for another
    architecture, fails with a misleading "No such file or directory")."""
    host = host or host_facts()
    own = platforms.for_arch(host.arch)
    machine, elf_class = platforms.elf_header(library)
    if own is None or machine == own.elf_machine:
        return
    _, words = _built_for(manifest)
    found = platforms.describe_elf(machine, elf_class)
    raise _foreign(found, words, host, key, f": its {LIBRARY_NAME} is {found} code")


@dataclass
class Predictor:
    """A loaded artifact. ``predictor(x)`` runs it on an NCHW float32 batch; an artifact with
    declared inputs takes them positionally or by name (``predictor(input_ids=..., attention_mask=...)``).
    Inputs are checked against the signature first (``InputError``, a ValueError, names what is wrong)."""

    key: str
    manifest: Mapping[str, Any]
    _vm: Any = field(repr=False)
    _params: list = field(repr=False)
    _workdir: Path = field(repr=False)
    signature: Signature = field(init=False, repr=False)

    def __post_init__(self):
        self.signature = Signature.from_manifest(self.manifest)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The first input at the smallest batch."""
        return tuple(self.manifest["io"]["input"]["shape"])

    @property
    def batch_range(self) -> tuple[int, int]:
        return self.signature.batch_min, self.signature.batch_max

    @property
    def task(self) -> str:
        return self.manifest["spec"]["model"]["task"]

    def detect(self, image: np.ndarray, score_threshold: float = 0.9, max_detections: int | None = 100):
        """An HxWx3 image (uint8 0-255, or float 0-1) -> Detections in its own pixel coordinates."""
        if self.task != "detection":
            raise ValueError(f"artifact {self.key[:12]} is a {self.task} model, not a detector")
        x = image_to_input(image, self.input_shape)
        detections = to_detections(self.run(x), self.manifest, tuple(image.shape[:2]))
        return detections.filter(score_threshold, max_detections)

    def __call__(self, *inputs: np.ndarray, **named: np.ndarray):
        """Detectors given an HxWx3 image return Detections; otherwise the raw outputs."""
        if self.task == "detection" and len(inputs) == 1 and not named and np.ndim(inputs[0]) == 3:
            return self.detect(inputs[0])
        return self.run(*inputs, **named)

    def run(self, *inputs: np.ndarray, **named: np.ndarray) -> list[np.ndarray]:
        """Raw outputs as numpy arrays, in the order the model returns them."""
        arrays = self.signature.bind(inputs, named, self.key)
        return outputs_to_numpy(self._vm["main"](*map(to_device, arrays), *self._params))

    def set_instrument(self, callback) -> None:
        """The VM calls ``callback(func, name, before, ret, *args)`` before and after every kernel
        and builtin it calls (``buildsys profile``); it returns 0 to go on. None turns it off."""
        self._vm["set_instrument"](callback)

    def close(self) -> None:
        shutil.rmtree(self._workdir, ignore_errors=True)

    def __del__(self):  # the private copy of the library is ours to remove
        self.close()


def load_executable(library_path: str | os.PathLike, key: str = "?"):
    """A Relax VM over a compiled library, driven through runtime functions only."""
    ffi = runtime_ffi()
    try:
        vm = ffi.load_module(str(library_path))["vm_load_executable"]()
    except Exception as exc:  # TVM raises its own error types: dlopen failed, or no Relax VM inside
        reason = str(exc).strip().splitlines()[-1:] or [type(exc).__name__]
        raise CompatibilityError(
            f"artifact {key[:12]}: {LIBRARY_NAME} cannot be loaded by this runtime ({reason[0][:300]}); it is "
            f"not a Relax executable for this host: rebuild it here (`buildsys build --force --only "
            f"key={key[:12]}`)") from None
    kind_cpu, pooled_allocator = 1, 2
    try:
        # device (kind, id, allocator) for the computation, then the same for the host
        vm["vm_initialization"](kind_cpu, 0, pooled_allocator, kind_cpu, 0, pooled_allocator)
    except Exception as exc:  # TVM raises its own error types
        missing = re.search(r"Cannot find ffi::Function (\S+)", str(exc))
        if missing:
            raise CompatibilityError(
                f"artifact {key[:12]} calls {missing.group(1)}, which this TVM runtime does not provide; "
                "load it in a process with the full TVM (`import tvm.relax`) or report it") from None
        raise
    return vm


class _StoreFiles:
    """An artifact's files in the content-addressed store, digests from the registry."""

    def __init__(self, store: Store, digests: Mapping[str, str], key: str):
        self.store, self.digests, self.key = store, digests, key

    def read(self, name: str, private: bool = False) -> bytes | memoryview:
        return self.store.read_verified(self.digests[name], key=self.key, name=name, private=private)

    def copy(self, name: str, dest: Path) -> Path:
        return self.store.copy_verified(self.digests[name], dest, key=self.key, name=name)


class _BundleFiles:
    """An exported artifact directory (``buildsys export``): digests and sizes from its manifest.
    Only regular files of the listed size are read; links are refused (a bundle holds its files)."""

    def __init__(self, directory: Path, entries: Mapping[str, Mapping[str, Any]], key: str):
        self.directory, self.entries, self.key = directory, entries, key

    def read(self, name: str, private: bool = False) -> bytes | memoryview:
        entry = self.entries[name]
        return read_verified(self.directory / name, entry["digest"], key=self.key, name=name, size=entry["size"],
                             follow_links=False, private=private)

    def copy(self, name: str, dest: Path) -> Path:
        entry = self.entries[name]
        return copy_verified(self.directory / name, entry["digest"], dest, key=self.key, name=name,
                             size=entry["size"], follow_links=False)


def _from_registry(ref: str, registry, store: Store | None):
    locations = resolve_locations()
    store = store or locations.store()
    db = sqlite_path(locations.registry_url) if registry is None else None
    if db is not None:  # the common deployment case: stdlib sqlite3, no SQLAlchemy import
        found = resolve_sqlite(db, ref)
        key, manifest_digest, digests = found.key, found.manifest_digest, dict(found.digests)
    else:
        from buildsys.artifacts.registry import Registry
        registry = registry or Registry(locations.registry_url)
        record = registry.resolve(ref)
        key, manifest_digest = record.key, record.manifest_digest
        digests = {f.name: f.digest for f in record.files}
    manifest = manifest_format.read_stored(store, digest=manifest_digest, key=key)
    manifest_format.check_loadable(manifest, f"artifact {key[:12]}")
    for name, entry in manifest["files"].items():
        if digests.get(name) != entry["digest"]:
            raise IntegrityError(key=key, path=f"{name} (registry vs manifest)", expected=str(digests.get(name)),
                                 actual=entry["digest"])
    return key, manifest, _StoreFiles(store, digests, key)


def _read_bundle_file(path: Path, limit: int) -> bytes | None:
    """A small regular file of a bundle, None when there is none; a FIFO, device, link, directory or
    oversized file is refused before it is read (a FIFO would block the loader forever)."""
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):  # a socket cannot even be opened
            raise TrustError(f"bundle {path.parent}: {path.name} is not a regular file (a bundle holds its files)")
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    except OSError as exc:
        why = "it is a symbolic link (a bundle holds its files)" if exc.errno == errno.ELOOP else exc.strerror
        raise TrustError(f"bundle {path.parent}: cannot read {path.name}: {why}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):  # replaced since the lstat
            raise TrustError(f"bundle {path.parent}: {path.name} is not a regular file (a bundle holds its files)")
        if info.st_size > limit:
            raise TrustError(f"bundle {path.parent}: {path.name} has {info.st_size} bytes, more than the "
                             f"{limit} a bundle's {path.name} may have")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    with os.fdopen(fd, "rb") as handle:
        return handle.read(limit + 1)


def _from_bundle(directory: Path):
    """No database: the manifest beside the files names their digests (sign bundles to trust it)."""
    data = _read_bundle_file(directory / MANIFEST_NAME, manifest_format.MAX_MANIFEST_BYTES)
    if data is None:
        raise CompatibilityError(f"{directory} is not an artifact bundle: it has no {MANIFEST_NAME}")
    if os.environ.get("BUILDSYS_PUBLIC_KEY"):  # a deployment that only trusts signed bundles
        from buildsys.artifacts.signing import SIGNATURE_NAME, load_public_key, verify_signature

        signature = _read_bundle_file(directory / SIGNATURE_NAME, 4096)
        verify_signature(load_public_key(), data, signature, f"bundle {directory}")
    manifest = manifest_format.loads(data, key=str(directory))
    manifest_format.check_loadable(manifest, f"bundle {directory}")
    key = manifest["key"]
    return key, manifest, _BundleFiles(directory, manifest["files"], key)


def load_artifact(ref: str | os.PathLike, *, registry=None, store: Store | None = None,
                  num_threads: int | None = None) -> Predictor:
    """Load ``ref``: a key, unique key prefix or alias (through the registry), or the
    directory of an exported bundle (no database needed).

    Digests and compatibility are checked before anything is loaded: loading
    a shared library runs its code. The library is copied into a private
    directory while being hashed, and that very copy is what gets loaded.
    """
    path = Path(ref)
    if path.is_dir() and os.path.lexists(path / MANIFEST_NAME):  # whatever it is, _from_bundle checks it
        key, manifest, files = _from_bundle(path)
    else:
        key, manifest, files = _from_registry(str(ref), registry, store)
    host = host_facts()
    check_compatibility(manifest, key, host=host)

    params_data = files.read(PARAMS_NAME, private=True)  # hashed as read, into memory of our own
    workdir = Path(tempfile.mkdtemp(prefix="buildsys-load-"))
    try:
        library = files.copy(LIBRARY_NAME, workdir / LIBRARY_NAME)
        check_library(library, manifest, key, host)
        if num_threads:
            os.environ["TVM_NUM_THREADS"] = str(num_threads)  # read when the runtime's pool starts
        vm = load_executable(library, key)
        params = [to_device(array) for array in read_params(params_data, key)]
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    return Predictor(key=key, manifest=manifest, _vm=vm, _params=params, _workdir=workdir)
