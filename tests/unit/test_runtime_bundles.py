"""Hostile bundles for the thin loader (issue #16), built from fake files: no model is compiled.

A bundle is a directory with manifest.json, lib.so and params.npz. Each hostile one is refused
with a BuildsysError (IntegrityError/TrustError/CompatibilityError) before anything is loaded:
no KeyError or TypeError, no IsADirectoryError, no hang on a FIFO, no temporary files left.
Where the digests are made to match, the bundle gets as far as loading, which is mocked.
"""

from __future__ import annotations

import copy
import hashlib
import io
import os
import socket
import tempfile
from pathlib import Path
from unittest import mock

import numpy as np
import pytest

from tests.fixtures.capabilities import need_module, need_readable_by_others
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from buildsys.artifacts import manifest as manifest_format
from buildsys.errors import BuildsysError, CompatibilityError, IntegrityError, TrustError
from buildsys.runtime import load_artifact, loader
from buildsys.runtime import params as params_reader
from buildsys import platforms
from buildsys.format.versions import runtime_versions
from buildsys.format.signature import Signature
from tests.fixtures.fuzz import examples, paths, suite_timeout
from tests.fixtures.guards import time_bound

pytestmark = suite_timeout(300)  # a hang guard for the whole generated suite

LOAD_BOUND_S = 60  # a hang guard (a FIFO read blocks forever), not a speed test

KEY = "ab" * 32
# An ELF header for this host's architecture (the loader reads it before dlopen), then no library.
LIB = (b"\x7fELF\x02\x01\x01" + bytes(9) + (3).to_bytes(2, "little")
       + platforms.host().elf_machine.to_bytes(2, "little") + b" not really a library" * 40)


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def params_bytes() -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, p00000=np.zeros((2, 3), np.float32))
    return buffer.getvalue()


PARAMS = params_bytes()


def good_manifest(lib: bytes = LIB, params: bytes = PARAMS) -> dict:
    return {
        "manifest_format": manifest_format.MANIFEST_FORMAT, "key": KEY, "label": "tiny 32x32 [llvm] O3",
        "files": {"lib.so": {"digest": digest(lib), "size": len(lib)},
                  "params.npz": {"digest": digest(params), "size": len(params)}},
        "runtime": runtime_versions(), "cpu": {"required_features": []},
        "spec": {"model": {"name": "tiny", "task": "classification"}, "target": {"kind": "llvm"}},
        "io": {"input": {"shape": [1, 3, 32, 32], "dtype": "float32"}, "params": 1,
               "inputs": [{"name": "input", "shape": ["batch", 3, 32, 32], "dtype": "float32", "range": [0.0, 1.0]},
                          {"name": "ids", "shape": ["batch", 4], "dtype": "int64", "range": [0, 9]}],
               "batch": {"min": 1, "max": 8, "opt": 4},
               "outputs": [{"name": "logits", "shape": ["batch", 3]}]},
    }


def write_bundle(directory: Path, manifest=None, lib: bytes = LIB, params: bytes = PARAMS,
                 raw_manifest: bytes | None = None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "lib.so").write_bytes(lib)
    (directory / "params.npz").write_bytes(params)
    data = raw_manifest if raw_manifest is not None else manifest_format.dumps(
        good_manifest(lib, params) if manifest is None else manifest)
    (directory / "manifest.json").write_bytes(data)
    return directory


class Reached(Exception):
    """load_executable was called: every check before loading passed."""


