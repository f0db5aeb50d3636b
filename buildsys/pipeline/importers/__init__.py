"""PyTorch -> Relax, one module per route; importer fixes live in ``fixes.py`` and ``onnx_fixes.py``.

- classification: ``torch.export`` (torch_export.py)
- detection: ONNX (onnx_route.py), which keeps NMS, RoIAlign and top-k inside the VM
- model files named by ``source:``: ``.onnx`` and ``.pt2`` (model_files.py)

``import_model`` is how every command that imports a model (build, tune, ``plan --deep``,
``build --check-repro``) gets it from its spec: one way to resolve a source.
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


def import_model(spec, on_stage: Callable[[str], None] | None = None, instantiate=None) -> ExportedModel:
    """The entry's model as Relax: a model file through its route, a Python source made by
    ``instantiate`` (``buildsys.models.instantiate`` unless given) and exported."""
    from buildsys.pipeline.samples import export_examples

    on_import = (lambda: on_stage("import")) if on_stage is not None else (lambda: None)
    kind = spec.model.file_kind
    if kind == "onnx":
        from buildsys.pipeline.importers.model_files import import_onnx_file
        return import_onnx_file(spec, on_import)
    if kind == "pt2":
        from buildsys.pipeline.importers.model_files import import_pt2_file
        return import_pt2_file(spec, on_import)
    if instantiate is None:
        from buildsys.models import instantiate
    return export_model(instantiate(spec.model), export_examples(spec), spec.model.task, spec.batch,
                        on_stage=on_stage)


__all__ = ["ExportedModel", "export_model", "import_model", "ROUTES"]
