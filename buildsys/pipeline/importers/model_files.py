"""Routes for model files named by ``source:`` (``config/modelfiles.py`` checked them when the
config was read; they are checked again here, the file may have changed since).

- ``.onnx``: every operator is checked against the converter table of TVM's ONNX frontend
  first, and all the missing ones are reported at once (op type, domain, node names, opset),
  before ``onnx.load`` reads the weights; then ``from_onnx`` with the signature's shapes (one
  symbolic ``batch`` for a batch range, whatever the file called it; sizes the config gave to
  the file's open dimensions), weights kept as parameters, the fixes of the detector route.
  The reference the artifact must reproduce is onnxruntime on the same file: no torch module.
- ``.pt2``: ``torch.export.load``, then the ``torch.export`` route's import; the reference is
  the program's own module.
"""

from __future__ import annotations

import time

import numpy as np

from buildsys.config import modelfiles
from buildsys.errors import BuildError
from buildsys.pipeline.importers.torch_export import ExportedModel, import_program

DEFAULT_DOMAINS = ("", "ai.onnx")
HANDLED_OUTSIDE_TABLE = ("If", "Constant")  # _construct_nodes takes these itself
SHOWN_NODES = 4


def unsupported_operators(info: modelfiles.OnnxFileInfo, supported) -> list[str]:
    """One line per operator the importer lacks: op type, domain, opset, the nodes using it."""
    missing: dict[tuple[str, str], list[str]] = {}
    for node in info.nodes:
        default = node.domain in DEFAULT_DOMAINS
        if default and (node.op_type in supported or node.op_type in HANDLED_OUTSIDE_TABLE):
            continue
        where = node.name or "(unnamed)"
        missing.setdefault((node.op_type, node.domain), []).append(
            where if node.graph == "main" else f"{where} in {node.graph}")
    lines = []
    for (op_type, domain), nodes in sorted(missing.items()):
        opset = info.opsets.get(domain, info.opsets.get("ai.onnx" if domain == "" else domain))
        names = ", ".join(repr(n) for n in nodes[:SHOWN_NODES]) + (
            f" and {len(nodes) - SHOWN_NODES} more" if len(nodes) > SHOWN_NODES else "")
        lines.append(f"{op_type} ({'domain ' + domain if domain not in DEFAULT_DOMAINS else 'ai.onnx'} opset "
                     f"{opset if opset is not None else '?'}): {len(nodes)} node{'s' if len(nodes) > 1 else ''}: "
                     f"{names}")
    return lines


class OnnxRuntimeReference:
    """onnxruntime on the model file, called like a torch module (tensors or arrays in, arrays out)."""

    def __init__(self, path: str, input_names: list[str]):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.input_names = input_names

    def __call__(self, *inputs):
        feed = {name: np.asarray(x.numpy() if hasattr(x, "numpy") else x) for name, x in zip(self.input_names, inputs)}
        return self.session.run(None, feed)


def import_onnx_file(spec, on_import=lambda: None) -> ExportedModel:
    from tvm import relax, tirx
    from tvm.relax.frontend.onnx.onnx_frontend import _get_convert_map

    from buildsys.pipeline.importers.onnx_route import import_onnx_graph

    path = spec.model.file_path
    start = time.perf_counter()
    try:
        info = modelfiles.read_onnx_file(path)
    except modelfiles.ModelFileError as exc:
        raise BuildError(exc.message, stage="export") from None
    missing = unsupported_operators(info, _get_convert_map())
    if missing:
        raise BuildError(f"{path}: {len(missing)} operator{'s' if len(missing) > 1 else ''} that TVM's ONNX importer "
                         "does not convert (nothing was compiled):\n  " + "\n  ".join(missing), stage="import")
    graph = _load_onnx(path)
    graph, simplified = _simplify(graph, spec)
    reference = OnnxRuntimeReference(str(path), [i.name for i in spec.inputs])
    exported = time.perf_counter()
    on_import()
    batch = tirx.Var("batch", "int64") if spec.batch.dynamic else spec.batch.min
    mod, params = import_onnx_graph(graph, {i.name: [batch, *i.shape[1:]] for i in spec.inputs},
                                    {i.name: i.dtype for i in spec.inputs}, what=f" of {path}")
    if spec.batch.dynamic:  # the bound TVM's memory planning sizes buffers by, as torch's importer sets it
        mod["main"] = mod["main"].with_attr("tir_var_upper_bound", {"batch": spec.batch.max})
    # Shape arithmetic on weights (Gather's negative-index guard reads shape_of(weight)) folded to
    # constants: left in, its 0-d result reached a fused kernel as a 1-d tensor once scheduled
    # ("Mismatched lv3.ndim ... expected 0" at the first run).
    mod = relax.transform.FoldConstant()(relax.transform.CanonicalizeBindings()(mod))
    return ExportedModel(mod=mod, params=params, route="onnx-file",
                         seconds_export=exported - start, seconds_import=time.perf_counter() - exported,
                         reference=reference, output_names=list(info.outputs),
                         details={"onnx_nodes": len(info.nodes), "opset": info.opset,
                                  "external_data": len(info.external_data), "simplified": simplified},
                         reference_runtime="onnxruntime")


