"""Batch norm folded into the convolution that feeds it, at build time.

``torch.export`` of a model in eval mode imports every ``BatchNorm2d`` as ``relax.nn.batch_norm``
(``training=False``) on the convolution's output, and TVM legalizes it as a kernel of its own
(``topi.nn.batch_norm``: a subtract, divide, multiply and add per element, in a separate pass over
the feature map, unscheduled, so on one thread without vectors). In mobilenet_v3_large 224 on
``llvm -mcpu=znver4`` those kernels took 60% of an inference (VM instrument, 2 threads,
2026-12-01). Folded, ``conv2d(x, w) -> batch_norm`` becomes ``conv2d(x, w * s) + (beta - mean * s)``
with ``s = gamma / sqrt(var + eps)`` per output channel: the product ``w * s`` and the shift are
computed from weights and constants only, so ``LiftTransformParams`` moves them into
``main_transform_params`` (run once by the builder; ``params.npz`` holds the folded weights), and
the add fuses into the convolution's write-back with the activation after it.
"""

from __future__ import annotations


def _bindings(func):
    """var -> bound value, over every block of ``func``'s body."""
    from tvm import relax

    body = func.body
    table = {}
    if isinstance(body, relax.SeqExpr):
        for block in body.blocks:
            for binding in block.bindings:
                if isinstance(binding, relax.VarBinding):
                    table[binding.var] = binding.value
    return table


def _use_counts(func) -> dict:
    """How often each variable is read in ``func``."""
    from tvm import relax

    counts: dict = {}

    @relax.expr_functor.visitor
    class Counter(relax.PyExprVisitor):
        def visit_var_(self, var):
            counts[var] = counts.get(var, 0) + 1

        def visit_dataflow_var_(self, var):
            counts[var] = counts.get(var, 0) + 1

    Counter().visit_expr(func)
    return counts


def derived_weights(func, weights: set) -> set:
    """``weights`` plus every variable of ``func`` computed from weights and constants only
    (what ``LiftTransformParams`` moves into ``main_transform_params``)."""
    import tvm
    from tvm import relax

    derived = set(weights)

    def known(expr) -> bool:
        if isinstance(expr, relax.Tuple):
            return all(known(f) for f in expr.fields)
        return isinstance(expr, (tvm.ir.expr.Constant, relax.ShapeExpr)) or expr in derived

    for var, value in _bindings(func).items():
        if isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.Op) \
                and all(known(a) for a in value.args):
            derived.add(var)
        elif isinstance(value, relax.TupleGetItem) and known(value.tuple_value):
            derived.add(var)
    return derived


def fold_batch_norms(mod):
    """``mod`` with each ``batch_norm(conv2d(x, w))[0]`` of ``main`` (inference mode, channels on axis
    1, an NCHW/OIHW convolution of any group count on a weight parameter, its output read by the batch
    norm alone, the batch norm's statistics and affine weights parameters or constants) replaced by
    ``conv2d(x, w * s) + shift``. Returns (module, number of batch norms folded)."""
    import tvm
    from tvm import relax

    names = {g.name_hint for g in mod.get_global_vars()}
    main = mod["main"] if "main" in names else None
    if (not isinstance(main, relax.Function) or not main.attrs or "num_input" not in main.attrs
            or "main_transform_params" in names):
        return mod, 0
    weights = set(main.params[int(main.attrs["num_input"]):])
    bound = _bindings(main)
    uses = _use_counts(main)
    batch_norm, conv2d = tvm.ir.Op.get("relax.nn.batch_norm"), tvm.ir.Op.get("relax.nn.conv2d")
    op = relax.op

    def constant_or_weight(expr) -> bool:
        return isinstance(expr, tvm.ir.expr.Constant) or expr in weights

    def foldable(get):
        """(batch norm call, convolution call) behind ``get`` (a TupleGetItem), or None."""
        if get.index != 0 or not isinstance(get.tuple_value, relax.Var):
            return None
        norm = bound.get(get.tuple_value)
        if not (isinstance(norm, relax.Call) and norm.op.same_as(batch_norm)):
            return None
        a = norm.attrs
        data = norm.args[0]
        if bool(a.training) or int(a.axis) != 1 or not isinstance(data, relax.Var) or uses.get(data, 0) != 1:
            return None
        if not all(constant_or_weight(arg) for arg in norm.args[1:]):
            return None
        conv = bound.get(data)
        if not (isinstance(conv, relax.Call) and conv.op.same_as(conv2d)):
            return None
        c = conv.attrs
        ty = conv.ty
        if ((c.data_layout, c.kernel_layout) != ("NCHW", "OIHW") or (c.out_layout or "NCHW") != "NCHW"
                or conv.args[1] not in weights or not isinstance(ty, relax.TensorType) or ty.dtype != "float32"
                or str(c.out_dtype or "float32") not in ("float32", "")):
            return None
        return norm, conv

    folded: list = []

    @relax.expr_functor.mutator
    class Folder(relax.PyExprMutator):
        def visit_tuple_getitem_(self, get):
            found = foldable(get)
            if found is None:
                return super().visit_tuple_getitem_(get)
            norm, conv = found
            _, gamma, beta, mean, var = norm.args
            a, c = norm.attrs, conv.attrs
            bb = self.builder_
            scale = bb.emit(op.rsqrt(op.add(var, relax.const(float(a.epsilon), "float32"))))
            if bool(a.scale):
                scale = bb.emit(op.multiply(gamma, scale))
            shift = bb.emit(op.negative(bb.emit(op.multiply(mean, scale))))
            if bool(a.center):
                shift = bb.emit(op.add(beta, shift))
            shift = bb.emit(op.reshape(shift, [1, -1, 1, 1]))
            w = bb.emit(op.multiply(conv.args[1], bb.emit(op.reshape(scale, [-1, 1, 1, 1]))))
            y = bb.emit(op.nn.conv2d(self.visit_expr(conv.args[0]), w, strides=c.strides, padding=c.padding,
                                     dilation=c.dilation, groups=c.groups, data_layout="NCHW",
                                     kernel_layout="OIHW", out_layout="NCHW", out_dtype="float32"))
            folded.append(norm)
            return bb.normalize(op.add(y, shift))

    folder = Folder(mod)
    new_main = folder.visit_expr(main)
    if not folded:
        return mod, 0
    mod = folder.builder_.get()
    mod[mod.get_global_var("main")] = new_main
    return relax.transform.DeadCodeElimination()(mod), len(folded)
