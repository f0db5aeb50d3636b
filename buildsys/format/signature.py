"""An artifact's input signature, one type for every layer: what builds.yaml declares
(``buildsys/config/signature.py`` parses it into these), what the build exports and keys, what
the manifest carries (``io``), and what the thin runtime checks every input against before it
reaches the VM.

- ``Batch``: a static size (min == max) or a range compiled once with a symbolic batch
  dimension, with ``opt``, the representative size parity, tuning and bench use besides the ends.
- ``Input``: a name, a shape whose first dimension is ``"batch"``, a dtype, and the range sample
  values are drawn from (integers: the values the runtime accepts; an embedding reading past its
  table would crash the process).
- ``Signature``: the inputs and the batch; ``to_io``/``from_io`` are the manifest's ``io``,
  ``check_io`` validates a manifest's ``io`` as outside input, ``bind`` checks a call's inputs.

Manifests written before signatures existed have ``io.input`` alone: one float32 input of a fixed
shape, named ``input``. numpy only (the runtime imports this module).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from buildsys.errors import InputError, did_you_mean

BATCH = "batch"  # the name of the batch dimension in a declared shape
FLOAT_DTYPES = ("float32", "float16")
INT_DTYPES = ("int64", "int32", "uint8", "bool")
DTYPES = FLOAT_DTYPES + INT_DTYPES
MAX_BATCH = 4096
MAX_INPUTS = 16
MAX_DIM = 1 << 20
MAX_ELEMENTS = 1 << 28  # one item of one input; more is a typo


@dataclass(frozen=True)
class Batch:
    """A static batch (min == max) or a range with a representative size ``opt``."""

    min: int
    max: int
    opt: int

    @classmethod
    def static(cls, size: int) -> "Batch":
        return cls(size, size, size)

    @classmethod
    def from_dict(cls, value: Any) -> "Batch":
        """``to_dict`` back (absent: 1); a manifest's ``{min, max}`` without ``opt`` too."""
        if value is None:
            return STATIC_1
        if isinstance(value, int):
            return cls.static(value)
        return cls(value["min"], value["max"], value.get("opt", value["min"]))

    @property
    def dynamic(self) -> bool:
        return self.min != self.max

    @property
    def label(self) -> str:
        return f"{self.min}-{self.max}" if self.dynamic else str(self.min)

    def to_dict(self) -> int | dict:
        """The spec's (and so the key's) form: a static batch is its size."""
        return {"min": self.min, "max": self.max, "opt": self.opt} if self.dynamic else self.min

    @property
    def parity_sizes(self) -> tuple[int, ...]:
        """The sizes a build checks parity at: the ends and the representative size."""
        return tuple(sorted({self.min, self.opt, self.max}))

    @property
    def export_size(self) -> int:
        """The example batch torch.export traces a range with: torch specializes sizes 0 and 1."""
        return self.opt if self.opt >= 2 else max(2, self.min)


STATIC_1 = Batch.static(1)


@dataclass(frozen=True)
class Input:
    name: str
    shape: tuple  # "batch" first, then whole numbers
    dtype: str
    range: tuple | None = None  # (low, high) sample values are drawn from; integers must keep to it

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Input":
        rng = data.get("range")
        return cls(data["name"], tuple(data["shape"]), data["dtype"], None if rng is None else tuple(rng))

    def to_dict(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype,
                "range": None if self.range is None else list(self.range)}

    def shape_at(self, batch: int) -> tuple[int, ...]:
        return tuple(batch if d == BATCH else d for d in self.shape)


def image_input(size: tuple[int, int]) -> Input:
    """What ``input_size`` stands for: one float32 NCHW image in [0, 1)."""
    return Input("input", (BATCH, 3, *size), "float32", (0.0, 1.0))


