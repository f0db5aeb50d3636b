"""One entry's build: export -> import -> compile -> serialize -> parity, into a staging directory.

``build_artifact`` does the heavy, torch- and TVM-bound work and runs in a build process of its
own (``runner`` starts it through ``isolation``); it publishes nothing. ``tune_entry`` exports an
entry and tunes it. The parent side (locks, the store, the registry) is ``runner``.
"""

from __future__ import annotations

import platform
import socket
import statistics
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Mapping

from buildsys.artifacts import manifest as manifest_format
from buildsys.artifacts.manifest import LIBRARY_NAME, MANIFEST_FORMAT, PARAMS_NAME
from buildsys.artifacts.store import Store
from buildsys.format.signature import Signature
from buildsys.compiler.schedules import RULE_NAME
from buildsys.config.spec import BuildSpec
from buildsys import platforms
from buildsys.compiler.cross import export_library, linker_for
from buildsys.config.targets import required_features
from buildsys.errors import BuildError, ParityError
from buildsys.platforms import elf_header
from buildsys.pipeline import sources
from buildsys.pipeline.keys import build_key, entry_key
from buildsys.pipeline.parity import compare_detector_outputs, compare_outputs, flatten_outputs, worst_parity
from buildsys.pipeline.samples import input_description, sample_inputs
from buildsys.pipeline.verification import board_for, run_checks
from buildsys.config.toolchain import toolchain_for, toolchain_versions
from buildsys.format.versions import runtime_versions

TIMING_RUNS = 3
TIMING_BUDGET_S = 2.0  # a verify run slower than this is the only timing taken (untuned detectors: minutes)


@dataclass
class BuildOutcome:
    """What a (possibly remote) build hands back to the publisher."""

    key: str  # the artifact's key: the planned one, unless the model's recorded sources differ
    staged: dict[str, str]  # file name -> staged path
    manifest: dict
    metrics: dict[str, tuple[float, str]]
    material: dict = field(default_factory=dict)
    dependencies: list = field(default_factory=list)  # sources.Dependency, for the entry's depfile


def _median_ms(fn: Callable[[], object], runs: int = TIMING_RUNS) -> float:
    fn()  # warm-up
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def _output_specs(exported, reference, batch: int | None = None) -> list[dict]:
    """Names, shapes and dtypes of the outputs; with a dynamic ``batch`` (the size ``reference``
    was computed at), a first dimension of that size is written "batch"."""
    names = exported.output_names or [f"output{i}" for i in range(len(reference))]
    return [{"name": name, "shape": ["batch" if batch is not None and i == 0 and d == batch else d
                                     for i, d in enumerate(o.shape)], "dtype": str(o.dtype)}
            for name, o in zip(names, reference)]


def _tuning_database(spec: BuildSpec, material: Mapping, store_root: str | None, key: str):
    """The entry's tuning database, checked against the records its key names."""
    if spec.tuning is None:
        return None
    from buildsys.compiler.tuning_db import TuningDatabase

    planned = material.get("tuning")
    if store_root is None or not planned:
        raise BuildError("a tuned entry needs its tuning planned first (tune, then build)", key=key, stage="tune")
    database = TuningDatabase(Path(store_root), spec.target, material["toolchain"]["tvm"])
    info = database.entry_info(entry_key(material))
    applied = database.applied(info["workloads"] if info else [])
    if applied["digest"] != planned["records"]:
        raise BuildError("the tuning database changed after planning (another tuner added records); "
                         "run the build again to plan with them", key=key, stage="tune")
    return database, applied


def model_origin(spec: BuildSpec, field_name: str = "source") -> str:
    """Where builds.yaml defines the entry's model: ``models.NAME.source (builds.yaml:4; matrix
    entry at builds.yaml:7)``, for errors the model's own code caused."""
    where = spec.model.source_origin or spec.origin
    return f"models.{spec.model.name}.{field_name} ({where}; matrix entry at {spec.origin})"


