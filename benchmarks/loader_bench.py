"""Thin loader vs PyTorch: process start to ready, first inference, RSS. Prints figures; asserts nothing.

Each round starts fresh processes, interleaved (thin, torch, thin, torch ...),
and reports medians: these machines are shared and noisy.

    python benchmarks/loader_bench.py REF [--runtime-python .venv-runtime/bin/python] [--rounds 5]

REF is a key, prefix or alias in the registry (BUILDSYS_STORE / BUILDSYS_REGISTRY).
The thin side loads an exported bundle of REF (no database) and, separately,
REF through the registry; the torch side imports torch + torchvision, builds
the model from the manifest's spec and runs it eagerly.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Each child prints one JSON line: seconds since the parent spawned it, and VmRSS.
_PROLOGUE = """
import json, sys, time
T0 = float(sys.argv[1])
def rss_mb():
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmRSS")).split()[1]) / 1024
"""

THIN = _PROLOGUE + """
import numpy as np
from buildsys.runtime import load_artifact
p = load_artifact(sys.argv[2])
ready, rss_ready = time.time() - T0, rss_mb()
x = np.random.default_rng(0).random(p.input_shape, dtype=np.float32)
p(x)
first = time.time() - T0 - ready
print(json.dumps({"ready_s": ready, "first_s": first, "rss_ready_mb": rss_ready, "rss_mb": rss_mb(),
                  "torch_loaded": "torch" in sys.modules}))
"""

TORCH = _PROLOGUE + """
import torch, torchvision
from buildsys.models import instantiate
from buildsys.config.spec import ModelSpec, WeightsSpec
spec = json.loads(sys.argv[2])
w = spec["weights"]
# Seeded weights whatever the artifact used: the manifest does not carry a weights path, and the
# values of the weights change neither start-up time nor memory.
model = instantiate(ModelSpec(name=spec["name"], source=spec["source"], task=spec["task"],
                              weights=WeightsSpec(source="none", seed=w["seed"]),
                              kwargs=spec["kwargs"]))
ready, rss_ready = time.time() - T0, rss_mb()
shape = json.loads(sys.argv[3])
x = torch.rand(*shape)
with torch.no_grad():
    model([x[0]]) if spec["task"] == "detection" else model(x)
first = time.time() - T0 - ready
print(json.dumps({"ready_s": ready, "first_s": first, "rss_ready_mb": rss_ready, "rss_mb": rss_mb(),
                  "torch_loaded": True}))
"""


def child(python: str, code: str, *args: str, threads: int) -> dict:
    env = {**os.environ, "TVM_NUM_THREADS": str(threads), "OMP_NUM_THREADS": str(threads)}
    t0 = time.time()
    out = subprocess.run([python, "-c", code, repr(t0), *args], capture_output=True, text=True, env=env,
                         timeout=600)
    if out.returncode != 0:
        raise SystemExit(f"child failed ({python}):\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("ref")
    parser.add_argument("--runtime-python", default=sys.executable,
                        help="interpreter of a runtime-only venv (default: this one)")
    parser.add_argument("--torch-python", default=sys.executable)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    from buildsys.distribution.bundle import export_bundle
    from buildsys.artifacts.locations import resolve_locations
    from buildsys.artifacts.registry import Registry
    from buildsys.artifacts.store import Store

    locations = resolve_locations()
    registry, store = Registry(locations.registry_url), Store(locations.store_root)
    record = registry.resolve(args.ref)
    bundle = export_bundle(record, store, Path(tempfile.mkdtemp(prefix="bench-bundle-")))
    spec = json.dumps(record.spec["model"])
    shape = json.dumps(record.spec["input_shape"])

    runs: dict[str, list[dict]] = {"thin (bundle)": [], "thin (registry)": [], "torch eager": []}
    for _ in range(args.rounds):
        runs["thin (bundle)"].append(child(args.runtime_python, THIN, str(bundle), threads=args.threads))
        runs["thin (registry)"].append(child(args.runtime_python, THIN, record.key, threads=args.threads))
        runs["torch eager"].append(child(args.torch_python, TORCH, spec, shape, threads=args.threads))

    weights_mb = record.file("params.npz").size / 2**20
    print(f"artifact {record.key[:12]} {record.model} {record.input_size}; weights {weights_mb:.1f} MB; "
          f"{args.rounds} rounds, {args.threads} thread(s), medians")
    print(f"{'loader':18} {'ready s':>8} {'first inf s':>12} {'RSS ready MB':>13} {'RSS MB':>8} {'torch?':>7}")
    medians = {}
    for label, results in runs.items():
        med = {k: statistics.median(r[k] for r in results) for k in ("ready_s", "first_s", "rss_ready_mb", "rss_mb")}
        medians[label] = med
        print(f"{label:18} {med['ready_s']:8.3f} {med['first_s']:12.3f} {med['rss_ready_mb']:13.1f} "
              f"{med['rss_mb']:8.1f} {str(any(r['torch_loaded'] for r in results)):>7}")
    base = medians["torch eager"]
    for label in ("thin (bundle)", "thin (registry)"):
        m = medians[label]
        print(f"{label} / torch: ready {m['ready_s'] / base['ready_s']:.2f}x, RSS {m['rss_mb'] / base['rss_mb']:.2f}x")
    print(json.dumps({"ref": record.key, "weights_mb": weights_mb, "medians": medians,
                      "runtime_python": args.runtime_python}))


if __name__ == "__main__":
    main()
