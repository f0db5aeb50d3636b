"""Route ``torch.export``: ``torch.export.export`` -> ``from_exported_program``.

Weights stay out of the library (``keep_params_as_input``): the executable
takes them as arguments after the input, in the order of ``params``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import BuildError


@dataclass
class ExportedModel:
    mod: object  # tvm.IRModule with one function "main"(input, *params)
    params: list[np.ndarray]
    route: str
    seconds_export: float
    seconds_import: float


def export_model(module, example) -> ExportedModel:
    import time

    import torch
    from tvm import relax
    from tvm.relax.frontend.torch import from_exported_program

    from .fixes import apply_torch_importer_fixes

    start = time.perf_counter()
    try:
        with torch.no_grad():
            program = torch.export.export(module, (example,))
    except Exception as exc:
        raise BuildError(f"torch.export failed: {type(exc).__name__}: {str(exc)[:2000]}", stage="export") from None
    exported = time.perf_counter()
    try:
        mod = from_exported_program(program, keep_params_as_input=True)
        mod, params = relax.frontend.detach_params(mod)
        mod = apply_torch_importer_fixes(mod)
    except Exception as exc:
        raise BuildError(f"Relax import failed: {type(exc).__name__}: {str(exc)[:2000]}", stage="import") from None
    arrays = [p.numpy() for p in params.get("main", [])]
    return ExportedModel(mod=mod, params=arrays, route="torch.export",
                         seconds_export=exported - start, seconds_import=time.perf_counter() - exported)
