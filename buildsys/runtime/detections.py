"""Detector outputs -> detections in the original image: numpy only, no torch.

The executable returns boxes in the coordinates of its (static) input tensor,
or, for mask / keypoint models, of the detector's internally resized image
(see ``manifest["detection"]``), plus 28x28 mask probabilities or 56x56
keypoint heatmaps. What is left here is light work: scaling boxes, pasting
masks, decoding keypoints, filtering by score.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Mapping, Sequence

import numpy as np


@dataclass(frozen=True)
class Detections:
    """Detections in original-image pixels, best score first."""

    boxes: np.ndarray  # (N, 4) float32: x1, y1, x2, y2
    scores: np.ndarray  # (N,) float32
    labels: np.ndarray  # (N,) int64
    masks: np.ndarray | None = None  # (N, H, W) float32 probabilities in the original image
    categories: Sequence[str] | None = None
    keypoints: np.ndarray | None = None  # (N, K, 3) float32: x, y, visibility (1), original image
    keypoint_scores: np.ndarray | None = None  # (N, K) float32: heatmap value at each keypoint

    def __len__(self) -> int:
        return len(self.scores)

    def label_name(self, index: int) -> str:
        label = int(self.labels[index])
        if self.categories and 0 <= label < len(self.categories):
            return self.categories[label]
        return f"class {label}"

    def filter(self, score_threshold: float = 0.0, max_detections: int | None = None) -> "Detections":
        keep = np.flatnonzero(self.scores > score_threshold)
        keep = keep[np.argsort(-self.scores[keep], kind="stable")][:max_detections]
        def pick(values):
            return None if values is None else values[keep]
        return replace(self, boxes=self.boxes[keep], scores=self.scores[keep], labels=self.labels[keep],
                       masks=pick(self.masks), keypoints=pick(self.keypoints),
                       keypoint_scores=pick(self.keypoint_scores))


def _resize_bilinear(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize with half-pixel centres (PyTorch's ``align_corners=False``)."""
    in_h, in_w = mask.shape
    ys = np.clip((np.arange(height) + 0.5) * in_h / height - 0.5, 0, in_h - 1)
    xs = np.clip((np.arange(width) + 0.5) * in_w / width - 0.5, 0, in_w - 1)
    y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
    y1, x1 = np.minimum(y0 + 1, in_h - 1), np.minimum(x0 + 1, in_w - 1)
    wy, wx = (ys - y0)[:, None], (xs - x0)[None, :]
    top = mask[y0][:, x0] * (1 - wx) + mask[y0][:, x1] * wx
    bottom = mask[y1][:, x0] * (1 - wx) + mask[y1][:, x1] * wx
    return (top * (1 - wy) + bottom * wy).astype(np.float32)


def paste_masks(masks: np.ndarray, boxes: np.ndarray, height: int, width: int, padding: int = 1) -> np.ndarray:
    """Paste (N, 1, M, M) box-relative mask probabilities into (N, height, width) images,
    the way torchvision's ``paste_masks_in_image`` does (pad by one pixel, scale the box to match)."""
    out = np.zeros((len(masks), height, width), np.float32)
    if len(masks) == 0:
        return out
    m = masks.shape[-1]
    scale = (m + 2 * padding) / m
    padded = np.pad(masks[:, 0], ((0, 0), (padding, padding), (padding, padding)))
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    half = (boxes[:, 2:] - boxes[:, :2]) / 2 * scale
    expanded = np.concatenate([centres - half, centres + half], axis=1).astype(np.int64)
    for i, (x0, y0, x1, y1) in enumerate(expanded):
        w, h = max(int(x1 - x0 + 1), 1), max(int(y1 - y0 + 1), 1)
        resized = _resize_bilinear(padded[i], h, w)
        ix0, iy0, ix1, iy1 = max(x0, 0), max(y0, 0), min(x1 + 1, width), min(y1 + 1, height)
        if ix1 > ix0 and iy1 > iy0:
            out[i, iy0:iy1, ix0:ix1] = resized[iy0 - y0:iy1 - y0, ix0 - x0:ix1 - x0]
    return out


