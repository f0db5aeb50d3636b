"""Input signatures in builds.yaml: the ``batch`` axis and the ``inputs`` a model declares, parsed
into ``buildsys.format.signature``'s types (the ones the manifest and the runtime use).

``batch`` is a static size (``8``) or a range compiled once with a symbolic batch dimension
(``{min: 1, max: 32}``, optionally ``opt:``, the representative size parity, tuning and bench
use besides the ends; TensorRT's optimization profiles have the same three). ``inputs`` replaces
the one float32 NCHW image that ``input_size`` stands for::

    inputs:
      - {name: input_ids, shape: [batch, 128], dtype: int64, range: [0, 999]}
      - {name: attention_mask, shape: [batch, 128], dtype: int64}   # a mask: 0/1

The first dimension of every input is ``batch``. ``range`` is what sample inputs are drawn from
(parity, bench): integers uniformly in [low, high] (the ends included), floats in [low, high).
Integer inputs need one (token ids must stay inside the embedding), except masks (a name ending
in ``mask``) and bool inputs, which are 0/1; floats default to [0, 1). The runtime loader refuses
integer values outside the range (an embedding reading past its table would crash the process).

Parsing takes the ``_Reader`` of ``spec.py`` (errors with file, line, field and hint).
"""

from __future__ import annotations

import math
import re
from typing import Any

from buildsys.format.signature import (BATCH, DTYPES, INT_DTYPES, MAX_BATCH, MAX_DIM, MAX_ELEMENTS, MAX_INPUTS,
                                       Batch, Input)

