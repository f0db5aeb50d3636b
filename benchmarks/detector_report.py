"""The detector table: for each torchvision detector built in the registry, the build's own
figures (import s, build s, run s, PyTorch eager s, parity) and a run on a real photo in the
runtime-only venv (no torch installed there). Prints a Markdown table; asserts nothing.

    python benchmarks/detector_report.py [--runtime-python .venv-runtime/bin/python] [--out-dir DIR]

Uses the registry of BUILDSYS_STORE / BUILDSYS_REGISTRY (default artifacts/); build first
(`make build-all`). The photo is scikit-image's astronaut (shipped with the package).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from importlib import resources
from pathlib import Path

DETECTORS = ("maskrcnn_resnet50_fpn", "fasterrcnn_resnet50_fpn", "fasterrcnn_mobilenet_v3_large_320_fpn",
             "retinanet_resnet50_fpn", "fcos_resnet50_fpn", "ssd300_vgg16", "ssdlite320_mobilenet_v3_large",
             "keypointrcnn_resnet50_fpn")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runtime-python", default=".venv-runtime/bin/python")
    parser.add_argument("--out-dir", default="artifacts/tmp/detector-report")
    parser.add_argument("--score-threshold", default="0.0", help="random weights score low; 0 shows the top ones")
    args = parser.parse_args()

    from buildsys.artifacts import manifest as manifest_format
    from buildsys.artifacts.locations import resolve_locations
    from buildsys.artifacts.registry import Registry
    from buildsys.artifacts.store import Store

    locations = resolve_locations(None, None)
    registry, store = Registry(locations.registry_url), Store(locations.store_root)
    photo = resources.files("skimage") / "data" / "astronaut.png"
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    latest = {}
    for record in registry.list():
        if record.model in DETECTORS and (record.model not in latest or record.created_at > latest[record.model].created_at):
            latest[record.model] = record
    rows = []
    for name in DETECTORS:
        record = latest.get(name)
        if record is None:
            rows.append(f"| {name} | not built | | | | | |")
            continue
        manifest = manifest_format.loads(store.read_verified(record.manifest_digest), key=record.key)
        t, lat, p = manifest["timings"], manifest["latency"], manifest["parity"]
        out = out_dir / f"{name}.png"
        probe = ("import sys; from buildsys.cli import main; code = main(sys.argv[1:]); "
                 "assert 'torch' not in sys.modules, 'torch was imported'; sys.exit(code)")
        start = time.perf_counter()
        done = subprocess.run([args.runtime_python, "-c", probe, "run", record.key, "--image", str(photo),
                               "--score-threshold", args.score_threshold, "--max-detections", "3",
                               "--out", str(out)], capture_output=True, text=True)
        photo_s = time.perf_counter() - start
        lines = done.stdout.strip().splitlines()
        photo_result = (f"{lines[0].split('; ')[-1] if lines else ''} ({photo_s:.1f} s, no torch)" if done.returncode == 0
                        else f"FAILED: {(done.stderr or done.stdout).strip().splitlines()[-1:]}")
        parity = f"max_rel {p['max_rel']:.1e}"
        if p.get("pre_nms_max_rel") is not None:
            parity += f", pre-NMS {p['pre_nms_max_rel']:.1e}"
        if p.get("second_stage_max_rel") is not None:
            parity += f", heads {p['second_stage_max_rel']:.1e}"
        if p.get("matched_fraction") is not None:
            parity += f", {p['matched_fraction']:.0%} of {p['detections']} matched" + (" (tied)" if p.get("tied_scores") else "")
        build_s = sum(t.get(k, 0.0) for k in ("export_s", "import_s", "compile_s", "serialize_s"))
        rows.append(f"| {name} {record.input_size} | {t['import_s']:.1f} | {build_s:.1f} | "
                    f"{lat['artifact_ms'] / 1e3:.2f} | {lat['torch_eager_ms'] / 1e3:.3f} | {parity} | {photo_result} |")
    print("| model | import s | build s (export+import+compile+serialize) | run s | PyTorch eager s | parity | "
          "photo (runtime venv) |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    print(f"\nannotated photos: {out_dir}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