def _simplify(graph, spec):
    """The graph with the signature's sizes written into its inputs (the batch stays symbolic for
    a range), simplified by onnxsim: shape arithmetic the sizes decide becomes constants. Without
    it a BERT encoder's ``Range`` over its sequence length stays data-dependent in Relax, and
    relax.build refuses the default schedules for every kernel ("All shape inputs are expected to
    be single tirx var"): 129 ms against 10 ms. Returns (graph, what happened)."""
    import onnxsim

    from buildsys.pipeline.importers.onnx_route import quiet_native_output

    by_name = {i.name: i for i in spec.inputs}
    for value in graph.graph.input:
        declared = by_name.get(value.name)
        if declared is None:
            continue
        for d, dim in enumerate(value.type.tensor_type.shape.dim):
            if d == 0 and spec.batch.dynamic:
                dim.ClearField("dim_value")
                dim.dim_param = "batch"
            else:
                dim.ClearField("dim_param")
                dim.dim_value = spec.batch.min if d == 0 else declared.shape[d]
    try:
        with quiet_native_output():  # onnxsim's C++ prints a line per op it cannot fold
            simplified, ok = onnxsim.simplify(graph, check_n=0)
    except Exception as exc:  # noqa: BLE001 - the graph as it is still imports, maybe slower
        return graph, f"no: onnxsim failed ({type(exc).__name__}: {str(exc)[:200]})"
    return (simplified, "onnxsim") if ok else (graph, "no: onnxsim could not validate its result")


def _load_onnx(path):
    """The file, weights included (external data from beside it), as a BuildError if onnx refuses it."""
    import onnx

    try:
        return onnx.load(str(path), load_external_data=True)
    except Exception as exc:  # noqa: BLE001 - protobuf's DecodeError, onnx's ValidationError, OSError...
        raise BuildError(f"{path}: onnx cannot read it: {type(exc).__name__}: {str(exc)[:500]}",
                         stage="export") from None


def import_pt2_file(spec, on_import=lambda: None) -> ExportedModel:
    import torch

    path = spec.model.file_path
    start = time.perf_counter()
    try:
        modelfiles.check_pt2_file(path)
        program = torch.export.load(str(path))
    except modelfiles.ModelFileError as exc:
        raise BuildError(exc.message, stage="export") from None
    except Exception as exc:  # noqa: BLE001 - a damaged archive, a program of another torch version...
        raise BuildError(f"{path}: torch.export.load failed: {type(exc).__name__}: {str(exc)[:1000]}",
                         stage="export") from None
    _check_program_inputs(program, spec, path)
    return import_program(program, program.module(), start, on_import, route="torch.export-file")


def _check_program_inputs(program, spec, path) -> None:
    """The saved program's inputs against the entry's signature: count, and a batch the program
    fixed where the entry wants another (or a range)."""
    placeholders = [n for n in program.graph.nodes if n.op == "placeholder"
                    and n.name in set(program.graph_signature.user_inputs)]
    if len(placeholders) != len(spec.inputs):
        raise BuildError(f"{path}: the program takes {len(placeholders)} inputs, the entry declares "
                         f"{len(spec.inputs)}", stage="export")
    for node, declared in zip(placeholders, spec.inputs):
        value = node.meta.get("val")
        shape = tuple(getattr(value, "shape", ()))
        if len(shape) != len(declared.shape):
            raise BuildError(f"{path}: input {node.name!r} has {len(shape)} dimensions in the program, "
                             f"{declared.name!r} is declared with {len(declared.shape)}", stage="export")
        first = shape[0]
        if isinstance(first, int) and (spec.batch.dynamic or first != spec.batch.min):
            raise BuildError(f"{path}: the program was exported with batch {first} fixed; the entry builds batch "
                             f"{spec.batch.label} (export it with torch.export.Dim on dimension 0, or build "
                             f"batch: {first})", stage="export")
        for d, (have, want) in enumerate(zip(shape[1:], declared.shape[1:]), 1):
            if isinstance(have, int) and have != want:
                raise BuildError(f"{path}: input {node.name!r} dimension {d} is {have} in the program, "
                                 f"declared {want}", stage="export")
