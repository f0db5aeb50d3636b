"""Model files named by ``source:`` (an ONNX file, a ``torch.export`` program saved as ``.pt2``),
read as hostile input before anything parses them for real.

An ONNX file is a protobuf message with no magic number and no checksum: a truncated file, a
file of another kind, or a field that declares 2 GB it does not have would reach
``onnx.load`` (and then C++ code) as is. This module walks the protobuf wire format itself,
bounded: every length-delimited field must fit inside its parent, nesting is limited, and the
initializers' bytes are skipped, never copied (a BERT-base file reads in milliseconds). What it
takes out of the file is what planning needs without importing onnx, torch or TVM:

- the graph's inputs (names, element types, static and symbolic dimensions), initializers
  excluded (old exporters list weights among the inputs);
- the opsets, and every node's op type, domain and name (subgraphs of If/Loop/Scan included),
  for the unsupported-operator report;
- the external-data files the initializers point to (``location``), which belong to the key.

A ``.pt2`` file is a zip archive (``torch.export.save``); only its magic and its central
directory are checked here (``zipfile``: sizes, no member outside the archive).
"""

from __future__ import annotations

import mmap
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from buildsys.errors import ConfigError

ONNX_SUFFIX, PT2_SUFFIX = ".onnx", ".pt2"
FILE_SUFFIXES = (ONNX_SUFFIX, PT2_SUFFIX)
MAX_PROTOBUF_BYTES = (2 << 30) - 1  # protobuf's own limit: larger models keep their weights as external data
MAX_DEPTH = 32  # subgraphs inside subgraphs
MAX_NODES = 1_000_000
MAX_VALUES = 1_000_000  # graph inputs, outputs and initializers, subgraphs' included: each is kept in memory
MAX_FIELDS = 50_000_000  # protobuf fields visited in all (about 30 s): 2 GiB of two-byte fields would take 10 min
MAX_PT2_MEMBERS = 100_000
MAX_PT2_BYTES = 64 << 30  # uncompressed, all members
# ONNX TensorProto.DataType -> the signature's dtype (format/signature.py DTYPES); others are named
ELEM_TYPES = {1: "float32", 2: "uint8", 3: "int8", 4: "uint16", 5: "int16", 6: "int32", 7: "int64", 8: "string",
              9: "bool", 10: "float16", 11: "float64", 12: "uint32", 13: "uint64", 16: "bfloat16"}


class ModelFileError(ConfigError):
    """A model file that is not what its name says, or that does not fit the limits."""


@dataclass(frozen=True)
class FileInput:
    """One graph input as the file declares it: a dimension is a whole number, or a name
    (``dim_param``) or None when the file leaves it open."""

    name: str
    dims: tuple
    dtype: str  # an ELEM_TYPES value, or "type N"


@dataclass(frozen=True)
class OnnxNode:
    op_type: str
    domain: str
    name: str
    graph: str  # "main", or the subgraph's path (node/attribute)


@dataclass(frozen=True)
class OnnxFileInfo:
    path: str
    ir_version: int
    opsets: dict  # domain ("" is ai.onnx) -> version
    inputs: tuple[FileInput, ...]
    outputs: tuple[str, ...]
    nodes: tuple[OnnxNode, ...]
    external_data: tuple[str, ...] = field(default=())  # absolute paths, in file order, once each

    @property
    def opset(self) -> int:
        return int(self.opsets.get("", self.opsets.get("ai.onnx", 0)))


def file_kind(source: str) -> str | None:
    """"onnx" or "pt2" for a model file source, None for ``module:function``."""
    lowered = source.lower()
    return "onnx" if lowered.endswith(ONNX_SUFFIX) else "pt2" if lowered.endswith(PT2_SUFFIX) else None


def resolve_model_file(source: str, base_dir: str | os.PathLike) -> Path:
    """The absolute path of a file source (relative ones are relative to builds.yaml's folder);
    ModelFileError for a path no file can have (a NUL byte)."""
    if "\0" in source:
        raise ModelFileError(f"{source!r}: a path cannot hold a NUL byte")
    return (Path(base_dir or ".") / os.path.expanduser(source)).resolve()


# ---------------------------------------------------------------- protobuf wire format, bounded


class _Malformed(Exception):
    pass


