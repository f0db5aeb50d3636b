"""PyTorch -> Relax, one module per route; importer fixes live in ``fixes.py`` and ``onnx_fixes.py``.

- classification: ``torch.export`` (torch_export.py)
- detection: ONNX (onnx_route.py), which keeps NMS, RoIAlign and top-k inside the VM
"""

from typing import Callable

from buildsys.format.signature import STATIC_1, Batch
from buildsys.errors import BuildError
from buildsys.pipeline.importers.torch_export import ExportedModel

ROUTES = {"classification": "torch.export", "detection": "onnx"}


def export_model(module, examples: tuple, task: str, batch: Batch = STATIC_1,
                 on_stage: Callable[[str], None] | None = None) -> ExportedModel:
    """``examples``: one tensor per input (pipeline/samples.py). A ``batch`` range is exported with
    a symbolic batch dimension. ``on_stage("import")`` is called when the PyTorch side is done and
    the Relax import starts."""
    on_import = (lambda: on_stage("import")) if on_stage is not None else (lambda: None)
    if task == "detection":
        if batch != STATIC_1 or len(examples) != 1:  # the config refuses it first, naming the model
            raise BuildError(f"the ONNX route takes one image: batch {batch.label} and {len(examples)} inputs "
                             "cannot be exported", stage="export")
        from buildsys.pipeline.importers.onnx_route import export_detector
        return export_detector(module, examples[0], on_import)
    from buildsys.pipeline.importers.torch_export import export_classifier
    return export_classifier(module, examples, batch, on_import)


__all__ = ["ExportedModel", "export_model", "ROUTES"]