@pytest.fixture
def private_tmp(tmp_path, monkeypatch):
    """The loader's temporary directory, to check that a refused bundle leaves nothing there."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    return tmp


def attempt(bundle: Path) -> BuildsysError | None:
    """The error load_artifact refuses ``bundle`` with, or None when it reaches loading."""
    with time_bound(LOAD_BOUND_S, "load_artifact"), mock.patch.object(loader, "load_executable", side_effect=Reached):
        try:
            load_artifact(bundle)
        except Reached:
            return None
        except BuildsysError as exc:
            assert exc.exit_code in (5, 7), exc
            assert str(bundle) in str(exc) or KEY[:12] in str(exc), exc  # says which bundle
            assert len(str(exc)) < 1500
            return exc
    raise AssertionError("load_artifact returned without loading")


def test_a_good_fake_bundle_reaches_loading(tmp_path, private_tmp):
    assert attempt(write_bundle(tmp_path / "b")) is None
    assert list(private_tmp.iterdir()) == []


# ---------------------------------------------------------------- the manifest's structure


MUTATIONS = {
    "no files": lambda m: m.pop("files"),
    "files is a list": lambda m: m.update(files=["lib.so", "params.npz"]),
    "entries are strings": lambda m: m.update(files={n: e["digest"] for n, e in m["files"].items()}),
    "entry without digest": lambda m: m["files"]["lib.so"].pop("digest"),
    "digest is a number": lambda m: m["files"]["lib.so"].update(digest=5),
    "digest without algorithm": lambda m: m["files"]["lib.so"].update(digest=m["files"]["lib.so"]["digest"][7:]),
    "size is true": lambda m: m["files"]["lib.so"].update(size=True),
    "size is negative": lambda m: m["files"]["lib.so"].update(size=-1),
    "size is text": lambda m: m["files"]["lib.so"].update(size="40"),
    "no lib.so": lambda m: m["files"].pop("lib.so"),
    "a path outside": lambda m: m["files"].update({"../../etc/passwd": m["files"]["lib.so"]}),
    "an absolute path": lambda m: m["files"].update({"/etc/passwd": m["files"]["lib.so"]}),
    "no key": lambda m: m.pop("key"),
    "key is a number": lambda m: m.update(key=12),
    "key is a path": lambda m: m.update(key="../../x"),
    "no runtime": lambda m: m.pop("runtime"),
    "runtime is a list": lambda m: m.update(runtime=["0.27"]),
    "runtime.tvm is a number": lambda m: m["runtime"].update(tvm=0.27),
    "cpu is a list": lambda m: m.update(cpu=["avx2"]),
    "required_features is text": lambda m: m["cpu"].update(required_features="avx2"),
    "no spec": lambda m: m.pop("spec"),
    "task is a list": lambda m: m["spec"]["model"].update(task=["classification"]),
    "target is text": lambda m: m["spec"].update(target="llvm"),
    "no io": lambda m: m.pop("io"),
    "shape holds text": lambda m: m["io"]["input"].update(shape=["1", 3, 32, 32]),
    "shape holds true": lambda m: m["io"]["input"].update(shape=[True, 3, 32, 32]),
    "shape is empty": lambda m: m["io"]["input"].update(shape=[]),
    "outputs are names": lambda m: m["io"].update(outputs=["logits"]),
    "label is a number": lambda m: m.update(label=5),
    "detection is a list": lambda m: m.update(detection=[]),
    "boxes_frame is text": lambda m: m.update(detection={"boxes_frame": "64x64"}),
    "boxes_frame has zero": lambda m: m.update(detection={"boxes_frame": [0, 64]}),
    "categories is a mapping": lambda m: m.update(detection={"categories": {"0": "cat"}}),
    "no label": lambda m: m.pop("label"),
    "shape has one size": lambda m: m["io"]["input"].update(shape=[3]),
    "cuda is a list": lambda m: m.update(cuda=["sm_80"]),
    "cuda archs is a number": lambda m: m.update(cuda={"archs": 80, "cuda_version": "13.0"}),
    "cuda archs hold numbers": lambda m: m.update(cuda={"archs": [80], "cuda_version": "13.0"}),
    "cuda arch is a path": lambda m: m.update(cuda={"archs": ["../sm_80"], "cuda_version": "13.0"}),
    "cuda version is words": lambda m: m.update(cuda={"archs": ["sm_80"], "cuda_version": "thirteen"}),
    "cuda ptx is text": lambda m: m.update(cuda={"archs": ["sm_80"], "cuda_version": "13.0", "ptx": "yes"}),
    "format is true": lambda m: m.update(manifest_format=True),
    "format is 1.0": lambda m: m.update(manifest_format=1.0),
    "format is 2": lambda m: m.update(manifest_format=2),
}


@pytest.mark.parametrize("name", sorted(MUTATIONS))
def test_malformed_manifests_are_refused(name, tmp_path, private_tmp):
    manifest = good_manifest()
    MUTATIONS[name](manifest)
    error = attempt(write_bundle(tmp_path / "b", manifest))
    assert isinstance(error, (TrustError, CompatibilityError)), error
    assert list(private_tmp.iterdir()) == []


@pytest.mark.parametrize("raw", [b"", b"not json", b"[1, 2]", b"null", b'"text"', b"[" * 100_000 + b"]" * 100_000,
                                 b'{"manifest_format": 1, "files": ' + b"9" * 5000 + b"}", b"\xff\xfe{}",
                                 b'{"manifest_format": NaN}'], ids=lambda r: repr(r[:12]))
def test_manifests_that_are_no_json_object(raw, tmp_path):
    assert isinstance(attempt(write_bundle(tmp_path / "b", raw_manifest=raw)), (TrustError, CompatibilityError))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6)


PATHS = sorted(paths(good_manifest()), key=repr)


@settings(max_examples=examples(300), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mutations=st.lists(st.tuples(st.sampled_from(PATHS), st.sampled_from(["replace", "delete"]), json_values),
                          min_size=1, max_size=3))
def test_mutated_manifests_are_refused_or_reach_loading(tmp_path_factory, mutations):
    manifest = copy.deepcopy(good_manifest())
    for path, action, value in mutations:
        parent = manifest
        try:
            for part in path[:-1]:
                parent = parent[part]
            if isinstance(parent, dict) != isinstance(path[-1], str):
                continue  # a list index into what an earlier mutation made a dict (JSON keys are strings)
            if action == "delete":
                del parent[path[-1]]
            else:
                parent[path[-1]] = value
        except (KeyError, IndexError, TypeError):
            continue  # an earlier mutation removed or replaced the path
    bundle = write_bundle(tmp_path_factory.mktemp("bundle"), manifest)
    error = attempt(bundle)
    if error is None:  # then the fields the runtime reads are intact
        manifest_format.check_loadable(manifest, "mutated")
        Signature.from_manifest(manifest)  # what the Predictor reads cannot fail
        assert manifest["files"]["lib.so"]["digest"] == digest(LIB)


# ---------------------------------------------------------------- the files


def make_fifo(path: Path) -> None:
    path.unlink()
    os.mkfifo(path)


def make_dir(path: Path) -> None:
    path.unlink()
    path.mkdir()


def make_socket(path: Path) -> socket.socket:
    path.unlink()
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(path))
    return sock


def link_outside(path: Path, content: bytes | None = None) -> None:
    """A symbolic link to a file outside the bundle, with the same bytes (so the digest matches)."""
    outside = path.parent.parent / f"outside-{path.name}"
    outside.write_bytes(path.read_bytes() if content is None else content)
    path.unlink()
    path.symlink_to(outside)


FILE_DAMAGE = {
    "directory": make_dir,
    "fifo": make_fifo,
    "socket": make_socket,
    "symlink outside": link_outside,
    "symlink to /dev/zero": lambda p: (p.unlink(), p.symlink_to("/dev/zero")),
    "symlink to itself": lambda p: (p.unlink(), p.symlink_to(p.name)),
    "truncated": lambda p: p.write_bytes(p.read_bytes()[:-7]),
    "empty": lambda p: p.write_bytes(b""),
    "one byte flipped": lambda p: p.write_bytes(bytes([p.read_bytes()[0] ^ 1]) + p.read_bytes()[1:]),
    "missing": lambda p: p.unlink(),
    "unreadable": lambda p: os.chmod(p, 0),
}


@pytest.mark.parametrize("damage", sorted(FILE_DAMAGE))
@pytest.mark.parametrize("name", ["lib.so", "params.npz"])
def test_damaged_files_are_refused_before_loading(name, damage, tmp_path, private_tmp):
    if damage == "unreadable" and os.geteuid() == 0:
        need_readable_by_others("reading a file without permission")
        return _unreadable_as_another_user(name)  # root reads a file without permissions
    bundle = write_bundle(tmp_path / "b")
    kept = FILE_DAMAGE[damage](bundle / name)
    error = attempt(bundle)
    assert isinstance(error, IntegrityError) or (damage == "unreadable" and error is not None), error
    assert name in str(error)
    assert list(private_tmp.iterdir()) == []
    del kept


NOBODY = 65534


def _unreadable_as_another_user(name: str) -> None:
    """A file its reader may not read, for real: a forked child drops root for nobody and loads a
    bundle in a folder it may enter, whose ``name`` has mode 0."""
    shared = Path(tempfile.mkdtemp(prefix="buildsys-unreadable-", dir="/tmp"))  # a folder nobody may enter
    try:
        os.chmod(shared, 0o755)
        bundle = write_bundle(shared / "b")
        os.chmod(bundle, 0o755)
        for f in bundle.iterdir():
            os.chmod(f, 0o644)
        os.chmod(bundle / name, 0)
        scratch = shared / "tmp"
        scratch.mkdir(mode=0o777)
        os.chmod(scratch, 0o777)
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: nobody, its own temporary directory; reports and exits
            try:
                os.close(read)
                os.setgroups([])
                os.setgid(NOBODY)
                os.setuid(NOBODY)
                tempfile.tempdir = str(scratch)
                with mock.patch.object(loader, "load_executable", side_effect=Reached):
                    try:
                        load_artifact(bundle)
                        report = "returned"
                    except Reached:
                        report = "reached loading"
                    except BuildsysError as exc:
                        report = f"{type(exc).__name__} {exc.exit_code}: {exc}"
            except BaseException as exc:  # noqa: BLE001 - anything else is reported as a failure
                report = f"escaped {type(exc).__name__}: {exc}"
            os.write(write, report.encode()[:4000])
            os._exit(0)
        os.close(write)
        with os.fdopen(read, "rb") as pipe:
            report = pipe.read().decode()
        os.waitpid(pid, 0)
        assert report.startswith("StoreError 4: cannot read "), report  # the store's error: exit 4
        assert f"{bundle / name}" in report and "Permission denied" in report, report
        assert list(scratch.iterdir()) == []
    finally:
        import shutil
        shutil.rmtree(shared, ignore_errors=True)


@pytest.mark.parametrize("damage", ["directory", "fifo", "socket", "symlink outside", "symlink to /dev/zero"])
def test_a_manifest_that_is_no_regular_file_is_refused(damage, tmp_path):
    bundle = write_bundle(tmp_path / "b")
    kept = FILE_DAMAGE[damage](bundle / "manifest.json")
    error = attempt(bundle)
    assert isinstance(error, TrustError) and "manifest.json" in str(error), error
    del kept


def test_a_huge_manifest_is_refused_unread(tmp_path):
    bundle = write_bundle(tmp_path / "b")
    with open(bundle / "manifest.json", "r+b") as f:
        f.truncate(manifest_format.MAX_MANIFEST_BYTES + 1)  # sparse: costs no disk
    error = attempt(bundle)
    assert isinstance(error, TrustError) and "bytes" in str(error)


def test_a_truncated_library_with_matching_digest_reaches_loading_only(tmp_path):
    """The manifest vouches for the truncated bytes: the checks pass, loading decides (next test)."""
    lib = LIB[:-100]
    assert attempt(write_bundle(tmp_path / "b", lib=lib)) is None


def test_a_library_that_is_no_library_is_a_compatibility_error(tmp_path, private_tmp):
    bundle = write_bundle(tmp_path / "b", lib=b"\x7fELF\x02\x01\x01" + b"\x00" * 57)  # a cut ELF header
    with time_bound(LOAD_BOUND_S, "load_artifact"), pytest.raises(CompatibilityError, match="lib.so is ELF machine 0"):  # refused before dlopen
        load_artifact(bundle)
    cut = LIB[:64]  # this host's architecture in the header, then nothing: dlopen refuses it
    bundle = write_bundle(tmp_path / "c", lib=cut)
    with time_bound(LOAD_BOUND_S, "load_artifact"), pytest.raises(CompatibilityError, match="lib.so cannot be loaded by this runtime"):
        load_artifact(bundle)
    assert list(private_tmp.iterdir()) == []


@pytest.mark.parametrize("params", [b"PK\x03\x04 not a zip", b"", b"\x93NUMPY" + b"\x00" * 100])
def test_params_that_are_no_archive_with_matching_digest(params, tmp_path, private_tmp):
    bundle = write_bundle(tmp_path / "b", params=params)
    with time_bound(LOAD_BOUND_S, "load_artifact"), mock.patch.object(loader, "load_executable", return_value=object()):
        with pytest.raises(TrustError, match="params.npz is not a parameter archive"):
            load_artifact(bundle)
    assert list(private_tmp.iterdir()) == []


def test_a_signature_that_is_a_fifo(tmp_path, monkeypatch):
    need_module("cryptography", "pip install -e '.[signing]' (make venv)")
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    key = Ed25519PrivateKey.generate()
    (tmp_path / "public.key").write_text(key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex())
    monkeypatch.setenv("BUILDSYS_PUBLIC_KEY", str(tmp_path / "public.key"))
    bundle = write_bundle(tmp_path / "b")
    os.mkfifo(bundle / "manifest.json.sig")
    error = attempt(bundle)
    assert isinstance(error, TrustError) and "manifest.json.sig" in str(error), error


def _npz(members: dict[str, bytes]) -> bytes:
    import io
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def _npy(shape, dtype="<f4", payload: bytes | None = None) -> bytes:
    import io

    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": dtype, "fortran_order": False, "shape": shape})
    return buffer.getvalue() + (payload if payload is not None else b"\0" * (int(np.prod(shape)) * 4))


@pytest.mark.parametrize("case", ["bomb", "members", "header"])
def test_params_zip_bombs_are_refused_before_decompressing(case, tmp_path, private_tmp, monkeypatch):
    """params.npz whose digest matches but that would decompress past a bound, hold too many
    arrays, or declare an array larger than its member (numpy allocates by the header)."""
    if case == "bomb":
        monkeypatch.setenv("BUILDSYS_MAX_PARAMS_BYTES", str(1 << 20))
        params, why = _npz({"p0.npy": _npy((1 << 19,))}), "more than the 1048576 allowed"  # 2 MiB of zeros
    elif case == "members":
        monkeypatch.setattr(params_reader, "MAX_PARAM_ARRAYS", 10)
        params, why = _npz({f"p{i}.npy": _npy((1,)) for i in range(11)}), "11 members, more than the 10"
    else:
        params, why = _npz({"p0.npy": _npy((1 << 40,), payload=b"")}), "declares"
    assert len(params) < 100_000
    bundle = write_bundle(tmp_path / "b", params=params)
    with time_bound(LOAD_BOUND_S, "load_artifact"), mock.patch.object(loader, "load_executable", return_value=object()):
        with pytest.raises(TrustError, match=f"params.npz is not a parameter archive .*{why}"):
            load_artifact(bundle)
    assert list(private_tmp.iterdir()) == []


def test_written_params_are_aligned_views_of_the_verified_bytes_handed_to_tvm_uncopied(tmp_path):
    """write_params pads each member so its array starts 64-byte aligned in the file; the loader
    reads the file once into memory of its own (hashed meanwhile) and its arrays are views into
    that memory, equal to what np.load reads, aligned, so to_device copies none of them."""
    from buildsys.artifacts.store import read_verified
    from buildsys.runtime import ffi

    arrays = [np.arange(n, dtype=np.float32) for n in (1, 3, 17, 1000)] + [
        np.ones((3, 5), np.int64), np.zeros((0, 4), np.float32), np.float32(2.5).reshape(()),
        np.asfortranarray(np.arange(6.0).reshape(2, 3)), np.arange(7, dtype=np.uint8)]
    path = tmp_path / "params.npz"
    manifest_format.write_params(path, arrays)
    data = path.read_bytes()
    buffer = read_verified(path, digest(data), private=True)
    assert isinstance(buffer, memoryview) and bytes(buffer) == data
    got = params_reader.read_params(buffer, KEY)
    with np.load(path) as npz:
        expected = [npz[name] for name in sorted(npz.files)]
    assert len(got) == len(expected) == len(arrays)
    base = np.frombuffer(buffer, np.uint8).ctypes.data
    for array, want in zip(got, expected):
        assert array.dtype == want.dtype and array.shape == want.shape and np.array_equal(array, want)
        assert base <= array.ctypes.data < base + len(data) and array.ctypes.data % ffi.ALIGNMENT == 0
        assert array.size == 0 or ffi.aligned(array) is array  # to_device takes it as it is


def test_stored_params_that_lie_about_their_arrays_are_refused(tmp_path, private_tmp):
    """Stored members are read in place, without np.load: a header larger than its member, an
    object array, or no npy at all is still a TrustError, not a crash or a wrong view."""
    import zipfile

    cases = {"declares": _npy((1 << 20,), payload=b"\0" * 8), "objects": _npy((1,), dtype="|O"),
             "magic": b"not an array at all" * 4}
    for why, member in cases.items():
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
            archive.writestr("p0.npy", member)
        bundle = write_bundle(tmp_path / why, params=buffer.getvalue())
        with mock.patch.object(loader, "load_executable", return_value=object()):
            with pytest.raises(TrustError, match="params.npz is not a parameter archive"):
                load_artifact(bundle)
    assert list(private_tmp.iterdir()) == []


def test_params_read_from_read_only_bytes_still_go_to_tvm(tmp_path):
    """bytes (read-only) give arrays TVM can take: views of read-only memory cannot pass DLPack
    ("Cannot export readonly array"), which is how the emulated parity run (runtime/oneshot.py,
    reading params.npz with read_bytes) failed."""
    from buildsys.runtime import ffi

    path = tmp_path / "params.npz"
    manifest_format.write_params(path, [np.arange(5, dtype=np.float32), np.ones((2, 3), np.int64)])
    arrays = params_reader.read_params(path.read_bytes(), KEY)
    assert [a.flags.writeable for a in arrays] == [True, True]
    tensors = [ffi.to_device(a) for a in arrays]
    assert [tuple(t.shape) for t in tensors] == [(5,), (2, 3)]
