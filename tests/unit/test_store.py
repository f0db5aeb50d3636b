import os
import stat

import pytest

from buildsys.errors import IntegrityError, StoreError
from buildsys.artifacts.digests import digest_bytes
from buildsys.artifacts.store import Store


@pytest.fixture
def store(tmp_path):
    return Store(tmp_path / "artifacts")


def test_put_lays_out_objects_by_digest_and_makes_them_read_only(store):
    digest, size = store.put_bytes(b"hello")
    assert digest == digest_bytes(b"hello") and size == 5
    path = store.object_path(digest)
    assert path.relative_to(store.root).parts[:2] == ("sha256", digest[7:9])
    assert path.name == digest[9:]
    assert not os.stat(path).st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)
    assert list(store.tmp.iterdir()) == []  # the staged file was moved, not copied


def test_put_same_bytes_twice_is_one_object(store):
    a, _ = store.put_bytes(b"same")
    b, _ = store.put_bytes(b"same")
    assert a == b and list(store.iter_objects()) == [a]


def test_read_verified_detects_tampering_and_missing(store):
    digest, _ = store.put_bytes(b"payload")
    path = store.object_path(digest)
    os.chmod(path, 0o644)
    path.write_bytes(b"pAyload")
    with pytest.raises(IntegrityError) as info:
        store.read_verified(digest, key="k" * 64, name="lib.so")
    assert info.value.expected == digest and info.value.actual == digest_bytes(b"pAyload")
    assert "lib.so" in str(info.value) and "kkkk" in str(info.value)
    path.unlink()
    with pytest.raises(IntegrityError, match="missing file"):
        store.read_verified(digest)


def test_copy_verified_leaves_no_copy_on_mismatch(store, tmp_path):
    digest, _ = store.put_bytes(b"library bytes")
    path = store.object_path(digest)
    os.chmod(path, 0o644)
    path.write_bytes(b"library bytez")
    dest = tmp_path / "lib.so"
    with pytest.raises(IntegrityError):
        store.copy_verified(digest, dest)
    assert not dest.exists()


def test_failed_write_leaves_nothing(store, monkeypatch):
    def full_disk(*_args, **_kw):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(StoreError, match="no space left on device: "):
        store.put_bytes(b"x" * 100)
    assert list(store.iter_objects()) == []
    assert list(store.tmp.iterdir()) == []


def test_staging_is_removed_whatever_happens(store):
    with pytest.raises(RuntimeError):
        with store.staging() as d:
            (d / "partial").write_bytes(b"half")
            raise RuntimeError("crash")
    assert list(store.tmp.iterdir()) == []


def test_tensors_handed_to_tvm_are_64_byte_aligned():
    """Tuned kernels load with aligned vector moves: a misaligned weight crashed the VM (SIGSEGV)."""
    import numpy as np

    from buildsys.runtime.ffi import ALIGNMENT, aligned

    raw = np.zeros(4 * 1000 + 2 * ALIGNMENT, dtype=np.uint8)
    for offset in range(4, ALIGNMENT, 4):  # 4, 8, ... bytes past an aligned address
        start = (-raw.ctypes.data) % ALIGNMENT + offset
        view = raw[start:start + 4000].view(np.float32).reshape(10, 100)
        assert view.ctypes.data % ALIGNMENT == offset
        view[...] = np.arange(1000, dtype=np.float32).reshape(10, 100)
        out = aligned(view)
        assert out.ctypes.data % ALIGNMENT == 0
        np.testing.assert_array_equal(out, view)
    already = aligned(np.ones((3, 64), dtype=np.float32))
    assert aligned(already) is already  # no copy when nothing is wrong
    assert aligned(np.asfortranarray(np.ones((3, 5)))).flags.c_contiguous


def test_empty_arrays_reach_tvm_with_compact_strides():
    """numpy gives shape (1, 0) the strides (0, 0); kernels check for compact strides (0, 1) and
    failed with 'expected to be compact array' when a detector found nothing."""
    import numpy as np

    from buildsys.runtime.ffi import to_device, to_numpy

    for shape, dtype in (((1, 0), np.int64), ((3, 0, 2), np.float32), ((0,), np.float32)):
        tensor = to_device(np.zeros(shape, dtype))
        assert tuple(tensor.shape) == shape and str(tensor.dtype) == np.dtype(dtype).name
        expected, stride = [], 1
        for extent in reversed(shape):
            expected.insert(0, stride)
            stride *= extent
        assert tuple(tensor.strides) == tuple(expected)
        assert to_numpy(tensor).shape == shape
    full = to_device(np.arange(6, dtype=np.float32).reshape(2, 3))
    assert to_numpy(full).tolist() == [[0, 1, 2], [3, 4, 5]]
