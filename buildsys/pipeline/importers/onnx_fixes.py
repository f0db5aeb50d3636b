"""Fixes for TVM 0.27's Relax ONNX importer, each named by the error it cures.

torchvision detectors exported to ONNX carry data-dependent shapes (score
filtering, top-k, NMS) that the importer was not written for. Each fix below
patches one converter of ``tvm.relax.frontend.onnx`` in place, says which
error it cures, and is covered by tests/unit/test_onnx_fixes.py. They are
applied once per process by ``apply_onnx_importer_fixes()``; the pinned TVM
version (pyproject.toml) is the one they were written against, and
``FixNotApplicable`` is raised if the code they patch has changed.
"""

from __future__ import annotations

import inspect
import itertools
import textwrap

import numpy as np

from buildsys.errors import BuildError

# torchvision exports max_output_boxes_per_class = INT64_MAX; legalization allocates
# batch * classes * max_out * 3 int64s for it. Capping is exact while the cap is at least
# what torchvision keeps after NMS (post_nms_top_n <= 1000 boxes per class per image).
NMS_MAX_OUTPUT_CAP = 4096
INT32_MAX = 2**31 - 1

_applied = False
_counter = itertools.count()


class FixNotApplicable(BuildError):
    """The importer code a fix patches is not what it was written for (another TVM version?)."""


def _fresh_dim(prefix: str):
    from tvm import tirx

    return tirx.Var(f"{prefix}{next(_counter)}", "int64")


def fix_shape_inputs(F) -> None:
    """Cures ``ValueError: Node X cannot handle ShapeExpr inputs.``

    Shape computations (``Shape`` -> ``Gather`` -> ``Concat``) reach ops the
    importer only accepts tensors for; convert the shape to an int64 tensor.
    """
    source = textwrap.dedent(inspect.getsource(F.ONNXGraphImporter._construct_nodes))
    old = 'raise ValueError(f"Node {node.name} cannot handle ShapeExpr inputs.")'
    if old not in source:
        raise FixNotApplicable("fix_shape_inputs: ONNXGraphImporter._construct_nodes changed", stage="import")
    source = source.replace(old, "inputs[i] = self.bb.normalize(relax.op.shape_to_tensor(inp))")
    namespace: dict = {}
    exec(compile(source, F.__file__, "exec"), F.__dict__, namespace)  # noqa: S102 - TVM's own code, one line changed
    F.ONNXGraphImporter._construct_nodes = namespace["_construct_nodes"]


def fix_unknown_shapes(F) -> None:
    """Cures ``CodeGenVM cannot emit this Relax operator directly`` (``LegalizeOps`` leaves ops on
    ``R.Tensor(ndim=N)`` unlowered; inside the dataflow blocks ``buildsys.ToDataflow`` makes it
    fails first, with ``emit_te now only supports Tensor that has ShapeExpr shape``, and the build
    is retried without that pass) and, on import, ``'NoneType' object is not iterable``, after
    data-dependent ops.

    Before converting any op, tensors of unknown shape but known rank get
    fresh symbolic dimensions via ``match_cast``.
    """
    from tvm import relax

    original = F.ONNXGraphImporter._convert_operator

    def _convert_operator(self, op_name, inputs, attr, opset):
        for i, inp in enumerate(inputs):
            if (inp is not None and isinstance(inp, relax.Expr) and isinstance(inp.ty, relax.TensorType)
                    and inp.ty.shape is None and inp.ty.ndim >= 0):
                dims = [_fresh_dim("d") for _ in range(inp.ty.ndim)]
                inputs[i] = self.bb.match_cast(inp, relax.TensorType(dims, inp.ty.dtype))
        return original(self, op_name, inputs, attr, opset)

    F.ONNXGraphImporter._convert_operator = _convert_operator


