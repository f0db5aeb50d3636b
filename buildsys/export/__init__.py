"""PyTorch -> Relax. One module per route; importer fixes live in ``fixes.py``."""

from .torch_export import ExportedModel, export_model

__all__ = ["ExportedModel", "export_model"]
