"""One ``buildsys bench`` runner in a process of its own: ``python -m buildsys.ops.bench_worker FD``.

The parent (``buildsys.ops.bench``) speaks over the socket FD with pickled tuples and waits for
each answer; this process does one thing at a time and nothing in between:

- ``("setup", setup)``: build the runner named by ``setup["factory"]`` ("module:function", which
  takes ``setup`` and returns a ``Runner``); answers what the process looks like (its pid, the
  thread counts the runtimes were given, which of torch, TVM, onnxruntime it imported);
- ``("bind", path)``: the inputs saved at ``path`` (.npz, arr_0, arr_1 ...), then two warm-up
  calls; answers their seconds (the first may have compiled);
- ``("time", number)``: ``number`` calls, each timed here (perf_counter); answers their ms;
- ``("outputs", path)``: one more call, its outputs flattened to numpy and saved at ``path``;
- ``("exit",)``.

Every answer is ``("ok", value)`` or ``("error", text)``. Anything this process prints goes
to the log file the parent gave it as stdout and stderr, whose tail the parent reports if the
process dies. Thread counts come from the environment the parent set (``TVM_NUM_THREADS``,
``OMP_NUM_THREADS``) and ``setup["threads"]``, before any runtime starts its pool.
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from dataclasses import dataclass
from typing import Callable

import numpy as np

HEAVY_MODULES = ("torch", "tvm", "tvm_ffi", "onnxruntime")


@dataclass
class Runner:
    """``bind(arrays)`` returns the call to time on those inputs; ``flatten(result)`` its outputs
    as numpy arrays, in the order the model returns them; ``threads`` what the runtime was given."""

    bind: Callable[[list[np.ndarray]], Callable[[], object]]
    flatten: Callable[[object], list[np.ndarray]]
    threads: dict


def artifact(setup: dict) -> Runner:
    """The artifact through the thin runtime, as a deployment loads it (no torch in this process);
    the store and registry are the parent's (BUILDSYS_STORE, BUILDSYS_REGISTRY)."""
    from buildsys.runtime import load_artifact

    predictor = load_artifact(setup["key"])
    return Runner(bind=lambda arrays: lambda: predictor.run(*arrays), flatten=lambda out: [np.asarray(a) for a in out],
                  threads={"TVM_NUM_THREADS": os.environ.get("TVM_NUM_THREADS")})


def _torch_module(setup: dict):
    import torch

    from buildsys.models import instantiate

    torch.set_num_threads(setup["threads"])
    spec = setup["spec"]
    module = instantiate(spec.model)
    if spec.model.task == "detection":
        from buildsys.pipeline.importers.onnx_route import _detector_wrapper

        return _detector_wrapper(module)  # what the artifact computes, outputs in the same order
    return module


def _torch_runner(fn) -> Runner:
    import torch

    from buildsys.pipeline.parity import flatten_outputs

    def bind(arrays):
        tensors = [torch.from_numpy(a) for a in arrays]

        def call():
            with torch.no_grad():
                return fn(*tensors)
        return call

    return Runner(bind=bind, flatten=flatten_outputs,
                  threads={"torch": torch.get_num_threads(), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")})


def torch_eager(setup: dict) -> Runner:
    return _torch_runner(_torch_module(setup))


def torch_compile(setup: dict) -> Runner:
    """One compiled function; it compiles at the first call (the first ``bind``'s warm-up) and
    recompiles for another batch size at that size's warm-up."""
    import torch

    return _torch_runner(torch.compile(_torch_module(setup)))


def onnxruntime(setup: dict) -> Runner:
    """The model the parent exported (``setup["onnx"]``), its inputs named as the artifact's."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = setup["threads"]
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    session = ort.InferenceSession(setup["onnx"], options, providers=["CPUExecutionProvider"])

    def bind(arrays):
        feed = {i.name: a for i, a in zip(session.get_inputs(), arrays)}
        return lambda: session.run(None, feed)

    return Runner(bind=bind, flatten=lambda out: [np.asarray(a) for a in out],
                  threads={"intra_op": options.intra_op_num_threads, "inter_op": options.inter_op_num_threads})


FACTORIES = {name: f"{__name__}:{name}" for name in ("artifact", "torch_eager", "torch_compile", "onnxruntime")}


def _factory(path: str) -> Callable[[dict], Runner]:
    import importlib

    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def _die_with_parent() -> None:
    """SIGKILL when the parent goes (Linux), even while stopped: no runner outlives a killed bench."""
    try:
        import ctypes
        import signal

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


def serve(connection) -> None:
    runner = call = None
    while True:
        try:
            message = connection.recv()
        except EOFError:
            return
        op = message[0]
        try:
            if op == "exit":
                connection.send(("ok", None))
                return
            if op == "setup":
                runner = _factory(message[1]["factory"])(message[1])
                answer = {"pid": os.getpid(), "threads": runner.threads,
                          "modules": sorted(m for m in HEAVY_MODULES if m in sys.modules)}
            elif op == "bind":
                with np.load(message[1], allow_pickle=False) as saved:
                    arrays = [saved[f"arr_{i}"] for i in range(len(saved.files))]
                call = runner.bind(arrays)
                answer = []
                for _ in range(2):  # the first may compile (torch.compile), the second is what a run costs
                    start = time.perf_counter()
                    call()
                    answer.append(time.perf_counter() - start)
            elif op == "time":
                answer = []
                for _ in range(message[1]):
                    start = time.perf_counter()
                    call()
                    answer.append((time.perf_counter() - start) * 1e3)
            elif op == "outputs":
                outputs = runner.flatten(call())
                np.savez(message[1], *[np.asarray(a) for a in outputs])
                answer = len(outputs)
            else:
                raise ValueError(f"unknown request {op!r}")
        except Exception as exc:  # noqa: BLE001 - the parent reports it as the runner's result
            traceback.print_exc()
            connection.send(("error", f"{type(exc).__name__}: {str(exc)[:300]}"))
            continue
        connection.send(("ok", answer))


def main(argv: list[str]) -> None:
    from multiprocessing.connection import Connection

    _die_with_parent()
    serve(Connection(int(argv[0])))


if __name__ == "__main__":
    main(sys.argv[1:])