def _varint(buf, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise _Malformed("a varint runs past its message")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _fields(buf, start: int, end: int, budget: list):
    """(field number, wire type, value) of one message: value is an int (varint, fixed) or the
    (start, end) of a length-delimited field, checked to lie inside the message. ``budget`` is
    the one-element list of fields the whole file may still have (MAX_FIELDS)."""
    pos = start
    while pos < end:
        budget[0] -= 1
        if budget[0] < 0:
            raise _Malformed(f"more than {MAX_FIELDS} protobuf fields")
        key, pos = _varint(buf, pos, end)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise _Malformed(f"field number 0 at byte {pos}")
        if wire == 0:
            value, pos = _varint(buf, pos, end)
        elif wire == 1 or wire == 5:
            size = 8 if wire == 1 else 4
            if pos + size > end:
                raise _Malformed(f"a fixed-size field runs past its message at byte {pos}")
            value, pos = int.from_bytes(buf[pos:pos + size], "little"), pos + size
        elif wire == 2:
            length, pos = _varint(buf, pos, end)
            if length > end - pos:
                raise _Malformed(f"field {number} at byte {pos} declares {length} bytes; "
                                 f"only {end - pos} remain in its message")
            value, pos = (pos, pos + length), pos + length
        else:  # groups (3, 4) are not used by ONNX; 6, 7 do not exist
            raise _Malformed(f"wire type {wire} (field {number}) at byte {pos}")
        yield number, wire, value


def _text(buf, span) -> str:
    try:
        return bytes(buf[span[0]:span[1]]).decode("utf-8")
    except UnicodeDecodeError:
        raise _Malformed(f"a name at byte {span[0]} is not UTF-8") from None


def _value_info(buf, span, budget) -> FileInput:
    name, dims, dtype = "", (), "unknown"
    for number, wire, value in _fields(buf, *span, budget):
        if number == 1 and wire == 2:
            name = _text(buf, value)
        elif number == 2 and wire == 2:  # TypeProto
            for n2, w2, v2 in _fields(buf, *value, budget):
                if n2 == 1 and w2 == 2:  # tensor_type
                    for n3, w3, v3 in _fields(buf, *v2, budget):
                        if n3 == 1 and w3 == 0:
                            dtype = ELEM_TYPES.get(v3, f"type {v3}")
                        elif n3 == 2 and w3 == 2:
                            dims = tuple(_dimension(buf, v4, budget) for n4, w4, v4 in _fields(buf, *v3, budget) if n4 == 1 and w4 == 2)
    return FileInput(name, dims, dtype)


def _dimension(buf, span, budget):
    dim = None
    for number, wire, value in _fields(buf, *span, budget):
        if number == 1 and wire == 0:  # an int64: a negative one (-1 for "dynamic" in some tools) is open
            dim = value if 0 < value < 1 << 63 else None
        elif number == 2 and wire == 2:
            dim = _text(buf, value) or None
    return dim


class _GraphWalk:
    def __init__(self, buf, model_dir: Path):
        self.buf, self.model_dir = buf, model_dir
        self.nodes: list[OnnxNode] = []
        self.external: dict[str, None] = {}
        self.budget = [MAX_FIELDS]
        self.values = 0  # graph inputs, outputs, initializers (MAX_VALUES)

    def _value(self):
        self.values += 1
        if self.values > MAX_VALUES:
            raise _Malformed(f"more than {MAX_VALUES} graph inputs, outputs and initializers")

    def graph(self, span, path: str, depth: int):
        """(inputs, outputs, initializer names) of a GraphProto; nodes and external data collected."""
        if depth > MAX_DEPTH:
            raise _Malformed(f"subgraphs nested deeper than {MAX_DEPTH}")
        buf = self.buf
        inputs, outputs, initializers = [], [], set()
        for number, wire, value in _fields(buf, *span, self.budget):
            if wire != 2:
                continue
            if number == 1:
                self.node(value, path, depth)
            elif number == 5:
                self._value()
                initializers.add(self.tensor(value))
            elif number == 11:
                self._value()
                inputs.append(_value_info(buf, value, self.budget))
            elif number == 12:
                self._value()
                outputs.append(_value_info(buf, value, self.budget).name)
        return inputs, outputs, initializers

    def node(self, span, path: str, depth: int):
        if len(self.nodes) >= MAX_NODES:
            raise _Malformed(f"more than {MAX_NODES} nodes")
        op_type = domain = name = ""
        subgraphs = []
        for number, wire, value in _fields(self.buf, *span, self.budget):
            if wire != 2:
                continue
            if number == 3:
                name = _text(self.buf, value)
            elif number == 4:
                op_type = _text(self.buf, value)
            elif number == 7:
                domain = _text(self.buf, value)
            elif number == 5:  # AttributeProto: g (6), graphs (11); t (5), tensors (12) may keep data outside too
                attribute = ""
                for n2, w2, v2 in _fields(self.buf, *value, self.budget):
                    if n2 == 1 and w2 == 2:
                        attribute = _text(self.buf, v2)
                    elif n2 in (6, 11) and w2 == 2:
                        subgraphs.append((attribute, v2))
                    elif n2 in (5, 12) and w2 == 2:  # a Constant's value: onnx.load reads its external data
                        self.tensor(v2)
        self.nodes.append(OnnxNode(op_type, domain, name, path))
        for attribute, sub in subgraphs:
            self.graph(sub, f"{path}/{name or op_type}.{attribute}", depth + 1)

    def tensor(self, span) -> str:
        """A TensorProto's name; its external-data file, when it has one, is recorded."""
        name, location, external = "", None, False
        for number, wire, value in _fields(self.buf, *span, self.budget):
            if number == 8 and wire == 2:
                name = _text(self.buf, value)
            elif number == 14 and wire == 0:
                external = value == 1
            elif number == 13 and wire == 2:  # StringStringEntryProto
                entry = {n2: _text(self.buf, v2) for n2, w2, v2 in _fields(self.buf, *value, self.budget) if w2 == 2}
                if entry.get(1) == "location":
                    location = entry.get(2, "")
        if external:
            self.external[self._external_path(name, location)] = None
        return name

    def _external_path(self, tensor: str, location: str | None) -> str:
        if not location:
            raise _Malformed(f"initializer {tensor!r} keeps its data outside the file but names no location")
        if "\0" in location:
            raise _Malformed(f"initializer {tensor!r} names its data file with a NUL byte: {location!r}")
        relative = Path(location)
        target = (self.model_dir / relative).resolve()
        if relative.is_absolute() or ".." in relative.parts or not target.is_relative_to(self.model_dir.resolve()):
            raise _Malformed(f"initializer {tensor!r} points outside the model's folder: {location!r}")
        return str(target)


def read_onnx_file(path: str | os.PathLike, *, file: str | None = None, line: int | None = None,
                   field_name: str | None = None) -> OnnxFileInfo:
    """Check and describe an ONNX file without parsing its weights (ModelFileError with the path)."""
    path = Path(path)

    def refuse(message: str, hint: str | None = None) -> ModelFileError:
        return ModelFileError(f"{path}: {message}", file=file, line=line, field=field_name, hint=hint)

    try:
        size = path.stat().st_size
        if not path.is_file():
            raise refuse("not a regular file")
        handle = open(path, "rb")
    except OSError as exc:
        raise refuse(f"cannot read the model file: {exc.strerror or exc}",
                     hint="source is a path relative to builds.yaml's folder, or absolute") from None
    if size == 0:
        handle.close()
        raise refuse("the file is empty")
    if size > MAX_PROTOBUF_BYTES:
        handle.close()
        raise refuse(f"the file has {size} bytes; protobuf (and so ONNX) reads at most {MAX_PROTOBUF_BYTES}",
                     hint="save the weights as external data (onnx.save(..., save_as_external_data=True))")
    with handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        if buf[:4] == b"PK\x03\x04":
            raise refuse("this is a zip archive, not an ONNX file (a .pt2 program? name it .pt2)")
        walk = _GraphWalk(buf, path.parent)
        ir_version, opsets, graph = None, {}, None
        try:
            for number, wire, value in _fields(buf, 0, size, walk.budget):
                if number == 1 and wire == 0:
                    ir_version = value
                elif number == 8 and wire == 2:
                    domain, version = "", 0
                    for n2, w2, v2 in _fields(buf, *value, walk.budget):
                        if n2 == 1 and w2 == 2:
                            domain = _text(buf, v2)
                        elif n2 == 2 and w2 == 0:
                            version = v2
                    opsets[domain] = version
                elif number == 7 and wire == 2:
                    graph = value
            if ir_version is None or graph is None:
                raise _Malformed("no ir_version or no graph: not an ONNX model")
            inputs, outputs, initializers = walk.graph(graph, "main", 0)
        except _Malformed as exc:
            raise refuse(f"not a readable ONNX file ({exc})",
                         hint="a truncated download or another kind of file? onnx.checker.check_model tells more")
    missing = [p for p in walk.external if not os.path.isfile(p)]
    if missing:
        raise refuse(f"external data file {missing[0]} is missing" + (f" (and {len(missing) - 1} more)"
                                                                       if len(missing) > 1 else ""),
                     hint="keep the weights files beside the .onnx file, as onnx.save wrote them")
    return OnnxFileInfo(path=str(path), ir_version=ir_version, opsets=opsets,
                        inputs=tuple(i for i in inputs if i.name not in initializers), outputs=tuple(outputs),
                        nodes=tuple(walk.nodes), external_data=tuple(walk.external))


def check_pt2_file(path: str | os.PathLike, *, file: str | None = None, line: int | None = None,
                   field_name: str | None = None) -> None:
    """A ``.pt2`` is a zip archive of bounded size with no member outside it."""
    path = Path(path)

    def refuse(message: str) -> ModelFileError:
        return ModelFileError(f"{path}: {message}", file=file, line=line, field=field_name,
                              hint="a .pt2 file is what torch.export.save writes")

    try:
        if path.exists() and not path.is_file():  # a FIFO would block open() until a writer comes
            raise refuse("not a regular file")
        with open(path, "rb") as handle:
            magic = handle.read(4)
    except OSError as exc:
        raise refuse(f"cannot read the model file: {exc.strerror or exc}") from None
    if magic != b"PK\x03\x04":
        raise refuse("not a zip archive (wrong magic), so no torch.export program")
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise refuse(f"a damaged zip archive: {exc}") from None
    if len(members) > MAX_PT2_MEMBERS:
        raise refuse(f"{len(members)} members; at most {MAX_PT2_MEMBERS}")
    total = sum(m.file_size for m in members)
    if total > MAX_PT2_BYTES:
        raise refuse(f"its members declare {total} bytes uncompressed; at most {MAX_PT2_BYTES}")
    if any(m.filename.startswith("/") or ".." in m.filename.split("/") for m in members):
        raise refuse("a member's name points outside the archive")
