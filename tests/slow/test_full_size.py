"""The slow tier (``make test-all``): every full-size detector of builds.yaml, built as
``make build-all`` builds it, with its parity gates; and the tutorial's reference, Mask R-CNN at
300x300 on ``llvm``, with its final detections matched against PyTorch on a real photo through
the thin runtime. About 8 minutes on this 2-core machine (README "Tests")."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.fixtures.workspace import Workspace

ROOT = Path(__file__).resolve().parents[2]

# The full-size detectors of builds.yaml. A detector added there and not here fails
# test_the_slow_tier_covers_every_full_size_detector, so the tier cannot fall behind the matrix.
FULL_SIZE_DETECTORS = [
    "fasterrcnn_mobilenet_v3_large_320_fpn", "ssdlite320_mobilenet_v3_large", "retinanet_resnet50_fpn",
    "fasterrcnn_resnet50_fpn", "fcos_resnet50_fpn", "ssd300_vgg16", "keypointrcnn_resnet50_fpn",
    "maskrcnn_resnet50_fpn",
]
REFERENCE = "maskrcnn_resnet50_fpn"
# With seeded random weights (this machine has no pretrained ones) on the seeded parity input, these
# three keep no detection after their score threshold and NMS (measured: torch 2.14.1, torchvision
# 0.29.1): their final comparison is empty and the pre-NMS tensors are what parity compares. The
# others must match every final detection. A toolchain that changes this fails here, on purpose.
NO_FINAL_DETECTIONS = {"fasterrcnn_mobilenet_v3_large_320_fpn", "ssdlite320_mobilenet_v3_large", "fcos_resnet50_fpn"}


def test_the_slow_tier_covers_every_full_size_detector():
    from buildsys.config.spec import load_specs

    detectors = {s.model.name for s in load_specs(ROOT / "builds.yaml")
                 if s.model.task == "detection" and not s.model.name.startswith("tiny_")}
    assert detectors == set(FULL_SIZE_DETECTORS)


@pytest.fixture(scope="module")
def matrix(tmp_path_factory):
    """builds.yaml's full-size detectors on `llvm` (what make build-all builds), in a fresh store."""
    root = tmp_path_factory.mktemp("full-size")
    (root / "models").symlink_to(ROOT / "models")  # the model files builds.yaml names (make onnx-models)
    ws = Workspace(root, (ROOT / "builds.yaml").read_text())
    only = [arg for name in FULL_SIZE_DETECTORS for arg in ("--only", f"model={name}")]
    code = ws.cli("build", *only, "--only", "target=llvm", "--progress", "plain")
    return ws, code


@pytest.mark.slow
@pytest.mark.timeout(3600)
@pytest.mark.parametrize("name", FULL_SIZE_DETECTORS)
def test_full_size_detector_builds_with_parity(matrix, name):
    from buildsys.config.spec import load_specs

    ws, code = matrix
    records = [r for r in ws.registry.list() if r.model == name]
    assert len(records) == 1, (code, [r.model for r in ws.registry.list()])
    (record,) = records
    spec = next(s for s in load_specs(ws.config) if s.model.name == name and s.target_label == "llvm")
    tolerance = spec.model.tolerance
    assert record.status == "ok"
    assert record.parity_max_rel is not None and record.parity_max_rel <= tolerance
    assert record.metrics["parity_pre_nms_max_rel"] <= tolerance  # the gate every detector passes
    if name in NO_FINAL_DETECTIONS:
        assert record.metrics["parity_detections"] == 0
    else:
        assert record.metrics["parity_detections"] > 0 and record.metrics["parity_matched_fraction"] == 1.0


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_reference_mask_rcnn_detections_match_pytorch_on_a_photo(matrix):
    """The tutorial's run: the photo in, detections out through the thin runtime, every detection
    matched to PyTorch's (regardless of order) with its box and mask, not only the pre-NMS tensors."""
    import torch
    from importlib import resources

    from buildsys.artifacts.store import Store
    from buildsys.config.spec import load_specs
    from buildsys.models import instantiate
    from buildsys.pipeline.parity import match_detections
    from buildsys.runtime import load_artifact
    from buildsys.runtime.detections import image_to_input, to_detections
    from buildsys.ui.annotate import read_image

    ws, _ = matrix
    (record,) = [r for r in ws.registry.list() if r.model == REFERENCE]
    assert record.metrics["parity_matched_fraction"] == 1.0
    assert record.metrics["parity_second_stage_max_rel"] <= 1e-3  # masks on the artifact's own boxes
    spec = next(s for s in load_specs(ws.config) if s.model.name == REFERENCE and s.target_label == "llvm")
    predictor = load_artifact(record.key, registry=ws.registry, store=Store(ws.store))
    x = image_to_input(read_image(resources.files("skimage") / "data" / "astronaut.png"), predictor.input_shape)
    ours = to_detections(predictor.run(x), predictor.manifest, (300, 300))
    with torch.no_grad():
        theirs = instantiate(spec.model)([torch.from_numpy(x[0])])[0]
    reference = [theirs["boxes"].numpy(), theirs["scores"].numpy(), theirs["labels"].numpy()]
    assert len(reference[0]) > 0
    order = match_detections(reference, [ours.boxes, ours.scores, ours.labels])
    assert order is not None, (len(reference[0]), len(ours.boxes))
    # Nearly every detection agrees tightly. One or two of 100 whose box drifted a fraction of a pixel
    # (measured: one by 0.22 px, its score by 0.004) differ more: ROIAlign samples across a pixel edge,
    # and the second stage amplifies it; the build's gate checks that stage on the artifact's own
    # boxes (parity_second_stage_max_rel above). All of them stay within the model's tolerance.
    loose_px = spec.model.tolerance * np.abs(reference[0]).max()
    _nearly_all_close(ours.boxes[order], reference[0], tight=1e-2, loose=loose_px, what="boxes (px)")
    _nearly_all_close(ours.scores[order], reference[1], tight=1e-3, loose=1e-2, what="scores")
    _nearly_all_close(ours.masks[order], theirs["masks"].numpy()[:, 0], tight=1e-2, loose=1e-2, what="masks",
                      loose_on=np.mean)


def _nearly_all_close(actual, desired, *, tight: float, loose: float, what: str, loose_on=np.max) -> None:
    """Every detection within ``loose`` (of its largest difference, or of ``loose_on``), and all but
    1% of them (at least one allowed) within ``tight`` everywhere."""
    diff = np.abs(np.asarray(actual, np.float64) - np.asarray(desired, np.float64)).reshape(len(actual), -1)
    worst = loose_on(diff, axis=1)
    assert worst.max() <= loose, (what, float(worst.max()), loose)
    off = np.flatnonzero(diff.max(axis=1) > tight)
    assert len(off) <= max(1, len(diff) // 100), (what, off.tolist(), diff.max(axis=1)[off].tolist())
