"""Parity of a compiled artifact against PyTorch, measured, never assumed."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from .errors import ParityError


@dataclass(frozen=True)
class Parity:
    max_abs: float
    max_rel: float  # max over outputs of max|ref - out| / max|ref|
    outputs: int
    tolerance: float

    @property
    def passed(self) -> bool:
        return self.max_rel <= self.tolerance

    def to_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed}


def flatten_outputs(value) -> list[np.ndarray]:
    """torch tensors / tuples / lists / dicts / TVM arrays -> flat list of numpy arrays."""
    if hasattr(value, "detach"):
        return [value.detach().cpu().numpy()]
    if hasattr(value, "numpy") and not isinstance(value, np.ndarray):
        return [value.numpy()]
    if isinstance(value, np.ndarray):
        return [value]
    if isinstance(value, dict):
        value = list(value.values())
    flat: list[np.ndarray] = []
    for item in value:
        flat.extend(flatten_outputs(item))
    return flat


def compare_outputs(reference: list[np.ndarray], actual: list[np.ndarray], tolerance: float,
                    key: str | None = None) -> Parity:
    """Element-wise comparison of outputs in order; raises ParityError on shape or count mismatch."""
    if len(reference) != len(actual):
        raise ParityError(f"PyTorch returned {len(reference)} outputs, the artifact {len(actual)}",
                          key=key, stage="verify")
    max_abs = max_rel = 0.0
    for i, (ref, out) in enumerate(zip(reference, actual)):
        if ref.shape != out.shape:
            raise ParityError(f"output {i}: PyTorch shape {ref.shape}, artifact shape {out.shape}",
                              key=key, stage="verify")
        if ref.size == 0:
            continue
        ref64, out64 = ref.astype(np.float64), out.astype(np.float64)
        if not np.isfinite(out64).all() and np.isfinite(ref64).all():
            raise ParityError(f"output {i}: the artifact produced NaN or inf", key=key, stage="verify")
        diff = float(np.abs(ref64 - out64).max())
        scale = float(np.abs(ref64).max())
        max_abs = max(max_abs, diff)
        max_rel = max(max_rel, diff / scale if scale > 0 else diff)
    return Parity(max_abs=max_abs, max_rel=max_rel, outputs=len(reference), tolerance=tolerance)
