"""How long planning takes: `buildsys plan` and a no-op `buildsys build` on a generated matrix.

    python benchmarks/plan_bench.py [--models 2 --sizes 50 --targets 5 --opt-levels 2] [--rounds 3]

Writes a matrix of models x sizes x targets x opt levels (1000 entries by default) into a
temporary directory, registers a small stand-in artifact for every entry (three store
objects and a registry row each, so that every entry plans as `cached` and a build has
nothing to do), then times each command as a fresh process (interpreter start included),
the way a CI job or `make build-all` pays for it. Prints the medians and the modules that
the planning process imported (torch and TVM must not be among them).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGETS = ["llvm", "llvm -mcpu=znver3", "llvm -mcpu=x86-64-v3", "llvm -mcpu=native",
           "llvm -mcpu=skylake-avx512 -num-cores=2", "llvm -mcpu=haswell", "llvm -mcpu=icelake-server"]
MODELS = ["resnet18", "mobilenet_v3_large", "resnet50", "efficientnet_b0", "vgg11"]


def write_matrix(root: Path, models: int, sizes: int, targets: int, opt_levels: int) -> Path:
    config = root / "builds.yaml"
    model_lines = "\n".join(f"  {m}: {{source: torchvision.models:{m}, task: classification}}"
                            for m in MODELS[:models])
    size_list = ", ".join(str(32 + 8 * i) for i in range(sizes))
    target_list = ", ".join(f'"{t}"' for t in TARGETS[:targets])
    config.write_text(f"version: 1\nmodels:\n{model_lines}\nmatrix:\n  model: [{', '.join(MODELS[:models])}]\n"
                      f"  input_size: [{size_list}]\n  target: [{target_list}]\n"
                      f"  opt_level: [{', '.join(str(3 - i) for i in range(opt_levels))}]\n")
    return config


def register_stand_ins(config: Path, store_root: Path) -> int:
    """A registry row and three tiny store objects per planned entry (what a built matrix has)."""
    from buildsys.pipeline.plan import plan_builds
    from buildsys.artifacts.registry import FileRecord, NewArtifact, Registry
    from buildsys.config.spec import load_specs
    from buildsys.artifacts.store import Store

    store = Store(store_root)
    registry = Registry(f"sqlite:///{store_root / 'registry.db'}")
    entries = plan_builds(load_specs(config), registry, store)
    for entry in entries:
        files = []
        for name in ("lib.so", "params.npz", "manifest.json"):
            digest, size = store.put_bytes(f"{entry.key}/{name}".encode(), name=name)
            files.append(FileRecord(name, digest, size))
        spec = entry.spec
        registry.publish(NewArtifact(
            key=entry.key, model=spec.model.name, task=spec.model.task, input_size=spec.size_label,
            target=spec.target, opt_level=spec.opt_level, disabled_passes=spec.disabled_passes,
            spec=spec.to_dict(), key_material=dict(entry.material), toolchain=dict(entry.material["toolchain"]),
            manifest_digest=files[-1].digest, files=tuple(files), metrics={},
            parity_max_abs=0.0, parity_max_rel=0.0))
    return len(entries)


def timed(command: list[str], rounds: int) -> tuple[float, str]:
    times, out = [], ""
    for _ in range(rounds):
        start = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True)
        times.append(time.perf_counter() - start)
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr}")
        out = done.stdout
    return statistics.median(times), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=2)
    parser.add_argument("--sizes", type=int, default=50)
    parser.add_argument("--targets", type=int, default=5)
    parser.add_argument("--opt-levels", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="buildsys-plan-bench-") as tmp:
        root = Path(tmp)
        config = write_matrix(root, args.models, args.sizes, args.targets, args.opt_levels)
        store_root = root / "artifacts"
        count = register_stand_ins(config, store_root)
        cli = [sys.executable, "-m", "buildsys.cli", "-c", str(config), "--store", str(store_root)]
        plan_s, plan_out = timed([*cli, "plan"], args.rounds)
        build_s, build_out = timed([*cli, "build", "--quiet"], args.rounds)
        probe = ("import sys, runpy; sys.argv = ['buildsys'] + sys.argv[1:]\n"
                 "try:\n    runpy.run_module('buildsys.cli', run_name='__main__')\nexcept SystemExit:\n    pass\n"
                 "print('HEAVY', sorted(m for m in ('torch', 'tvm', 'torchvision', 'onnx') if m in sys.modules),"
                 " file=sys.stderr)")
        heavy = subprocess.run([sys.executable, "-c", probe, "-c", str(config), "--store", str(store_root), "plan"],
                               capture_output=True, text=True).stderr.strip().splitlines()[-1]
    print(f"matrix: {count} entries ({args.models} models x {args.sizes} sizes x {args.targets} targets x "
          f"{args.opt_levels} opt levels), all cached; medians of {args.rounds} fresh processes")
    print(f"  buildsys plan            {plan_s:6.2f} s   ({plan_out.strip().splitlines()[-1]})")
    print(f"  buildsys build (no-op)   {build_s:6.2f} s   ({build_out.strip().splitlines()[-1]})")
    print(f"  heavy modules imported by plan: {heavy.removeprefix('HEAVY ')}")
    print(f"  python {sys.version.split()[0]}, {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
