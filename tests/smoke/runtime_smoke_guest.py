"""Runs on the target's side (under qemu-user in a sysroot with numpy and TVM's runtime only, or on
a board): loads one artifact by key prefix, by alias and from an exported bundle, runs each, and
checks that neither torch nor TVM's compiler library came into the process.

    python3 -S runtime_smoke_guest.py KEY ALIAS BUNDLE_DIR     (BUILDSYS_STORE names the store)
"""

import json
import platform
import sys
import time

import numpy as np

start = time.perf_counter()
from buildsys.runtime import load_artifact  # noqa: E402
from buildsys.runtime.oneshot import mapped_tvm_libraries  # noqa: E402

key, alias, bundle = sys.argv[1:4]
results = {}
for label, ref in (("prefix", key[:8]), ("alias", alias), ("bundle", bundle)):
    predictor = load_artifact(ref)
    x = np.random.default_rng(0).random(predictor.input_shape, dtype=np.float32)
    results[label] = predictor.run(x)
first = results["prefix"]
for label, outputs in results.items():
    assert len(outputs) == len(first) and all(np.array_equal(a, b) for a, b in zip(outputs, first)), label
libraries = mapped_tvm_libraries()
assert "torch" not in sys.modules and "tvm" not in sys.modules, "the runtime imported torch or tvm"
assert "libtvm.so" not in libraries and "libtvm_runtime.so" in libraries, libraries
print(json.dumps({"ok": True, "machine": platform.machine(), "loads": list(results), "outputs": len(first),
                  "tvm_libraries": libraries, "seconds": round(time.perf_counter() - start, 1)}))
