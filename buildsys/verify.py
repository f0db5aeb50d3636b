"""Parity of a compiled artifact against PyTorch, measured, never assumed."""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass

import numpy as np

from .errors import ParityError


@dataclass(frozen=True)
class Parity:
    max_abs: float
    max_rel: float  # max over outputs of max|ref - out| / max|ref|
    outputs: int
    tolerance: float
    detections: int | None = None  # detections matched and compared (detectors only); 0 means vacuous

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


def match_detections(reference: list[np.ndarray], actual: list[np.ndarray]) -> np.ndarray | None:
    """Index into ``actual`` for each reference detection, matched regardless of order.

    Outputs are (boxes, scores, labels, per-detection extras...). Reference
    detections, highest score first, each take the unmatched detection of the
    same label whose box is closest (L-inf). None when the counts differ or a
    label has no partner: the artifact found different detections.
    """
    ref_boxes, ref_scores, ref_labels = reference[:3]
    boxes, labels = actual[0], actual[2]
    if len(ref_boxes) != len(boxes):
        return None
    order = np.full(len(ref_boxes), -1)
    taken = np.zeros(len(boxes), bool)
    for i in np.argsort(-ref_scores, kind="stable"):
        candidates = np.flatnonzero((labels == ref_labels[i]) & ~taken)
        if candidates.size == 0:
            return None
        distance = np.abs(boxes[candidates].astype(np.float64) - ref_boxes[i]).max(axis=1)
        best = candidates[int(np.argmin(distance))]
        order[i], taken[best] = best, True
    return order


def compare_detections(reference: list[np.ndarray], actual: list[np.ndarray], tolerance: float,
                       key: str | None = None) -> Parity:
    """Match detections regardless of order, then compare the aligned outputs element-wise."""
    if len(reference) != len(actual):
        raise ParityError(f"PyTorch returned {len(reference)} outputs, the artifact {len(actual)}",
                          key=key, stage="verify")
    order = match_detections(reference, actual)
    if order is None:
        raise ParityError(f"detections differ: PyTorch found {len(reference[0])} "
                          f"(labels {np.bincount(reference[2].astype(int)).tolist()}), the artifact "
                          f"{len(actual[0])} (labels {np.bincount(actual[2].astype(int)).tolist()})",
                          key=key, stage="verify")
    aligned = [out[order] if out.ndim and len(out) == len(order) else out for out in actual]
    return dataclasses.replace(compare_outputs(reference, aligned, tolerance, key=key), detections=len(order))
