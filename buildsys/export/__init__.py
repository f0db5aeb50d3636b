"""PyTorch -> Relax, one module per route; importer fixes live in ``fixes.py`` and ``onnx_fixes.py``.

- classification: ``torch.export`` (torch_export.py)
- detection: ONNX (onnx_route.py), which keeps NMS, RoIAlign and top-k inside the VM
"""

from .torch_export import ExportedModel

ROUTES = {"classification": "torch.export", "detection": "onnx"}


def export_model(module, example, task: str) -> ExportedModel:
    if task == "detection":
        from .onnx_route import export_detector
        return export_detector(module, example)
    from .torch_export import export_classifier
    return export_classifier(module, example)


__all__ = ["ExportedModel", "export_model", "ROUTES"]
