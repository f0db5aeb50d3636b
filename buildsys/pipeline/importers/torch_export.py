"""Route ``torch.export``: ``torch.export.export`` -> ``from_exported_program``.

Weights stay out of the library (``keep_params_as_input``): the executable
takes them as arguments after the inputs, in the order of ``params``.

A batch range is exported with ``Dim("batch", min, max)`` on the first dimension of every
input; the Relax module then has one symbolic batch variable (torch's name for it, e.g. ``s77``)
whose upper bound TVM's memory planning uses, so the executable takes any batch in the range.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from buildsys.errors import BuildError


@dataclass
class ExportedModel:
    mod: object  # tvm.IRModule with one function "main"(input, *params)
    params: list[np.ndarray]
    route: str
    seconds_export: float
    seconds_import: float
    reference: object  # the torch module whose outputs the artifact must reproduce
    output_names: list[str] | None = None
    details: dict = field(default_factory=dict)
    detection: dict | None = None  # detectors: how outputs map back to the image (see runtime.detections)
    reference_runtime: str = "PyTorch"  # what ``reference`` runs on: parity and the latency estimate name it


def export_classifier(module, examples: tuple, batch=None, on_import=lambda: None) -> ExportedModel:
    import torch

    dynamic = None
    if batch is not None and batch.dynamic:
        dim = torch.export.Dim("batch", min=batch.min, max=batch.max)
        dynamic = tuple({0: dim} for _ in examples)
    start = time.perf_counter()
    try:
        with torch.no_grad():
            program = torch.export.export(module, tuple(examples), dynamic_shapes=dynamic)
    except Exception as exc:
        why = (f" with a dynamic batch {batch.min}..{batch.max} (a model that fixes its batch size, e.g. by a "
               "reshape to a constant, cannot take a batch range; build static batch sizes instead)"
               if dynamic else "")
        raise BuildError(f"torch.export failed{why}: {type(exc).__name__}: {str(exc)[:2000]}",
                         stage="export") from None
    return import_program(program, module, start, on_import)


def import_program(program, reference, start: float, on_import=lambda: None,
                   route: str = "torch.export") -> ExportedModel:
    """An ``ExportedProgram`` into Relax, its weights detached; ``start`` is when exporting began."""
    from tvm import relax
    from tvm.relax.frontend.torch import from_exported_program

    from buildsys.pipeline.importers import fixes

    exported = time.perf_counter()
    on_import()
    try:
        mod = from_exported_program(program, keep_params_as_input=True)
        mod, params = relax.frontend.detach_params(mod)
        mod = fixes.apply_torch_importer_fixes(mod)
    except Exception as exc:
        raise BuildError(f"Relax import failed: {type(exc).__name__}: {str(exc)[:2000]}", stage="import") from None
    return ExportedModel(mod=mod, params=[p.numpy() for p in params.get("main", [])], route=route,
                         seconds_export=exported - start, seconds_import=time.perf_counter() - exported,
                         reference=reference)
