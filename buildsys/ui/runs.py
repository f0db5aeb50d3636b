"""``buildsys run``: an artifact loaded with the thin runtime, run once, and its result in words."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from buildsys.errors import UsageError


@dataclass
class RunResult:
    predictor: Any
    load_s: float
    run_ms: float
    outputs: list | None = None  # plain run
    image: Any = None  # --image: the photo (HxWx3 uint8) ...
    detections: Any = None  # ... and what the detector found in it


def run_artifact(ref: str, registry, store, *, threads: int | None = None, input_paths: tuple[str, ...] = (),
                 image_path: str | None = None, seed: int = 0, score_threshold: float = 0.9,
                 max_detections: int = 100) -> RunResult:
    """Load ``ref`` and run it on a photo (detectors), .npy arrays (one per input, in the signature's
    order or as NAME=PATH), or a seeded random input."""
    import numpy as np

    from buildsys.runtime import load_artifact

    start = time.perf_counter()
    predictor = load_artifact(ref, registry=registry, store=store, num_threads=threads)
    loaded = time.perf_counter()
    if image_path:
        from buildsys.ui.annotate import read_image

        if predictor.task != "detection":
            raise UsageError(f"--image needs a detector; {ref} is a {predictor.task} artifact")
        image = read_image(image_path)
        detections = predictor.detect(image, score_threshold, max_detections)
        return RunResult(predictor, loaded - start, (time.perf_counter() - loaded) * 1e3, image=image,
                         detections=detections)
    signature = predictor.signature
    positional, named = [], {}
    for given in input_paths:
        name, sep, path = given.partition("=")
        if not sep:
            name, path = None, given
        try:
            # mapped, not read: a header declaring more bytes than the file has is refused before any
            # allocation (a 300 GiB shape in a 100-byte file made np.load raise MemoryError)
            array = np.load(path, mmap_mode="r", allow_pickle=False)
            if not isinstance(array, np.ndarray):  # an .npz archive, whatever its name: a dict of arrays
                raise ValueError(f"a {type(array).__name__}, not one array; save one with numpy.save")
            array = np.array(array)
        except (OSError, ValueError, MemoryError) as exc:
            raise UsageError(f"--input {given}: not a .npy array ({exc})") from None
        if name is None:
            positional.append(array)
        else:
            named[name] = array
    if not input_paths:
        positional = list(signature.sample(signature.batch_min, seed))
    outputs = predictor.run(*positional, **named)  # InputError (exit 2) names what does not fit
    return RunResult(predictor, loaded - start, (time.perf_counter() - loaded) * 1e3, outputs=outputs)


def _head(result: RunResult) -> str:
    p = result.predictor
    return f"artifact {p.key[:12]} ({p.manifest['label']}): loaded in {result.load_s:.2f}s"


def describe_detections(result: RunResult, image_path: str, score_threshold: float) -> list[str]:
    d, image = result.detections, result.image
    lines = [f"{_head(result)}, ran in {result.run_ms:.1f} ms; {len(d)} detections above {score_threshold} in "
             f"{image_path} ({image.shape[1]}x{image.shape[0]})"]
    for i in range(len(d)):
        box = ", ".join(f"{v:.1f}" for v in d.boxes[i])
        mask = "" if d.masks is None else f"  mask {int((d.masks[i] > 0.5).sum())} px"
        points = "" if d.keypoints is None else "  keypoints " + " ".join(
            f"({x:.0f},{y:.0f})" for x, y, _ in d.keypoints[i])
        lines.append(f"  {d.label_name(i):20} {d.scores[i]:.3f}  [{box}]{mask}{points}")
    return lines


def describe_outputs(result: RunResult, top: int = 5) -> list[str]:
    import numpy as np

    lines = [f"{_head(result)}, ran in {result.run_ms:.1f} ms"]
    for i, out in enumerate(result.outputs):
        lines.append(f"output {i}: shape {tuple(out.shape)} {out.dtype} min {out.min():.4g} max {out.max():.4g} "
                     f"mean {out.mean():.4g}" if out.size else f"output {i}: shape {tuple(out.shape)} (empty)")
        if result.predictor.task == "classification" and out.ndim == 2:
            order = np.argsort(-out[0])[:top]
            lines.append("  top: " + ", ".join(f"{int(k)}:{out[0][k]:.4g}" for k in order))
    return lines
