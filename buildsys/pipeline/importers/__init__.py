"""PyTorch -> Relax, one module per route; importer fixes live in ``fixes.py`` and ``onnx_fixes.py``.

- classification: ``torch.export`` (torch_export.py)
- detection: ONNX (onnx_route.py), which keeps NMS, RoIAlign and top-k inside the VM
"""

from typing import Callable

from buildsys.pipeline.importers.torch_export import ExportedModel

ROUTES = {"classification": "torch.export", "detection": "onnx"}


def export_model(module, example, task: str, on_stage: Callable[[str], None] | None = None) -> ExportedModel:
    """``on_stage("import")`` is called when the PyTorch side is done and the Relax import starts."""
    on_import = (lambda: on_stage("import")) if on_stage is not None else (lambda: None)
    if task == "detection":
        from buildsys.pipeline.importers.onnx_route import export_detector
        return export_detector(module, example, on_import)
    from buildsys.pipeline.importers.torch_export import export_classifier
    return export_classifier(module, example, on_import)


__all__ = ["ExportedModel", "export_model", "ROUTES"]
