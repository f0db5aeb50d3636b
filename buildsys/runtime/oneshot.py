"""Run a library on saved inputs and save its outputs: the builder's hands on another machine.

A build for another architecture cannot run its library on the build host. The builder puts the
library, its weights and the parity inputs in a directory, and this module (runtime only: numpy and
TVM's runtime, no torch, no compiler) runs there, under qemu-user in a sysroot of the target's
architecture (``pipeline/emulation.py``)::

    python3 -S -m buildsys.runtime.oneshot DIR

``DIR`` holds ``lib.so``, ``params.npz`` and ``inputs-<batch>.npz`` (arrays in name order); it
gets ``outputs-<batch>.npz`` and ``result.json`` (the machine, milliseconds per run, and which TVM
libraries the process mapped).
The same layout (``lay_out``, ``collected``) carries a run to a board over TVM's RPC
(``pipeline/remote.py``), where TVM's own RPC server runs the library instead of this module.
"""

from __future__ import annotations

import json
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

from buildsys.artifacts.manifest import LIBRARY_NAME, PARAMS_NAME
from buildsys.runtime.ffi import outputs_to_numpy, to_device
from buildsys.runtime.loader import load_executable
from buildsys.runtime.params import read_params

RESULT = "result.json"


def save_arrays(path: Path, arrays) -> None:
    np.savez(path, **{f"a{i:05d}": np.asarray(a) for i, a in enumerate(arrays)})


def load_arrays(path: Path) -> list[np.ndarray]:
    with np.load(path, allow_pickle=False) as npz:
        return [npz[name] for name in sorted(npz.files)]


def lay_out(directory: Path, library: Path, params, inputs: Mapping[int, list]) -> None:
    """Write what ``run_directory`` reads, wherever it runs: the library, its weights in the
    artifact's format, and each batch's inputs."""
    from buildsys.artifacts.manifest import write_params

    shutil.copyfile(library, directory / LIBRARY_NAME)
    write_params(directory / PARAMS_NAME, params)
    for batch, arrays in inputs.items():
        save_arrays(directory / f"inputs-{batch}.npz", arrays)


def collected(directory: Path, ms: Mapping[str, float], batches: Iterable[int]) -> dict[int, tuple[list, float]]:
    """What a run left in ``directory``: batch -> (its outputs, milliseconds)."""
    return {batch: (load_arrays(directory / f"outputs-{batch}.npz"), float(ms[str(batch)])) for batch in batches}


def mapped_tvm_libraries() -> list[str]:
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return []
    return sorted({line.rsplit("/", 1)[-1] for line in maps.splitlines() if "/libtvm" in line})


def run_directory(directory: Path) -> dict:
    vm = load_executable(directory / LIBRARY_NAME)
    weights = [to_device(p) for p in read_params((directory / PARAMS_NAME).read_bytes(), "oneshot")]
    runs = {}
    for path in sorted(directory.glob("inputs-*.npz")):
        batch = path.stem.split("-", 1)[1]
        args = [to_device(a) for a in load_arrays(path)]
        start = time.perf_counter()
        outputs = outputs_to_numpy(vm["main"](*args, *weights))
        runs[batch] = (time.perf_counter() - start) * 1e3
        save_arrays(directory / f"outputs-{batch}.npz", outputs)
    result = {"machine": platform.machine(), "ms": runs, "tvm_libraries": mapped_tvm_libraries(),
              "torch_imported": "torch" in sys.modules}
    (directory / RESULT).write_text(json.dumps(result))
    return result


if __name__ == "__main__":
    print(json.dumps(run_directory(Path(sys.argv[1]))))