def build_artifact(spec: BuildSpec, key: str, material: Mapping, staging: str,
                   store_root: str | None = None, on_stage: Callable[[str], None] | None = None) -> BuildOutcome:
    """Export, compile, serialize and verify one entry into ``staging``. Runs torch and TVM.

    ``on_stage`` is called with each stage's name as the build enters it (runlog.STAGES)."""
    stage = on_stage or (lambda _name: None)
    linker_for(spec.target, key=key)  # a missing cross compiler fails the build before minutes of work
    board = board_for(spec)  # likewise a malformed BUILDSYS_RPC_TRACKER
    stage("export")  # importing torch and TVM is part of it
    import torch

    from buildsys.compiler.compile import compile_model
    from buildsys.pipeline.importers import import_model
    from buildsys.models import instantiate
    from buildsys.runtime.ffi import outputs_to_numpy, to_device
    from buildsys.runtime.loader import load_executable

    staging_dir = Path(staging)
    timings: dict[str, float] = {}
    start = time.perf_counter()

    def make_model(model):
        try:
            module = instantiate(model)
        except BuildError as exc:  # say where the model is defined
            raise BuildError(f"{model_origin(spec, 'weights' if exc.stage == 'weights' else 'source')}: {exc}",
                             key=key, stage=exc.stage) from None
        timings["model_s"] = time.perf_counter() - start
        return module

    # Everything the model loads while it is made, exported and run is recorded: its key covers it
    # (a model file is its own source: the file and its external data, nothing else).
    with sources.recording(spec.model.source, skip_dirs=[staging, *([store_root] if store_root else [])]) as recorder:
        try:
            exported = import_model(spec, on_stage=stage, instantiate=make_model)
        except BuildError as exc:
            if exc.key is not None or not spec.model.file_kind:
                raise
            raise BuildError(f"{model_origin(spec)}: {exc.detail}", key=key, stage=exc.stage) from None
        timings["export_s"], timings["import_s"] = exported.seconds_export, exported.seconds_import
        checked = {}  # batch size -> (inputs, the reference's outputs): parity at each (a range: min, opt, max)
        with torch.no_grad():
            for size in spec.batch.parity_sizes:
                inputs = sample_inputs(spec, size)
                checked[size] = (inputs, flatten_outputs(exported.reference(*inputs)))
    dependencies = (sources.model_file_dependencies(spec.model.file_path) if spec.model.file_kind
                    else recorder.dependencies())
    material = {**material, "sources": sources.sources_digest(dependencies)}
    if build_key(material) != key:  # the plan predicted other sources (first build here, or an edit since)
        key = build_key(material)
        print(f"[buildsys] the model's recorded sources give it the key {key}", flush=True)
    tuning = _tuning_database(spec, material, store_root, key)
    stage("build")
    compiled = compile_model(exported.mod, spec, tuning_db=tuning[0] if tuning else None)
    timings["compile_s"] = compiled.seconds

    start = time.perf_counter()
    library = staging_dir / LIBRARY_NAME
    cross = spec.target.is_cross()
    gpu = spec.target.is_cuda
    export_library(compiled.executable, str(library), spec.target, key=key)
    elf_machine, _ = elf_header(library)
    # nothing built for another architecture runs here, nor CUDA code (run_checks says why)
    vm = None if cross or gpu else load_executable(library, key)
    params = exported.params
    if compiled.transforms_params:  # weights prepacked into the layouts the kernels read, once, here
        transform = _host_vm(compiled.host_transform) if cross else vm
        params = outputs_to_numpy(transform["main_transform_params"]([to_device(p) for p in params]))
    manifest_format.write_params(staging_dir / PARAMS_NAME, params)
    timings["serialize_s"] = time.perf_counter() - start

    # Verify what will be shipped: the serialized library, reloaded the way the loader does (here, or
    # for another architecture on a board or under emulation); where it cannot run, it is published unverified.
    stage("verify")
    start = time.perf_counter()
    ran, verification = run_checks(spec, key, library, vm, params, checked, board)
    by_batch, first_run_ms = {}, {}
    for size, (actual, ms) in ran.items():
        inputs, reference = checked[size]
        first_run_ms[size] = ms
        if spec.model.task == "detection":
            second_stage = getattr(exported.reference, "second_stage_given_boxes", None)
            x = inputs[0]
            by_batch[size] = compare_detector_outputs(
                reference, actual, exported.detection["final_outputs"], spec.model.tolerance, key=key,
                second_stage=(lambda b, l: second_stage(x, b, l)) if second_stage else None)
        else:
            by_batch[size] = compare_outputs(reference, actual, spec.model.tolerance, key=key)
    parity = worst_parity(by_batch) if by_batch else None
    timings["verify_s"] = time.perf_counter() - start
    timed = spec.batch.opt  # latency at the representative batch size
    inputs, reference = checked[timed]
    outputs = _output_specs(exported, reference, timed if spec.batch.dynamic else None)
    if parity is not None and not parity.passed:
        at = f" at batch {min(by_batch, key=lambda b: by_batch[b].passed)}" if len(by_batch) > 1 else ""
        raise ParityError(f"{parity.explain([o['name'] for o in outputs])}{at}; the artifact is not published",
                          key=key, stage="verify")

    if cross or gpu:  # emulated time is not latency, one cold run over RPC hardly, and eager here is no peer of the target
        artifact_ms = eager_ms = None
        runs = 0
        first = round(first_run_ms[timed], 3) if timed in first_run_ms else None
        if cross:
            verification["remote_ms" if verification["how"] == "rpc" else "emulated_ms"] = first
    else:
        args = [to_device(t.numpy()) for t in inputs] + [to_device(p) for p in params]
        runs = TIMING_RUNS if first_run_ms[timed] < TIMING_BUDGET_S * 1e3 else 0
        with torch.no_grad():
            eager_ms = _median_ms(lambda: exported.reference(*inputs), runs or 1)
        artifact_ms = _median_ms(lambda: vm["main"](*args)) if runs else first_run_ms[timed]

    made = _Made(exported, compiled, tuning, params, outputs, dependencies, elf_machine)
    latency = _latency(spec, artifact_ms, eager_ms, torch.get_num_threads(), runs or 1, verification)
    manifest = _manifest(spec, key, material, made, parity, verification, timings, latency)
    if len(by_batch) > 1:
        manifest["parity"]["batches"] = {str(size): {"max_abs": p.max_abs, "max_rel": p.max_rel, "passed": p.passed}
                                         for size, p in by_batch.items()}
    manifest["latency"]["batch"] = timed
    manifest["latency"]["reference"] = exported.reference_runtime  # torch_eager_ms is its time
    metrics = _metrics(parity, timings, artifact_ms, eager_ms, verification.get("emulated_ms"))
    return BuildOutcome(key=key, staged={LIBRARY_NAME: str(library), PARAMS_NAME: str(staging_dir / PARAMS_NAME)},
                        manifest=manifest, metrics=metrics, material=dict(material), dependencies=dependencies)


