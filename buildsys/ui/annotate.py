"""Reading photos and drawing detections on them (Pillow)."""

from __future__ import annotations

import colorsys
from pathlib import Path

import numpy as np

from buildsys.errors import UsageError


def read_image(path: str | Path) -> np.ndarray:
    """An RGB HxWx3 uint8 array from any format Pillow reads."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except (OSError, UnidentifiedImageError) as exc:
        raise UsageError(f"cannot read image {path}: {exc}") from None


def _colour(label: int) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb((label * 0.618034) % 1.0, 0.85, 1.0)
    return int(r * 255), int(g * 255), int(b * 255)


def draw_detections(image: np.ndarray, detections, path: str | Path, mask_threshold: float = 0.5) -> None:
    """Boxes, label names with scores, translucent masks and keypoints, saved to ``path``."""
    from PIL import Image, ImageDraw

    canvas = image.astype(np.float32).copy()
    if detections.masks is not None:
        for i in range(len(detections)):
            region = detections.masks[i] > mask_threshold
            canvas[region] = 0.5 * canvas[region] + 0.5 * np.array(_colour(int(detections.labels[i])))
    picture = Image.fromarray(canvas.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(picture)
    for i in range(len(detections)):
        colour = _colour(int(detections.labels[i]))
        x0, y0, x1, y1 = (float(v) for v in detections.boxes[i])
        draw.rectangle([x0, y0, x1, y1], outline=colour, width=2)
        text = f"{detections.label_name(i)} {detections.scores[i]:.2f}"
        left, top, right, bottom = draw.textbbox((x0, y0), text)
        draw.rectangle([left, top - (bottom - top) - 2, right + 2, top], fill=colour)
        draw.text((x0 + 1, y0 - (bottom - top) - 2), text, fill=(0, 0, 0))
        if detections.keypoints is not None:
            for x, y, _visible in detections.keypoints[i]:
                draw.ellipse([x - 2.5, y - 2.5, x + 2.5, y + 2.5], fill=colour, outline=(0, 0, 0))
    try:
        picture.save(path)
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot write {path}: {exc}") from None
