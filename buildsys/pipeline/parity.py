"""Parity of a compiled artifact against PyTorch, measured, never assumed."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np

from buildsys.errors import ParityError


@dataclass(frozen=True)
class Parity:
    max_abs: float
    max_rel: float  # max over outputs of max|ref - out| / max|ref|
    outputs: int
    tolerance: float
    detections: int | None = None  # detections matched and compared (detectors only); 0 means vacuous
    matched_fraction: float | None = None  # detectors: matched / max(reference, artifact) detections
    tied_scores: bool | None = None  # the reference has equal scores: final order is not well defined
    pre_nms_max_rel: float | None = None
    final_max_rel: float | None = None
    # mask / keypoint heads against PyTorch's heads run on the artifact's own boxes
    second_stage_max_rel: float | None = None
    worst_output: int | None = None  # index of the output with the largest relative error

    @property
    def passed(self) -> bool:
        if self.max_rel > self.tolerance:
            return False
        return self.matched_fraction in (None, 1.0) or bool(self.tied_scores)

    def to_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed}

    def explain(self, output_names: list[str]) -> str:
        """Why parity failed, with the figures that locate it."""
        why = (f"max relative error {self.max_rel:.3g} exceeds tolerance {self.tolerance:g} "
               f"(max abs {self.max_abs:.3g})" if self.max_rel > self.tolerance else
               f"only {self.matched_fraction:.0%} of the detections match PyTorch's")
        parts = [f"{name} {value:.3g}" for name, value in (
            ("pre-NMS max_rel", self.pre_nms_max_rel), ("final max_rel", self.final_max_rel),
            ("second stage max_rel", self.second_stage_max_rel),
            ("matched", self.matched_fraction)) if value is not None]
        if self.worst_output is not None and self.worst_output < len(output_names):
            parts.append(f"worst output {output_names[self.worst_output]!r}")
        return why + (f" [{', '.join(parts)}]" if parts else "")


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
    worst = None
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
        rel = diff / scale if scale > 0 else diff
        max_abs = max(max_abs, diff)
        if worst is None or rel > max_rel:
            worst = i
        max_rel = max(max_rel, rel)
    return Parity(max_abs=max_abs, max_rel=max_rel, outputs=len(reference), tolerance=tolerance,
                  worst_output=worst)


def _match(reference: list[np.ndarray], actual: list[np.ndarray]) -> np.ndarray:
    """For each reference detection (highest score first), the unmatched artifact detection
    of the same label with the closest box (L-inf), or -1."""
    ref_boxes, ref_scores, ref_labels = reference[:3]
    boxes, labels = actual[0], actual[2]
    order = np.full(len(ref_boxes), -1)
    taken = np.zeros(len(boxes), bool)
    for i in np.argsort(-ref_scores, kind="stable"):
        candidates = np.flatnonzero((labels == ref_labels[i]) & ~taken)
        if candidates.size:
            distance = np.abs(boxes[candidates].astype(np.float64) - ref_boxes[i]).max(axis=1)
            best = candidates[int(np.argmin(distance))]
            order[i], taken[best] = best, True
    return order


def match_detections(reference: list[np.ndarray], actual: list[np.ndarray]) -> np.ndarray | None:
    """Index into ``actual`` for each reference detection, matched regardless of order;
    None when the counts differ or a detection has no partner of the same label."""
    if len(reference[0]) != len(actual[0]):
        return None
    order = _match(reference, actual)
    return None if (order < 0).any() else order


def compare_detector_outputs(reference: list[np.ndarray], actual: list[np.ndarray], final_count: int,
                             tolerance: float, key: str | None = None,
                             second_stage: Callable[[np.ndarray, np.ndarray], list[np.ndarray]] | None = None
                             ) -> Parity:
    """Pre-NMS tensors element-wise (the gate), then final detections matched regardless of order.

    Final detections gate too, unless the reference has tied scores (random-weight
    detectors): then which of two equal boxes survives NMS is arbitrary, and the
    matched fraction and errors are recorded, not enforced.

    Outputs after boxes/scores/labels (mask probabilities, keypoint logits) come from
    heads that run on the final boxes. With ``second_stage(boxes, labels)`` (PyTorch's
    heads), they are compared with those heads run on the artifact's own boxes: the
    boxes are gated above, and this gates the heads without amplifying box rounding.
    """
    if len(reference) != len(actual):
        raise ParityError(f"PyTorch returned {len(reference)} outputs, the artifact {len(actual)}",
                          key=key, stage="verify")
    pre = compare_outputs(reference[final_count:], actual[final_count:], tolerance, key=key) \
        if len(reference) > final_count else None
    ref_final, out_final = reference[:final_count], actual[:final_count]
    scores = ref_final[1]
    tied = bool(len(np.unique(scores)) < len(scores))
    order = _match(ref_final, out_final)
    matched = int((order >= 0).sum())
    total = max(len(ref_final[0]), len(out_final[0]))
    fraction = matched / total if total else 1.0
    final = second = None
    if fraction == 1.0:
        aligned = [out[order] if out.ndim and len(out) == len(order) else out for out in out_final]
        if second_stage is not None and final_count > 3:
            given = second_stage(out_final[0], out_final[2])
            second = compare_outputs(given, out_final[3:], tolerance, key=key)
            final = compare_outputs(ref_final[:3], aligned[:3], tolerance, key=key)
        else:
            final = compare_outputs(ref_final, aligned, tolerance, key=key)
    gates = [p for p in (pre, None if tied else final, second) if p is not None]
    return Parity(max_abs=max((p.max_abs for p in gates), default=0.0),
                  max_rel=max((p.max_rel for p in gates), default=0.0),
                  outputs=len(reference), tolerance=tolerance, detections=matched, matched_fraction=fraction,
                  tied_scores=tied, pre_nms_max_rel=pre.max_rel if pre else None,
                  final_max_rel=final.max_rel if final else None,
                  second_stage_max_rel=second.max_rel if second else None,
                  worst_output=max(((p.max_rel, p.worst_output + (final_count if p is pre else 3 if p is second else 0))
                                    for p in gates if p.worst_output is not None), default=(0, None))[1])


def matched_outputs(reference: list[np.ndarray], actual: list[np.ndarray], final_count: int) -> list[np.ndarray]:
    """``actual`` with its final detections (the first ``final_count`` outputs: boxes, scores,
    labels, then per-detection heads such as masks) put in the reference's order, when every
    detection has its match (``_match``); else as it was. Two detections whose scores differ by
    less than the rounding swap places without being wrong: compared by position, Mask R-CNN's
    boxes and masks looked 0.98 apart."""
    if final_count < 3 or len(reference) < 3 or len(actual) < 3:
        return list(actual)
    order = match_detections(reference[:final_count], actual[:final_count])
    if order is None:
        return list(actual)
    return [out[order] if out.ndim and len(out) == len(order) else out for out in actual[:final_count]] + list(
        actual[final_count:])


def worst_parity(by_batch: dict) -> Parity:
    """One figure for an artifact checked at several batch sizes: a failing check first, then
    the largest relative error."""
    return max(by_batch.values(), key=lambda p: (not p.passed, p.max_rel))