def _host_vm(executable):
    """A VM over a host executable held in memory (a cross build's weight transform)."""
    import tvm
    from tvm import relax

    return relax.VirtualMachine(executable, tvm.cpu())


@dataclass(frozen=True)
class _Made:
    """What a build made, in the order it made it: the manifest describes these."""

    exported: Any  # importers.ExportedModel: the Relax module, its route, PyTorch's reference
    compiled: Any  # compile.CompiledModel
    tuning: tuple | None  # (the tuning database, its stats) when the entry is tuned
    params: list  # the weights as shipped (transformed at build time when the kernels read them packed)
    outputs: list[dict]  # the output signature
    dependencies: list  # sources.Dependency: the model's code and data
    elf_machine: int  # e_machine of the library's ELF header


def _manifest(spec: BuildSpec, key: str, material: Mapping, made: _Made, parity, verification: dict,
              timings: dict, latency: dict) -> dict:
    """The artifact's manifest.json (``artifacts.manifest`` reads it back). ``parity`` is None for an
    artifact nothing could run (``verification`` says why); ``latency`` holds no figures for one built
    for another architecture or a GPU (an emulated time is in ``verification``, and is no latency)."""
    from buildsys.models import category_names

    exported, compiled, tuning, elf_machine = made.exported, made.compiled, made.tuning, made.elf_machine
    outputs = made.outputs
    row = spec.target.platform()

    return {
        "manifest_format": MANIFEST_FORMAT,
        "key": key,
        "key_material": dict(material),
        "spec": spec.to_dict(),
        "label": spec.describe(),
        "route": {"name": exported.route, **exported.details},
        "toolchain": toolchain_for(spec.target),
        "runtime": runtime_versions(),
        "io": {**io_signature(spec),
               "params": len(made.params),
               "outputs": outputs},
        # what the library needs of the machine that loads it (runtime/loader.py checks it before dlopen)
        "cpu": {"arch": platforms.describe_elf(elf_machine), "triple": spec.target.gnu_triple,
                "elf_machine": elf_machine, "mcpu": spec.target.mcpu,
                "mattr": list(spec.target.mattr),
                "required_features": required_features(spec.target),
                "features_from": f"/proc/cpuinfo {row.cpuinfo_field}"},
        "verification": verification,
        **({"cuda": compiled.device} if compiled.device is not None else {}),
        **({"detection": {**exported.detection, "categories": category_names(spec.model)}}
           if exported.detection is not None else {}),
        "sources": [{"kind": d.kind, "name": d.name, "digest": d.digest, "version": d.version}
                    for d in made.dependencies],
        "exported": exported_digests(exported),
        "pass_trace": compiled.pass_trace,
        # floating-point operations of one call of each kernel (None: a symbolic shape): `buildsys profile`
        "kernels": {"flops": compiled.kernel_flops or {}},
        "default_schedules": {"rule": RULE_NAME, "functions": compiled.default_scheduled,
                              "packed_weights": compiled.packed_weights, "note": compiled.schedules_note},
        "tuning": None if tuning is None else {
            "settings": spec.tuning.to_dict(), "scope": tuning[0].scope, "target": tuning[0].target,
            "records_digest": tuning[1]["digest"], "workloads": tuning[1]["workloads"],
            "records_applied": tuning[1]["records"], "trials": sum(tuning[1]["trials"].values()),
            "functions_scheduled": compiled.scheduled,
            "weights_prepacked": compiled.prepack_note is None, "note": compiled.prepack_note},
        "parity": {**(parity.to_dict() if parity is not None else
                      {"max_abs": None, "max_rel": None, "outputs": len(outputs), "tolerance": spec.model.tolerance,
                       "passed": None, "not_verified": verification.get("reason")}),
                   "reference": exported.reference_runtime,
                   "input": input_description(spec), "batch_sizes": list(spec.batch.parity_sizes)},
        "timings": {k: round(v, 4) for k, v in timings.items()},
        "latency": latency,
        "build_host": {"host": socket.gethostname(), "machine": platform.machine(),
                       "python": platform.python_version()},
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _latency(spec: BuildSpec, artifact_ms: float | None, eager_ms: float | None, torch_threads: int, runs: int,
             verification: dict) -> dict:
    if artifact_ms is not None and eager_ms is not None:
        return {"artifact_ms": round(artifact_ms, 3), "torch_eager_ms": round(eager_ms, 3),
                "ratio_vs_eager": round(artifact_ms / eager_ms, 3), "torch_threads": torch_threads,
                "runs": runs, "note": "build-time estimate; use a benchmark for decisions"}
    emulated, remote = verification.get("emulated_ms"), verification.get("remote_ms")
    return {"artifact_ms": None, "torch_eager_ms": None, "ratio_vs_eager": None, "torch_threads": torch_threads,
            "runs": 0, "emulated": verification.get("how") == "qemu-user", "emulated_ms": emulated,
            "note": (f"not measured: CUDA code for {', '.join(spec.target.cuda_archs)}, and no GPU ran it here"
                     if spec.target.is_cuda else
                     f"not measured: built for {spec.target.gnu_triple} on this {platforms.host_arch()} host"
                     + (f"; the parity run took {emulated:.0f} ms under qemu-user emulation, which is not latency"
                        if emulated is not None else "")
                     + (f"; the parity run took {remote:.0f} ms on the board over RPC (one cold run, with the "
                        "round trip)" if remote is not None else "")
                     + "; measure on the target (`buildsys bench` there)")}


def io_signature(spec: BuildSpec) -> dict:
    """The manifest's input signature (``buildsys.format.signature.Signature.to_io``)."""
    return Signature(spec.inputs, spec.batch).to_io()


def _metrics(parity, timings: dict, artifact_ms: float | None, eager_ms: float | None,
             emulated_ms: float | None = None) -> dict[str, tuple[float, str]]:
    """The figures the registry keeps beside the row (name -> (value, unit)); an artifact built for
    another architecture has no latency figures (its emulated time is kept apart: it is no latency)."""
    metrics = {k: (v, "s") for k, v in timings.items()}
    if parity is not None:
        metrics.update({
            "parity_max_abs": (parity.max_abs, "abs"),
            "parity_max_rel": (parity.max_rel, "rel"),
            **{f"parity_{name}": (float(value), unit) for name, value, unit in (
                ("detections", parity.detections, "count"),
                ("matched_fraction", parity.matched_fraction, "fraction"),
                ("pre_nms_max_rel", parity.pre_nms_max_rel, "rel"), ("final_max_rel", parity.final_max_rel, "rel"),
                ("second_stage_max_rel", parity.second_stage_max_rel, "rel"))
               if value is not None}})
    if artifact_ms is not None and eager_ms is not None:
        metrics.update({"artifact_ms": (artifact_ms, "ms"), "torch_eager_ms": (eager_ms, "ms"),
                        "ratio_vs_eager": (artifact_ms / eager_ms, "x")})
    if emulated_ms is not None:
        metrics["emulated_ms"] = (emulated_ms, "ms")
    return metrics


def exported_digests(exported) -> dict:
    """What ``plan --deep`` compares: the Relax module right after import (structure, with the
    weights as parameters) and the weights' bytes."""
    import hashlib

    import numpy as np
    from tvm_ffi.structural import structural_hash

    weights = hashlib.sha256()
    for p in exported.params:
        array = np.ascontiguousarray(p.numpy() if hasattr(p, "numpy") else p)
        weights.update(f"{array.dtype}{array.shape}".encode())
        weights.update(array.tobytes())
    return {"graph": f"tvm-shash:{structural_hash(exported.mod, map_free_vars=True) & (2**64 - 1):016x}",
            "weights": f"sha256:{weights.hexdigest()}"}


def tune_entry(spec: BuildSpec, store: Store, registry, entry_key: str,
               on_progress: Callable[[dict], None] | None = None, on_stage: Callable[[str], None] | None = None):
    """Export the entry and tune what its target's database lacks; the database is
    then recorded in the registry. Returns the tuning report."""
    from buildsys.pipeline.importers import import_model
    from buildsys.compiler.tuning import tune
    from buildsys.compiler.tuning_db import TuningDatabase

    stage = on_stage or (lambda _name: None)
    stage("export")
    exported = import_model(spec, on_stage=stage)
    stage("tune")
    database = TuningDatabase(store.root, spec.target, toolchain_versions()["tvm"])
    report = tune(exported.mod, spec, database, entry_key, on_progress)
    registry.record_tuning_database(database.stats())
    return report


