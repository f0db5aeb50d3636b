"""Runs in the runtime-only venv (`pip install .[runtime]`): loads a prebuilt detector
by key prefix, by alias and from an exported bundle, with torch absent."""

import importlib.util
import json
import sys
import time
from pathlib import Path

import numpy as np

start = time.perf_counter()
from buildsys.distribution.bundle import export_bundle  # noqa: E402
from buildsys.artifacts.registry import Registry  # noqa: E402
from buildsys.runtime import load_artifact  # noqa: E402
from buildsys.artifacts.store import Store  # noqa: E402

root = Path(sys.argv[1])
assert importlib.util.find_spec("torch") is None, "torch is installed in the runtime venv"
store = Store(root / "artifacts")
registry = Registry(f"sqlite:///{root / 'artifacts' / 'registry.db'}")
(record,) = registry.list()
registry.set_alias("smoke", record.key[:8])
x = np.random.default_rng(0).random((1, 3, 64, 64), dtype=np.float32)
results = {}
for label, ref in (("prefix", record.key[:8]), ("alias", "smoke"),
                   ("bundle", str(export_bundle(record, store, root / "bundles")))):
    predictor = load_artifact(ref, registry=registry, store=store)
    boxes, scores, labels = predictor.run(x)[:3]
    results[label] = (boxes.shape, float(scores.max()))
assert len({str(v) for v in results.values()}) == 1, results
assert "torch" not in sys.modules and "tvm" not in sys.modules
rss_kb = int(next(line for line in open("/proc/self/status") if line.startswith("VmRSS")).split()[1])
print(json.dumps({"ok": True, "loads": list(results), "detections": results["alias"][0][0],
                  "seconds": round(time.perf_counter() - start, 3), "rss_mb": round(rss_kb / 1024, 1)}))
