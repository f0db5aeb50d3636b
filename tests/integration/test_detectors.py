"""Tiny detectors through the ONNX route: the whole detector, NMS included, in one VM executable."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from buildsys.artifacts import manifest as manifest_format
from buildsys.artifacts.store import Store

pytestmark = pytest.mark.model


def test_detectors_build_with_order_free_parity(built_detectors):
    records = {r.model: r for r in built_detectors.registry.list()}
    assert set(records) == {"tiny_fasterrcnn", "tiny_retinanet", "tiny_maskrcnn", "tiny_keypointrcnn"}
    store = Store(built_detectors.store)
    for name, record in records.items():
        manifest = manifest_format.loads(store.read_verified(record.manifest_digest))
        assert manifest["route"]["name"] == "onnx"
        names = [o["name"] for o in manifest["io"]["outputs"]]
        expected = ["boxes", "scores", "labels"] + {"tiny_maskrcnn": ["mask_probs"],
                                                     "tiny_keypointrcnn": ["keypoint_logits"]}.get(name, [])
        assert names[:len(expected)] == expected
        assert any(n.startswith("pre_nms/backbone") for n in names) and any(n.startswith("pre_nms/head") for n in names)
        assert record.metrics["parity_pre_nms_max_rel"] < 1e-4 and record.metrics["parity_matched_fraction"] == 1.0
        assert manifest["io"]["outputs"][0]["shape"] == [10, 4]  # detections_per_img of the tiny models
        assert record.parity_max_rel is not None and record.parity_max_rel < 1e-4
        assert record.metrics["parity_detections"] == 10  # all compared, none vacuous
        if name in ("tiny_maskrcnn", "tiny_keypointrcnn"):  # heads gated on the artifact's own boxes
            assert record.metrics["parity_second_stage_max_rel"] < 1e-4


def test_detector_runs_in_the_thin_loader_without_torch(built_detectors):
    record = next(r for r in built_detectors.registry.list() if r.model == "tiny_maskrcnn")
    script = textwrap.dedent(f"""
        import json, sys
        import numpy as np
        from buildsys.runtime import load_artifact
        p = load_artifact({record.key[:12]!r})
        x = np.random.default_rng(0).random((1, 3, 64, 64), dtype=np.float32)
        boxes, scores, labels, masks = p.run(x)[:4]
        np.save(sys.argv[1], np.concatenate([boxes.ravel(), scores, labels.astype(np.float32), masks.ravel()]))
        print(json.dumps({{"torch": "torch" in sys.modules, "relax": "tvm.relax" in sys.modules, "tvm": "tvm" in sys.modules,
                          "n": len(boxes), "masks": list(masks.shape)}}))
    """)
    out = built_detectors.root / "thin.npy"
    env = {**os.environ, "BUILDSYS_STORE": str(built_detectors.store)}
    result = subprocess.run([sys.executable, "-c", script, str(out)], capture_output=True, text=True, env=env,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen == {"torch": False, "relax": False, "tvm": False, "n": 10, "masks": [10, 1, 28, 28]}

    # the same artifact in a process with the full compiler gives the same detections
    from buildsys.runtime import load_artifact
    predictor = load_artifact(record.key, registry=built_detectors.registry, store=Store(built_detectors.store))
    boxes, scores, labels, masks = predictor.run(np.random.default_rng(0).random((1, 3, 64, 64), dtype=np.float32))[:4]
    np.testing.assert_array_equal(np.load(out), np.concatenate([boxes.ravel(), scores, labels.astype(np.float32),
                                                                masks.ravel()]))


def _astronaut():
    from importlib import resources

    from buildsys.ui.annotate import read_image
    return read_image(resources.files("skimage") / "data" / "astronaut.png")


def test_post_processing_matches_torchvision_end_to_end(built_detectors):
    """Boxes scaled back and masks pasted in numpy agree with torchvision's own post-processing."""
    import torch

    from buildsys.models import instantiate
    from buildsys.runtime import load_artifact
    from buildsys.runtime.detections import image_to_input, to_detections
    from buildsys.config.spec import load_specs
    from buildsys.pipeline.parity import match_detections

    spec = next(s for s in load_specs(built_detectors.config) if s.model.name == "tiny_maskrcnn")
    record = next(r for r in built_detectors.registry.list() if r.model == "tiny_maskrcnn")
    predictor = load_artifact(record.key, registry=built_detectors.registry, store=Store(built_detectors.store))
    x = image_to_input(_astronaut(), predictor.input_shape)
    ours = to_detections(predictor.run(x), predictor.manifest, (64, 64))
    with torch.no_grad():
        theirs = instantiate(spec.model)([torch.from_numpy(x[0])])[0]
    reference = [theirs["boxes"].numpy(), theirs["scores"].numpy(), theirs["labels"].numpy()]
    order = match_detections(reference, [ours.boxes, ours.scores, ours.labels])
    assert order is not None
    np.testing.assert_allclose(ours.boxes[order], reference[0], atol=1e-3)
    np.testing.assert_allclose(ours.masks[order], theirs["masks"].numpy()[:, 0], atol=1e-3)


