"""Fixes for TVM 0.27's Relax importers, each named by the wrong result or error it cures.

Keep every workaround here, with a test in tests/unit/test_fixes.py, so each
can be dropped when TVM fixes the bug upstream.
"""

from __future__ import annotations

import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator


@mutator
class _NearestResizeSemantics(PyExprMutator):
    """Wrong outputs (relative error 0.55 on a ResNet-50-FPN at 300x300).

    The torch importer lowers ``F.interpolate(mode="nearest")`` to
    ``resize2d(coordinate_transformation_mode="half_pixel",
    rounding_method="round")``; PyTorch's nearest is ``asymmetric`` +
    ``floor``. They agree only when output sizes are exact multiples of input
    sizes, which FPN feature maps are not at most input sizes.
    """

    def visit_call_(self, call):
        call = super().visit_call_(call)
        if (isinstance(call.op, tvm.ir.Op) and call.op.name == "relax.image.resize2d"
                and call.attrs.method == "nearest_neighbor"
                and (call.attrs.coordinate_transformation_mode != "asymmetric"
                     or call.attrs.rounding_method != "floor")):
            attrs = call.attrs
            return relax.op.image.resize2d(
                call.args[0], call.args[1], roi=[float(v) for v in attrs.roi], layout=attrs.layout,
                method="nearest_neighbor", coordinate_transformation_mode="asymmetric",
                rounding_method="floor", out_dtype=attrs.out_dtype or None)
        return call


def fix_nearest_resize(mod: tvm.IRModule) -> tvm.IRModule:
    """Give every nearest-neighbour resize PyTorch's coordinate semantics."""
    for gvar, func in list(mod.functions.items()):
        if isinstance(func, relax.Function):
            mod[gvar] = _NearestResizeSemantics().visit_expr(func)
    return mod


def apply_torch_importer_fixes(mod: tvm.IRModule) -> tvm.IRModule:
    return fix_nearest_resize(mod)