BATCH_FIELDS = ("min", "max", "opt")
INPUT_FIELDS = ("name", "shape", "dtype", "range")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_batch(value: Any, reader, line: int | None, where: str) -> Batch:
    """8 | {min, max[, opt]} -> Batch."""
    hint = "e.g. batch: 8, or batch: {min: 1, max: 32}"
    if _whole(value):
        if not 1 <= value <= MAX_BATCH:
            raise reader.error(f"a batch size is 1..{MAX_BATCH}, got {value!r}", line, where)
        return Batch.static(value)
    if not isinstance(value, dict):
        raise reader.error(f"batch is a whole number or a range {{min, max}}, got {value!r}", line, where, hint=hint)
    reader.check_keys(value, BATCH_FIELDS, where)
    numbers = {}
    for name in BATCH_FIELDS:
        if name not in value:
            if name == "opt":
                continue
            raise reader.error(f"a batch range needs {name}", line, where, hint=hint)
        number = value[name]
        if not _whole(number) or not 1 <= number <= MAX_BATCH:
            raise reader.error(f"batch {name} must be a whole number 1..{MAX_BATCH}, got {number!r}",
                               value.line_of(name) if hasattr(value, "line_of") else line, f"{where}.{name}")
        numbers[name] = number
    low, high = numbers["min"], numbers["max"]
    if low >= high:
        raise reader.error(f"batch min {low} must be less than max {high}", line, where,
                           hint=f"write batch: {low} for a static batch")
    opt = numbers.get("opt", (low + high) // 2)
    if not low <= opt <= high:
        raise reader.error(f"batch opt {opt} is outside min..max ({low}..{high})", line, f"{where}.opt")
    return Batch(low, high, opt)


def parse_inputs(value: Any, reader, line: int | None, where: str) -> tuple[Input, ...]:
    items = reader.sequence(value, line, where)
    if not 1 <= len(items) <= MAX_INPUTS:
        raise reader.error(f"a model has 1..{MAX_INPUTS} inputs, got {len(items)}", line, where)
    inputs, seen = [], set()
    for i, raw in enumerate(items):
        spec = _parse_input(raw, reader, items.line_of(i), f"{where}[{i}]")
        if spec.name in seen:
            raise reader.error(f"two inputs are named {spec.name!r}", items.line_of(i), f"{where}[{i}].name")
        seen.add(spec.name)
        inputs.append(spec)
    return tuple(inputs)


def _parse_input(raw: Any, reader, line: int | None, where: str) -> Input:
    raw = reader.mapping(raw, line, where)
    reader.check_keys(raw, INPUT_FIELDS, where)

    def at(name):
        return raw.line_of(name) if hasattr(raw, "line_of") else line

    name = raw.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise reader.error(f"an input name is an identifier (letters, digits, '_'), got {name!r}", at("name"),
                           f"{where}.name", hint="the name the model's forward() gives the argument")
    shape = raw.get("shape")
    shape_hint = "e.g. shape: [batch, 128]"
    if not isinstance(shape, list) or not 2 <= len(shape) <= 8:
        raise reader.error(f"shape is a list of 2..8 dimensions starting with batch, got {shape!r}", at("shape"),
                           f"{where}.shape", hint=shape_hint)
    if shape[0] != BATCH or any(d == BATCH for d in shape[1:]):
        raise reader.error(f"the first dimension (and only it) is {BATCH!r}, got {shape!r}", at("shape"),
                           f"{where}.shape", hint=shape_hint)
    elements = 1
    for d in shape[1:]:
        if not _whole(d) or not 1 <= d <= MAX_DIM:
            raise reader.error(f"a dimension is a whole number 1..{MAX_DIM} (or batch first), got {d!r}",
                               at("shape"), f"{where}.shape", hint=shape_hint)
        elements *= d
    if elements > MAX_ELEMENTS:
        raise reader.error(f"one item of this input has {elements} elements; the most is {MAX_ELEMENTS}",
                           at("shape"), f"{where}.shape")
    dtype = raw.get("dtype", "float32")
    if dtype not in DTYPES:
        from buildsys.errors import did_you_mean
        raise reader.error(f"unknown dtype {dtype!r}", at("dtype"), f"{where}.dtype",
                           hint=did_you_mean(str(dtype), DTYPES) or f"one of: {', '.join(DTYPES)}")
    return Input(name, tuple(shape), dtype, _parse_range(raw.get("range"), name, dtype, reader, at("range"),
                                                           f"{where}.range"))


def _parse_range(value: Any, name: str, dtype: str, reader, line: int | None, where: str) -> tuple:
    integer = dtype in INT_DTYPES
    if value is None:
        if dtype == "bool" or (integer and name.lower().endswith("mask")):
            return (0, 1)
        if integer:
            raise reader.error(f"integer input {name!r} needs a range of valid values", line, where,
                               hint="e.g. range: [0, 29999] for token ids of a 30000-word vocabulary")
        return (0.0, 1.0)
    if not isinstance(value, list) or len(value) != 2 or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value):
        raise reader.error(f"range is [low, high] (two finite numbers), got {value!r}", line, where)
    low, high = value
    if integer:
        limits = {"int64": (-2**63, 2**63 - 1), "int32": (-2**31, 2**31 - 1), "uint8": (0, 255), "bool": (0, 1)}
        lo, hi = limits[dtype]
        if not (_whole(low) and _whole(high) and lo <= low <= high <= hi):
            raise reader.error(f"range of a {dtype} input is two whole numbers low <= high within {lo}..{hi}, got "
                               f"{value!r}", line, where)
        return (low, high)
    if not low < high or max(abs(low), abs(high)) > 1e30:
        raise reader.error(f"range of a float input is [low, high) with low < high, got {value!r}", line, where)
    return (float(low), float(high))