@dataclass(frozen=True)
class Signature:
    inputs: tuple[Input, ...]
    batch: Batch

    # ------------------------------------------------------------ the manifest's io
    def to_io(self) -> dict:
        """``inputs``, the ``batch`` range, and ``input``: the first input at the smallest batch,
        for readers that know one input only."""
        first = self.inputs[0]
        return {"input": {"shape": list(first.shape_at(self.batch.min)), "dtype": first.dtype},
                "inputs": [i.to_dict() for i in self.inputs],
                "batch": {"min": self.batch.min, "max": self.batch.max, "opt": self.batch.opt}}

    @classmethod
    def from_io(cls, io: Mapping[str, Any]) -> "Signature":
        """From a manifest's ``io`` that ``check_io`` passed."""
        if "inputs" not in io:  # before signatures: one float32 input, batch fixed
            shape = tuple(io["input"]["shape"])
            return cls((Input("input", (BATCH, *shape[1:]), io["input"].get("dtype", "float32")),),
                       Batch.static(shape[0]))
        return cls(tuple(Input.from_dict(i) for i in io["inputs"]), Batch.from_dict(io["batch"]))

    @classmethod
    def from_manifest(cls, manifest: Mapping[str, Any]) -> "Signature":
        return cls.from_io(manifest["io"])

    # ------------------------------------------------------------ what it says
    @property
    def batch_min(self) -> int:
        return self.batch.min

    @property
    def batch_max(self) -> int:
        return self.batch.max

    @property
    def names(self) -> list[str]:
        return [i.name for i in self.inputs]

    def describe(self) -> str:
        batch = str(self.batch.min) if not self.batch.dynamic else f"{self.batch.min}..{self.batch.max}"
        shapes = ", ".join(f"{i.name}: {i.dtype}[{', '.join(map(str, i.shape))}]" for i in self.inputs)
        return f"({shapes}) with batch {batch}"

    # ------------------------------------------------------------ a call's inputs
    def bind(self, args: Sequence, kwargs: Mapping[str, Any], key: str = "?") -> list[np.ndarray]:
        """Positional and named inputs -> checked, contiguous arrays in signature order. A compiled
        kernel does not check what it reads: a batch past the maximum overruns the memory planned
        for it, a token id past the embedding table reads outside it; both are an InputError."""
        where = f"artifact {key[:12]}"
        if len(args) > len(self.inputs):
            raise InputError(f"{where} takes {len(self.inputs)} input(s) {self.describe()}, got {len(args)} "
                             "positional")
        given = dict(zip(self.names, args))
        for name, value in kwargs.items():
            if name not in self.names:
                hint = did_you_mean(name, self.names)
                raise InputError(f"{where} has no input {name!r} (inputs: {', '.join(self.names)})"
                                 + (f"; {hint}" if hint else ""))
            if name in given:
                raise InputError(f"{where}: input {name!r} given twice (positionally and by name)")
            given[name] = value
        missing = [n for n in self.names if n not in given]
        if missing:
            raise InputError(f"{where}: missing input(s) {', '.join(missing)}; it takes {self.describe()}")
        arrays = [self._check(spec, given[spec.name], where) for spec in self.inputs]
        batches = {a.shape[0] for a in arrays}
        if len(batches) > 1:
            raise InputError(f"{where}: inputs have different batch sizes "
                             f"({', '.join(f'{s.name} {a.shape[0]}' for s, a in zip(self.inputs, arrays))})")
        return arrays

    def _check(self, spec: Input, value: Any, where: str) -> np.ndarray:
        try:
            array = np.asarray(value)
        except (ValueError, TypeError) as exc:  # ragged lists and the like
            raise InputError(f"{where}: input {spec.name!r} is not an array: {str(exc)[:200]}") from None
        want = np.dtype(spec.dtype)
        integer = want.kind in "iub"
        allowed = "iub" if integer else "fiub"
        if array.dtype.kind not in allowed or not np.can_cast(array.dtype, want, casting="same_kind") \
                and not (want.kind == "b" and array.dtype.kind in "iu"):
            raise InputError(f"{where}: input {spec.name!r} takes {spec.dtype}, got {array.dtype}"
                             + (" (integer values: convert with .astype, after checking they are whole)"
                                if integer and array.dtype.kind == "f" else ""))
        if array.ndim != len(spec.shape) or any(d != BATCH and d != n for d, n in zip(spec.shape, array.shape)):
            raise InputError(f"{where}: input {spec.name!r} takes shape [{', '.join(map(str, spec.shape))}], got "
                             f"{tuple(array.shape)}")
        batch = array.shape[0]
        if not self.batch.min <= batch <= self.batch.max:
            allowed_batch = (f"batch {self.batch.min}" if not self.batch.dynamic
                             else f"a batch of {self.batch.min} to {self.batch.max}")
            raise InputError(f"{where}: input {spec.name!r} has batch {batch}; the artifact takes {allowed_batch}"
                             + ("" if not self.batch.dynamic else
                                " (split larger batches)" if batch > self.batch.max else ""))
        if integer and array.size:
            low, high = spec.range if spec.range is not None else ((0, 1) if want.kind == "b" else (None, None))
            lo, hi = array.min(), array.max()
            if (low is not None and lo < low) or (high is not None and hi > high):
                raise InputError(f"{where}: input {spec.name!r} holds values {lo}..{hi}; the artifact takes "
                                 f"{low}..{high} (an embedding or a lookup read past its table would crash)")
        return np.ascontiguousarray(array, dtype=want)

    def sample(self, batch: int, seed: int = 0) -> list[np.ndarray]:
        """Seeded inputs (floats uniform in [0, 1) or their range, integers within theirs)."""
        rng = np.random.default_rng(seed)
        arrays = []
        for spec in self.inputs:
            shape, dtype = spec.shape_at(batch), np.dtype(spec.dtype)
            if dtype.kind == "f":
                low, high = spec.range or (0.0, 1.0)
                arrays.append((low + (high - low) * rng.random(shape)).astype(dtype))
            else:
                low, high = spec.range or (0, 1)
                arrays.append(rng.integers(low, high, size=shape, endpoint=True).astype(dtype))
        return arrays


