"""An artifact's input signature, read from its manifest, and the checks every input passes
before it reaches the VM (numpy only).

Manifests written before signatures existed have ``io.input`` alone: one float32 input of a fixed
shape, named ``input``. Newer ones list ``io.inputs`` (name, shape with ``"batch"`` first, dtype,
the range of valid integer values) and ``io.batch`` (min, max). A compiled kernel does not check
what it reads: a batch past the maximum overruns the memory planned for it, a token id past the
embedding table reads outside it. Both are refused here with an ``InputError`` instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from buildsys.errors import InputError, did_you_mean

BATCH = "batch"


@dataclass(frozen=True)
class Input:
    name: str
    shape: tuple  # "batch" or whole numbers
    dtype: str
    range: tuple | None = None

    def shape_at(self, batch: int) -> tuple[int, ...]:
        return tuple(batch if d == BATCH else d for d in self.shape)


@dataclass(frozen=True)
class Signature:
    inputs: tuple[Input, ...]
    batch_min: int
    batch_max: int

    @classmethod
    def from_manifest(cls, manifest: Mapping[str, Any]) -> "Signature":
        io = manifest["io"]
        if "inputs" not in io:  # format 1 before signatures: one float32 input, batch fixed
            shape = tuple(io["input"]["shape"])
            return cls((Input("input", (BATCH, *shape[1:]), io["input"].get("dtype", "float32")),),
                       shape[0], shape[0])
        inputs = tuple(Input(i["name"], tuple(i["shape"]), i["dtype"],
                             None if i.get("range") is None else tuple(i["range"])) for i in io["inputs"])
        return cls(inputs, io["batch"]["min"], io["batch"]["max"])

    @property
    def names(self) -> list[str]:
        return [i.name for i in self.inputs]

    def describe(self) -> str:
        batch = str(self.batch_min) if self.batch_min == self.batch_max else f"{self.batch_min}..{self.batch_max}"
        shapes = ", ".join(f"{i.name}: {i.dtype}[{', '.join(map(str, i.shape))}]" for i in self.inputs)
        return f"({shapes}) with batch {batch}"

    def bind(self, args: Sequence, kwargs: Mapping[str, Any], key: str = "?") -> list[np.ndarray]:
        """Positional and named inputs -> checked, contiguous arrays in signature order."""
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
        if not self.batch_min <= batch <= self.batch_max:
            allowed_batch = (f"batch {self.batch_min}" if self.batch_min == self.batch_max
                             else f"a batch of {self.batch_min} to {self.batch_max}")
            raise InputError(f"{where}: input {spec.name!r} has batch {batch}; the artifact takes {allowed_batch}"
                             + ("" if self.batch_min == self.batch_max else
                                " (split larger batches)" if batch > self.batch_max else ""))
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