def test_keypoints_decoded_in_numpy_match_torchvision_end_to_end(built_detectors):
    """Keypoint heatmaps from the artifact, decoded in numpy (bicubic resize per box, argmax),
    give torchvision's keypoints and keypoint scores."""
    import torch

    from buildsys.models import instantiate
    from buildsys.runtime import load_artifact
    from buildsys.runtime.detections import image_to_input, to_detections
    from buildsys.config.spec import load_specs
    from buildsys.pipeline.parity import match_detections

    spec = next(s for s in load_specs(built_detectors.config) if s.model.name == "tiny_keypointrcnn")
    record = next(r for r in built_detectors.registry.list() if r.model == "tiny_keypointrcnn")
    predictor = load_artifact(record.key, registry=built_detectors.registry, store=Store(built_detectors.store))
    x = image_to_input(_astronaut(), predictor.input_shape)
    ours = to_detections(predictor.run(x), predictor.manifest, (128, 96))  # a photo of another size
    with torch.no_grad():
        theirs = instantiate(spec.model)([torch.from_numpy(x[0])])[0]
    scale = np.array([96 / 64, 128 / 64, 1], np.float32)
    reference = [theirs["boxes"].numpy() * scale[[0, 1, 0, 1]], theirs["scores"].numpy(), theirs["labels"].numpy()]
    order = match_detections(reference, [ours.boxes, ours.scores, ours.labels])
    assert order is not None and len(order) == 10
    np.testing.assert_allclose(ours.keypoints[order], theirs["keypoints"].numpy() * scale, atol=2e-3)
    np.testing.assert_allclose(ours.keypoint_scores[order], theirs["keypoints_scores"].numpy(), rtol=1e-4, atol=1e-4)
    kept = ours.filter(0.0, 3)
    assert kept.keypoints.shape == (3, 5, 3) and kept.keypoint_scores.shape == (3, 5)


def test_heatmap_decoding_matches_torchvision_on_odd_boxes():
    import torch
    from torchvision.models.detection.roi_heads import heatmaps_to_keypoints as theirs

    from buildsys.runtime.detections import heatmaps_to_keypoints

    torch.manual_seed(0)
    maps = torch.randn(5, 17, 56, 56) * 3
    corner = torch.rand(5, 2) * 200
    sizes = torch.tensor([[0.5, 0.5], [56.0, 56.0], [20.0, 300.0], [7.3, 130.9], [300.0, 2.2]])
    rois = torch.cat([corner, corner + sizes], 1)  # below a pixel, exact, tall, fractional, flat
    expected_xy, expected_scores = theirs(maps, rois)
    xy, scores = heatmaps_to_keypoints(maps.numpy(), rois.numpy())
    np.testing.assert_allclose(xy, expected_xy.numpy(), atol=1e-4)
    np.testing.assert_allclose(scores, expected_scores.numpy(), rtol=1e-5, atol=1e-5)


def test_run_on_a_real_photo_prints_and_draws(built_detectors, tmp_path, capsys):
    from importlib import resources

    from PIL import Image

    record = next(r for r in built_detectors.registry.list() if r.model == "tiny_maskrcnn")
    photo = resources.files("skimage") / "data" / "astronaut.png"
    out = tmp_path / "out.png"
    assert built_detectors.cli("run", record.key[:10], "--image", str(photo), "--score-threshold", "0",
                               "--max-detections", "5", "--out", str(out)) == 0
    text = capsys.readouterr().out
    assert "5 detections above 0.0" in text and "(512x512)" in text and "mask" in text
    assert text.count("class ") == 5  # the tiny models have no category names
    drawn, original = np.asarray(Image.open(out)), _astronaut()
    assert drawn.shape == original.shape and (drawn != original).any()
    assert built_detectors.cli("run", record.key[:10], "--image", str(photo)) == 0  # default threshold 0.9
    assert "0 detections above 0.9" in capsys.readouterr().out


def test_one_full_size_detector_builds_with_pre_nms_parity(fresh):
    """The CI-sized full-size check: torchvision's own Faster R-CNN (MobileNetV3-FPN, 320 px)."""
    ws = fresh("""
models:
  frcnn: {source: "torchvision.models.detection:fasterrcnn_mobilenet_v3_large_320_fpn", task: detection,
          tolerance: 1.0e-3}
matrix:
  model: [frcnn]
  input_size: [320]
""")
    assert ws.cli("build") == 0
    (record,) = ws.registry.list()
    assert record.metrics["parity_pre_nms_max_rel"] < 1e-3
    manifest = manifest_format.loads(Store(ws.store).read_verified(record.manifest_digest))
    assert manifest["detection"]["categories"][1] == "person"  # COCO names travel with the artifact
    assert sum(o["name"].startswith("pre_nms/backbone") for o in manifest["io"]["outputs"]) >= 2