def check_io(io: Mapping, refuse: Callable[[str], None], shown: Callable[[Any], str] = repr) -> None:
    """A manifest's ``io.inputs`` and ``io.batch`` as outside input: ``refuse(what)`` (which
    raises) for anything ``from_io`` would misread."""
    def whole(value) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    batch = io.get("batch")
    if not isinstance(batch, dict) or not all(whole(batch.get(k)) and batch[k] > 0 for k in ("min", "max")) \
            or batch["min"] > batch["max"]:
        refuse(f"field io.batch is {shown(batch)}, not {{min, max}} batch sizes")
    inputs = io["inputs"]
    if not isinstance(inputs, list) or not 1 <= len(inputs) <= MAX_INPUTS:
        refuse(f"field io.inputs is {shown(inputs)}, not a list of 1..{MAX_INPUTS} inputs")
    for n, item in enumerate(inputs):
        where = f"io.inputs[{n}]"
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            refuse(f"field {where} is {shown(item)}, not an input with a name")
        shape, rng = item.get("shape"), item.get("range")
        if not isinstance(shape, list) or not 2 <= len(shape) <= 8 or shape[0] != BATCH or not all(
                whole(d) and d > 0 for d in shape[1:]):
            refuse(f"field {where}.shape is {shown(shape)}, not [\"batch\", sizes...]")
        if item.get("dtype") not in DTYPES:
            refuse(f"field {where}.dtype is {shown(item.get('dtype'))}, not one of {', '.join(DTYPES)}")
        if rng is not None and not (isinstance(rng, list) and len(rng) == 2 and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in rng)):
            refuse(f"field {where}.range is {shown(rng)}, not [low, high]")