def _cubic_weights(in_size: int, out_size: int, a: float = -0.75) -> np.ndarray:
    """(out_size, in_size) matrix of PyTorch's bicubic resize (``align_corners=False``,
    A = -0.75, source indices clamped at the borders)."""
    real = (np.arange(out_size) + 0.5) * (in_size / out_size) - 0.5  # not clamped for cubic
    base = np.floor(real)
    t = real - base
    weights = np.zeros((out_size, in_size), np.float64)

    def near(x):  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x):  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    for offset, coefficient in ((-1, far(t + 1)), (0, near(t)), (1, near(1 - t)), (2, far(2 - t))):
        index = np.clip(base + offset, 0, in_size - 1).astype(int)
        np.add.at(weights, (np.arange(out_size), index), coefficient)
    return weights


def heatmaps_to_keypoints(maps: np.ndarray, rois: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """torchvision's ``heatmaps_to_keypoints`` in numpy: (R, K, H, W) logits and (R, 4) boxes ->
    (R, K, 3) keypoints (x, y, 1) in the boxes' frame and (R, K) scores. Each map is resized
    bicubically to its box (rounded up), and the argmax cell centre is scaled back into the box."""
    count, num_keypoints = maps.shape[:2]
    keypoints = np.zeros((count, num_keypoints, 3), np.float32)
    scores = np.zeros((count, num_keypoints), np.float32)
    widths = np.maximum(rois[:, 2] - rois[:, 0], 1)
    heights = np.maximum(rois[:, 3] - rois[:, 1], 1)
    for i in range(count):
        out_w, out_h = int(np.ceil(widths[i])), int(np.ceil(heights[i]))
        wy = _cubic_weights(maps.shape[2], out_h)
        wx = _cubic_weights(maps.shape[3], out_w)
        resized = np.einsum("yh,khw,xw->kyx", wy, maps[i].astype(np.float64), wx)
        flat = resized.reshape(num_keypoints, -1).argmax(axis=1)
        y_int, x_int = np.divmod(flat, out_w)
        keypoints[i, :, 0] = (x_int + 0.5) * (widths[i] / out_w) + rois[i, 0]
        keypoints[i, :, 1] = (y_int + 0.5) * (heights[i] / out_h) + rois[i, 1]
        keypoints[i, :, 2] = 1
        scores[i] = resized[np.arange(num_keypoints), y_int, x_int]
    return keypoints, scores


def to_detections(outputs: Sequence[np.ndarray], manifest: Mapping, original_size: tuple[int, int]
                  ) -> Detections:
    """Raw executable outputs -> Detections in an image of ``original_size`` (height, width)."""
    info = manifest.get("detection", {})
    names = [o["name"] for o in manifest["io"]["outputs"]]
    named = dict(zip(names, outputs))
    frame_boxes = named["boxes"].astype(np.float32)
    frame_h, frame_w = info.get("boxes_frame") or manifest["io"]["input"]["shape"][-2:]
    height, width = original_size
    scale = np.array([width / frame_w, height / frame_h], np.float32)
    boxes = (frame_boxes.reshape(-1, 2, 2) * scale).reshape(-1, 4)
    masks = keypoints = keypoint_scores = None
    if "mask_probs" in named:
        masks = paste_masks(named["mask_probs"], boxes, height, width)
    if "keypoint_logits" in named:  # decoded in the frame the boxes came in, then scaled like them
        keypoints, keypoint_scores = heatmaps_to_keypoints(named["keypoint_logits"], frame_boxes)
        keypoints[:, :, :2] *= scale
    return Detections(boxes=boxes, scores=named["scores"].astype(np.float32), labels=named["labels"].astype(np.int64),
                      masks=masks, categories=info.get("categories"), keypoints=keypoints,
                      keypoint_scores=keypoint_scores)


def image_to_input(image: np.ndarray, input_shape: Sequence[int]) -> np.ndarray:
    """HxWx3 (uint8, or float in [0, 1]) -> the artifact's 1x3xHxW float32 input, resized bilinearly.
    torchvision detectors normalize (mean/std) inside the model, so [0, 1] is what they take."""
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise ValueError(f"expected an HxWx3 image, got shape {image.shape}")
    pixels = image[:, :, :3].astype(np.float32)
    if image.dtype == np.uint8:
        pixels /= 255.0
    height, width = input_shape[-2:]
    if pixels.shape[:2] != (height, width):
        pixels = np.stack([_resize_bilinear(pixels[:, :, c], height, width) for c in range(3)], axis=2)
    return np.ascontiguousarray(pixels.transpose(2, 0, 1)[None])
