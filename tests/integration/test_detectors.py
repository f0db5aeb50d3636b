"""Tiny detectors through the ONNX route: the whole detector, NMS included, in one VM executable."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from buildsys import manifest as manifest_format
from buildsys.store import Store

pytestmark = pytest.mark.model


def test_detectors_build_with_order_free_parity(built_detectors):
    records = {r.model: r for r in built_detectors.registry.list()}
    assert set(records) == {"tiny_fasterrcnn", "tiny_retinanet", "tiny_maskrcnn"}
    store = Store(built_detectors.store)
    for name, record in records.items():
        manifest = manifest_format.loads(store.read_verified(record.manifest_digest))
        assert manifest["route"]["name"] == "onnx"
        names = [o["name"] for o in manifest["io"]["outputs"]]
        expected = ["boxes", "scores", "labels"] + (["mask_probs"] if name == "tiny_maskrcnn" else [])
        assert names == expected
        assert manifest["io"]["outputs"][0]["shape"] == [10, 4]  # detections_per_img of the tiny models
        assert record.parity_max_rel is not None and record.parity_max_rel < 1e-4
        assert record.metrics["parity_detections"] == 10  # all compared, none vacuous


def test_detector_runs_in_the_thin_loader_without_torch(built_detectors):
    record = next(r for r in built_detectors.registry.list() if r.model == "tiny_maskrcnn")
    script = textwrap.dedent(f"""
        import json, sys
        import numpy as np
        from buildsys.runtime import load_artifact
        p = load_artifact({record.key[:12]!r})
        x = np.random.default_rng(0).random((1, 3, 64, 64), dtype=np.float32)
        boxes, scores, labels, masks = p(x)
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
    boxes, scores, labels, masks = predictor(np.random.default_rng(0).random((1, 3, 64, 64), dtype=np.float32))
    np.testing.assert_array_equal(np.load(out), np.concatenate([boxes.ravel(), scores, labels.astype(np.float32),
                                                                masks.ravel()]))