def inputs_from_file(file_inputs, declared: Any, reader, line: int | None, where: str,
                     source: str) -> tuple[tuple[Input, ...], int | None]:
    """A model file's inputs (``config.modelfiles.FileInput``) completed and checked by the entry's
    ``inputs:``: (the signature's inputs, the batch size the file fixes, or None when its first
    dimension is symbolic, a batch range's). The file decides names and order; a declared input
    may give a size to a dimension the file leaves open, the value ``range``, and repeat what the
    file says; anything it contradicts is refused, naming both sides."""
    items = reader.sequence(declared, line, where) if declared is not None else []
    by_name: dict[str, tuple[int, Any]] = {}
    names = [f.name for f in file_inputs]
    for i, raw in enumerate(items):
        raw = reader.mapping(raw, items.line_of(i) if hasattr(items, "line_of") else line, f"{where}[{i}]")
        reader.check_keys(raw, INPUT_FIELDS, f"{where}[{i}]")
        name = raw.get("name")
        if name not in names:
            from buildsys.errors import did_you_mean
            raise reader.error(f"{source} has no input {name!r}", items.line_of(i), f"{where}[{i}].name",
                               hint=did_you_mean(str(name), names) or f"its inputs: {', '.join(names)}")
        if name in by_name:
            raise reader.error(f"two inputs are named {name!r}", items.line_of(i), f"{where}[{i}].name")
        by_name[name] = (i, raw)
    if not 1 <= len(file_inputs) <= MAX_INPUTS:
        raise reader.error(f"{source} has {len(file_inputs)} inputs; a model has 1..{MAX_INPUTS}", line, where)
    if len(set(names)) != len(names):
        twice = next(n for n in names if names.count(n) > 1)
        raise reader.error(f"{source} names two inputs {twice!r} (not a valid ONNX graph)", line, where)
    inputs, fixed_batch = [], None
    symbols: dict[str, tuple[int, str]] = {}  # a named open dimension -> the size it got, and where
    for spec in file_inputs:
        index, raw = by_name.get(spec.name, (None, {}))
        at = f"{where}[{index}]" if index is not None else where
        at_line = items.line_of(index) if index is not None else line
        if spec.dtype not in DTYPES:
            raise reader.error(f"{source}: input {spec.name!r} is {spec.dtype}; buildsys takes {', '.join(DTYPES)}",
                               at_line, at)
        if "dtype" in raw and raw["dtype"] != spec.dtype:
            raise reader.error(f"input {spec.name!r} is declared {raw['dtype']} but {source} says {spec.dtype}",
                               at_line, f"{at}.dtype", hint="leave dtype out: the file decides it")
        if not 2 <= len(spec.dims) <= 8:
            raise reader.error(f"{source}: input {spec.name!r} has {len(spec.dims)} dimensions ({list(spec.dims)}); "
                               "buildsys takes 2..8, the first the batch", at_line, at)
        declared_shape = raw.get("shape")
        if declared_shape is not None and (not isinstance(declared_shape, list) or
                                           len(declared_shape) != len(spec.dims)):
            raise reader.error(f"input {spec.name!r} is declared with shape {declared_shape!r} but {source} gives it "
                               f"{len(spec.dims)} dimensions {_dims_text(spec.dims)}", at_line, f"{at}.shape")
        first = spec.dims[0]
        if isinstance(first, int):
            if fixed_batch not in (None, first):
                raise reader.error(f"{source} fixes the batch at {fixed_batch} for one input and {first} for "
                                   f"input {spec.name!r}", at_line, at)
            fixed_batch = first
        shape = [BATCH]
        for d, (dim, want) in enumerate(zip(spec.dims[1:], (declared_shape or [None] * len(spec.dims))[1:]), 1):
            if isinstance(dim, int):
                if want is not None and want != dim:
                    raise reader.error(f"input {spec.name!r} dimension {d} is declared {want!r} but {source} says "
                                       f"{dim} (its shape {_dims_text(spec.dims)})", at_line, f"{at}.shape")
                shape.append(dim)
            elif want is None:
                raise reader.error(f"{source} leaves dimension {d} ({dim or '?'}) of input {spec.name!r} open "
                                   f"(its shape {_dims_text(spec.dims)}); give it a size", at_line, where,
                                   hint=f"inputs: [{{name: {spec.name}, shape: {_example_shape(spec.dims)}}}]")
            else:
                if isinstance(dim, str):  # one name is one size: the graph combines the inputs along it
                    size, first_use = symbols.setdefault(dim, (want, f"input {spec.name!r} dimension {d}"))
                    if size != want:
                        raise reader.error(f"{source} names dimension {d} of input {spec.name!r} {dim!r}, as "
                                           f"{first_use}; they are declared {want!r} and {size!r}", at_line,
                                           f"{at}.shape", hint=f"give every {dim!r} dimension one size")
                shape.append(want)
        merged = {"name": spec.name, "shape": shape, "dtype": spec.dtype,
                  **({"range": raw["range"]} if "range" in raw else {})}
        inputs.append(_parse_input(merged, reader, at_line, at))
    return tuple(inputs), fixed_batch


def _dims_text(dims) -> str:
    return "[" + ", ".join(str(d) if d is not None else "?" for d in dims) + "]"


def _example_shape(dims) -> str:
    return "[" + ", ".join([BATCH] + [str(d) if isinstance(d, int) else "128" for d in dims[1:]]) + "]"