def fix_nms(F) -> None:
    """Cures a segfault in ``all_class_non_max_suppression`` shape inference when
    ``boxes`` has unknown shape, and ``Literal value 9223372036854775807 exceeds
    range of int32`` (torchvision's ``max_output_boxes_per_class``)."""
    from tvm import relax

    original = F.NonMaxSuppression._impl_v10.__func__

    def _impl(cls, bb, inputs, attr, params):
        boxes, scores = inputs[0], inputs[1]
        if isinstance(boxes.ty, relax.TensorType) and boxes.ty.shape is None:
            if scores.ty.shape is not None:
                batch, count = scores.ty.shape.values[0], scores.ty.shape.values[2]
            else:
                batch, count = _fresh_dim("nms_b"), _fresh_dim("nms_n")
            inputs[0] = bb.match_cast(boxes, relax.TensorType([batch, count, 4], boxes.ty.dtype))
        limit = inputs[2] if len(inputs) > 2 else None
        if isinstance(limit, F.tvm.ir.GenericConst) and int(limit.value.numpy().reshape(-1)[0]) > INT32_MAX:
            inputs[2] = relax.const(np.array([NMS_MAX_OUTPUT_CAP], "int64"), "int64")
        return original(cls, bb, inputs, attr, params)

    F.NonMaxSuppression._impl_v10 = classmethod(_impl)


def fix_constant_of_shape(F) -> None:
    """Cures ``ConstantOfShape`` failing on a run-time ``R.shape_of(x)`` (a ShapeType
    value that is not a literal ``ShapeExpr``): broadcast the constant instead."""
    from tvm import relax

    original = F.ConstantOfShape._impl_v9.__func__

    def _impl(cls, bb, inputs, attr, params):
        shape = inputs[0]
        if (isinstance(shape, relax.Expr) and isinstance(shape.ty, relax.ShapeType)
                and not isinstance(shape, relax.ShapeExpr)):
            value = attr.get("value")
            value = F.get_numpy(value) if value is not None else np.array(0.0, "float32")
            return relax.op.broadcast_to(relax.const(value, str(value.dtype)), shape)
        return original(cls, bb, inputs, attr, params)

    F.ConstantOfShape._impl_v9 = classmethod(_impl)


def fix_slice_to_end(F) -> None:
    """Cures a segmentation fault inside TVM (tiny Faster R-CNN) and broadcasting
    failures after ``Slice(end=INT64_MAX)`` on a symbolic dim ``n``: its shape
    ``min(INT64_MAX, n) - min(0, n)`` is not provably ``n``, so a later ``R.add``
    gets an unknown shape and is never legalized. Clamp such ends to the
    (symbolic) dimension."""
    from tvm import relax, tirx

    original = F.Slice._impl_v13.__func__

    def _impl(cls, bb, inputs, attr, params):
        try:
            ends = _clamped_ends(bb, inputs, params)
        except Exception:  # noqa: BLE001 - anything unexpected: leave it to the importer's own code
            ends = None
        if ends is not None:
            inputs[2] = ends
        return original(cls, bb, inputs, attr, params)

    def _clamped_ends(bb, inputs, params):
        data = inputs[0]
        consts = [F.get_constant(inputs[i], params) if len(inputs) > i else None for i in (1, 2, 3, 4)]
        starts, ends, axes, steps = consts
        if not (isinstance(data, relax.Expr) and not isinstance(data, relax.ShapeExpr)
                and isinstance(data.ty, relax.TensorType) and data.ty.shape is not None
                and starts is not None and ends is not None
                and all(c is None or isinstance(c, F.tvm.ir.GenericConst) for c in consts)):
            return None
        st = starts.value.numpy().reshape(-1)
        en = ends.value.numpy().reshape(-1)
        ax = axes.value.numpy().reshape(-1) if axes is not None else np.arange(len(st))
        sp = steps.value.numpy().reshape(-1) if steps is not None else np.ones(len(st), "int64")
        dims = data.ty.shape.values
        if not ((st >= 0).all() and (sp > 0).all() and (en >= INT32_MAX).any()):
            return None
        return relax.ShapeExpr([dims[int(a) % len(dims)] if e >= INT32_MAX else tirx.IntImm("int64", int(e))
                                for a, e in zip(ax, en)])

    F.Slice._impl_v13 = classmethod(_impl)


