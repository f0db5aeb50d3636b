"""Reading params.npz for the thin runtime: the weights an artifact runs with, as numpy arrays.

The archive ``buildsys.artifacts.manifest.write_params`` writes stores every member uncompressed
and 64-byte aligned, so its arrays are views into the bytes read (no copy, no CRC pass: the
caller checked the digest over every byte). Any other archive (compressed members, an older
artifact) is bounded before numpy decompresses it: a zip bomb never gets to inflate.
"""

from __future__ import annotations

import io
import os
import zipfile

import numpy as np

from buildsys.artifacts.manifest import PARAMS_NAME
from buildsys.errors import TrustError

MAX_PARAM_ARRAYS = 100_000
MAX_PARAMS_BYTES = 16 << 30  # decompressed; BUILDSYS_MAX_PARAMS_BYTES overrides


def _check_params_archive(data: bytes, key: str) -> None:
    """A zip bomb must not get to decompress: at most MAX_PARAM_ARRAYS members, at most
    MAX_PARAMS_BYTES once decompressed (the sizes the archive declares, which zipfile holds each
    member to), and each array's header no larger than its member (numpy allocates by the header)."""
    limit = int(os.environ.get("BUILDSYS_MAX_PARAMS_BYTES", MAX_PARAMS_BYTES))
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        members = archive.infolist()
        if len(members) > MAX_PARAM_ARRAYS:
            raise ValueError(f"{len(members)} members, more than the {MAX_PARAM_ARRAYS} allowed")
        total = sum(m.file_size for m in members)
        if total > limit:
            raise ValueError(f"{total} bytes once decompressed, more than the {limit} allowed "
                             "(BUILDSYS_MAX_PARAMS_BYTES)")
        for member in members:
            with archive.open(member) as handle:
                version = np.lib.format.read_magic(handle)
                shape, _, dtype = (np.lib.format.read_array_header_1_0(handle, max_header_size=10_000)
                                   if version == (1, 0) else
                                   np.lib.format.read_array_header_2_0(handle, max_header_size=10_000))
                needed = int(np.prod(shape, dtype=object)) * dtype.itemsize
                if needed > member.file_size:
                    raise ValueError(f"{member.filename} declares {shape} {dtype} ({needed} bytes) in a member of "
                                     f"{member.file_size} bytes")


def _stored_arrays(data: memoryview) -> list[np.ndarray] | None:
    """The arrays of an archive whose members are all stored (what ``write_params`` writes), as
    views into ``data``, in name order (np.load's); None when a member is compressed.

    No copy and no CRC pass: ``data`` is private memory whose digest matched. A member written
    64-byte aligned (``write_params`` pads its local header; npy pads its own header to 64) yields
    an aligned view that ``to_device`` hands to TVM as it is; an older archive's member is copied
    to aligned memory there."""
    with zipfile.ZipFile(_BufferReader(data)) as archive:  # reads the central directory only
        members = archive.infolist()
    if len(members) > MAX_PARAM_ARRAYS:
        raise ValueError(f"{len(members)} members, more than the {MAX_PARAM_ARRAYS} allowed")
    if any(m.compress_type != zipfile.ZIP_STORED for m in members):
        return None
    named = {}
    for member in members:
        name = member.filename[:-4] if member.filename.endswith(".npy") else member.filename
        if name in named:
            raise ValueError(f"two members named {member.filename}")
        named[name] = _stored_array(data, member)
    return [named[name] for name in sorted(named)]


def _stored_array(data: memoryview, member: zipfile.ZipInfo) -> np.ndarray:
    start = member.header_offset
    header = bytes(data[start:start + 30])
    if len(header) < 30 or header[:4] != b"PK\x03\x04":
        raise ValueError(f"{member.filename}: no local header at {start}")
    name_length, extra_length = int.from_bytes(header[26:28], "little"), int.from_bytes(header[28:30], "little")
    begin = start + 30 + name_length + extra_length
    end = begin + member.file_size
    if member.compress_size != member.file_size or end > len(data):
        raise ValueError(f"{member.filename}: {member.file_size} bytes at {begin} do not fit the archive")
    head = io.BytesIO(bytes(data[begin:min(end, begin + 10_064)]))
    version = np.lib.format.read_magic(head)
    shape, fortran_order, dtype = (np.lib.format.read_array_header_1_0(head, max_header_size=10_000)
                                   if version == (1, 0) else
                                   np.lib.format.read_array_header_2_0(head, max_header_size=10_000))
    if dtype.hasobject:
        raise ValueError(f"{member.filename}: an array of Python objects")
    count = int(np.prod(shape, dtype=object))
    if count * dtype.itemsize > member.file_size - head.tell():
        raise ValueError(f"{member.filename} declares {shape} {dtype} in a member of {member.file_size} bytes")
    array = np.frombuffer(data, dtype=dtype, count=count, offset=begin + head.tell())
    return array.reshape(shape[::-1]).T if fortran_order else array.reshape(shape)


class _BufferReader(io.RawIOBase):
    """A read-only file over a buffer, without copying it (io.BytesIO would): for zipfile."""

    def __init__(self, data: memoryview):
        self.data, self.position = data, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.position, io.SEEK_END: len(self.data)}[whence]
        self.position = max(0, base + offset)
        return self.position

    def readinto(self, buffer) -> int:
        chunk = self.data[self.position:self.position + len(buffer)]
        buffer[:len(chunk)] = chunk
        self.position += len(chunk)
        return len(chunk)


def read_params(data: bytes | memoryview, key: str) -> list[np.ndarray]:
    """The arrays of params.npz, in name order. Its digest matched, so a failure here is a bundle
    whose manifest vouches for bytes that are no parameter archive.

    The arrays are views into ``data`` when it is writable memory (what the loader reads); read-only
    bytes are copied once first, since DLPack cannot hand a read-only array to TVM."""
    if memoryview(data).readonly:
        data = bytearray(data)
    try:
        arrays = _stored_arrays(memoryview(data))
        if arrays is not None:
            return arrays
        _check_params_archive(data, key)  # compressed members: decompressed by np.load, bounded first
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            return [npz[name] for name in sorted(npz.files)]
    except (ValueError, OSError, EOFError, KeyError, MemoryError, TypeError, zipfile.BadZipFile,
            NotImplementedError, RuntimeError) as exc:
        raise TrustError(f"artifact {key[:12]}: {PARAMS_NAME} is not a parameter archive ({type(exc).__name__}: "
                         f"{str(exc)[:200]}); export the bundle again or rebuild the artifact") from None