def fix_topk_runtime_k(F) -> None:
    """Cures ``TopK k must be a constant``: torchvision's one-stage post-processing
    uses ``k = min(topk_candidates, num_above_threshold)``, known only at run
    time. Full descending argsort, then slice to ``k``."""
    from tvm import relax

    original = F.TopK._impl_v11.__func__

    def _impl(cls, bb, inputs, attr, params):
        k = F.get_constant(inputs[1], params)
        if isinstance(k, F.tvm.ir.GenericConst):
            return original(cls, bb, inputs, attr, params)
        data = inputs[0]
        ndim = data.ty.ndim
        axis = attr.get("axis", -1) % ndim
        largest = bool(attr.get("largest", 1))
        order = bb.normalize(relax.op.argsort(data, axis=axis, descending=largest, dtype="int64"))
        values = bb.normalize(relax.op.gather_elements(data, order, axis=axis))
        k_vec = bb.normalize(relax.op.broadcast_to(relax.op.reshape(relax.op.astype(k, "int64"), [1]), [ndim]))
        shape = bb.normalize(relax.op.shape_to_tensor(relax.op.shape_of(data)))
        end = bb.normalize(relax.op.where(relax.const(np.arange(ndim) == axis, "bool"), k_vec, shape))
        begin = relax.const(np.zeros(ndim, "int64"), "int64")
        strides = relax.const(np.ones(ndim, "int64"), "int64")
        values = bb.normalize(relax.op.dynamic_strided_slice(values, begin, end, strides))
        order = bb.normalize(relax.op.dynamic_strided_slice(order, begin, end, strides))
        if data.ty.shape is not None:
            # values and indices must share one symbolic length, or later broadcasts fail
            k_dim = _fresh_dim("topk_k")
            dims = [k_dim if a == axis else d for a, d in enumerate(data.ty.shape.values)]
            values = bb.match_cast(values, relax.TensorType(dims, data.ty.dtype))
            order = bb.match_cast(order, relax.TensorType(dims, "int64"))
        return relax.Tuple([values, order])

    F.TopK._impl_v11 = classmethod(_impl)


_BINARY = {"Add", "Sub", "Mul", "Div", "Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual",
           "And", "Or", "Max", "Min", "Pow", "Mod"}


def fix_binary_symbolic_dims(F) -> None:
    """Cures ``CodeGenVM cannot emit this Relax operator directly`` for element-wise
    ops left with unknown output shape (then never legalized) when operands have dims equal at run time but not provably equal, e.g.
    ``arange(n)`` against ``labels[min(10, n) - min(0, n)]``: ``match_cast`` the
    second operand to the first's dims (checked at run time)."""
    from tvm import relax, tirx

    analyzer = F.tvm.sym.Analyzer()
    original = F.ONNXGraphImporter._convert_operator

    def is_one(d):
        return isinstance(d, tirx.IntImm) and int(d) == 1

    def _convert_operator(self, op_name, inputs, attr, opset):
        if op_name in _BINARY and len(inputs) == 2 and all(
                i is not None and isinstance(i, relax.Expr) and isinstance(i.ty, relax.TensorType)
                and i.ty.shape is not None for i in inputs):
            a, b = inputs[0].ty.shape.values, inputs[1].ty.shape.values
            if len(a) == len(b):
                dims, changed = [], False
                for da, db in zip(a, b):
                    both_static = isinstance(da, tirx.IntImm) and isinstance(db, tirx.IntImm)
                    if not is_one(da) and not is_one(db) and not both_static and not analyzer.can_prove_equal(da, db):
                        dims.append(da)
                        changed = True
                    else:
                        dims.append(db)
                if changed:
                    inputs[1] = self.bb.match_cast(inputs[1], relax.TensorType(dims, inputs[1].ty.dtype))
        return original(self, op_name, inputs, attr, opset)

    F.ONNXGraphImporter._convert_operator = _convert_operator


FIXES = (fix_shape_inputs, fix_unknown_shapes, fix_nms, fix_constant_of_shape, fix_slice_to_end,
         fix_topk_runtime_k, fix_binary_symbolic_dims)


def apply_onnx_importer_fixes() -> None:
    """Patch the ONNX importer once per process (order matters: later wrappers run first)."""
    global _applied
    if _applied:
        return
    from tvm.relax.frontend.onnx import onnx_frontend as F

    for fix in FIXES:
        fix(F)
    _applied = True
