"""The build-time weight rewrite the packed kernels read: dense and convolution weights into the
layouts of ``matmul.packed_matmul`` and ``conv2d.packed_conv2d``, depthwise convolutions onto
``depthwise.depthwise_conv2d``, lifted into ``main_transform_params`` so it runs once, at build time.
Batch norm is folded into the convolution before it (``folding.py``) by the same pass.

Longer than the other files on purpose: one Relax rewrite, its cases sharing the rewriter's state.
"""

from __future__ import annotations

from buildsys.compiler.schedules.common import largest_divisor, static_extent
from buildsys.compiler.schedules.conv2d import conv_pixels, pack_conv_weight, packed_conv2d
from buildsys.compiler.schedules.depthwise import depthwise_conv2d, depthwise_tile
from buildsys.compiler.schedules.matmul import pack_weight, packed_matmul, packed_rows

def pack_weights(mod, lanes: int):
    """Rewrite each ``matmul(x, w)`` (or ``matmul(x, permute_dims(w))``, torch's Linear) whose ``w`` is a
    2-D float32 weight parameter of ``main`` (after its ``num_input`` inputs) to read ``w`` packed into
    [n / panel, k, panel] panels, and each NCHW ``conv2d`` (groups 1) on a weight parameter to read
    it channel-blocked, [f / block, c, r, q, block]; the packing is lifted into
    ``main_transform_params`` (run once at build time). A panel is two vectors wide (or the largest
    divisor of n up to that), a block two, one or half a vector (filters padded to a whole
    vector if need be), so kernels read weights contiguously. Batch norms are first folded into the
    convolutions before them (``folding.fold_batch_norms``), and a weight computed from parameters
    alone (such a folded weight) is packed like a parameter. Returns (module, number of ops
    rewritten: batch norms folded plus matmuls and convolutions packed)."""
    import tvm
    from tvm import relax, tirx

    names = {g.name_hint for g in mod.get_global_vars()}
    main = mod["main"] if "main" in names else None
    # Without num_input every parameter may change from run to run; a module already lifted
    # (tuning records applied) keeps the layouts its kernels were tuned for.
    if (not isinstance(main, relax.Function) or not main.attrs or "num_input" not in main.attrs
            or "main_transform_params" in names):
        return mod, 0
    from buildsys.compiler.folding import derived_weights, fold_batch_norms

    mod, folded = fold_batch_norms(mod)
    main = mod["main"]
    # Parameters, and what is computed from them alone (a weight with batch norm folded into it).
    weights = derived_weights(main, set(main.params[int(main.attrs["num_input"]):]))
    matmul, permute = tvm.ir.Op.get("relax.matmul"), tvm.ir.Op.get("relax.permute_dims")
    conv2d = tvm.ir.Op.get("relax.nn.conv2d")
    conv2d_transpose = tvm.ir.Op.get("relax.nn.conv2d_transpose")

    def float32(var, ndim: int | None = None) -> bool:
        """A float32 tensor whose shape is an expression (``ndim`` dimensions, when given)."""
        ty = var.ty
        return (isinstance(ty, relax.TensorType) and ty.dtype == "float32" and ty.shape is not None
                and (ndim is None or ty.ndim == ndim))

    def static_2d(var):
        return float32(var, 2) and all(static_extent(d) is not None for d in var.ty.shape.values)

    rewritten: list = []
    depthwise: list = []  # depthwise convolutions: their own kernel, weights as they are

    @relax.expr_functor.mutator
    class Packer(relax.PyExprMutator):

        def weight_of(self, rhs):
            """(weight parameter, stored transposed) that ``rhs`` is, or None."""
            if rhs in weights:
                return rhs, False
            bound = self.lookup_binding(rhs) if isinstance(rhs, relax.Var) else None
            if (isinstance(bound, relax.Call) and bound.op.same_as(permute) and bound.args[0] in weights
                    and (bound.attrs.axes is None or [int(a) for a in bound.attrs.axes] == [1, 0])):
                return bound.args[0], True
            return None

        def conv(self, call):
            """``call`` (a conv2d) rewritten to read channel-blocked weights, or None."""
            data, w = call.args
            a = call.attrs
            if (w not in weights or (a.data_layout, a.kernel_layout) != ("NCHW", "OIHW")
                    or (a.out_layout or "NCHW") != "NCHW"):
                return None
            if not (float32(w, 4) and float32(data, 4)):
                return None
            w_ty, x_ty = w.ty, data.ty
            filters, channels, kh, kw = (static_extent(d) for d in w_ty.shape.values)
            _, x_channels, height, width = (static_extent(d) for d in x_ty.shape.values)
            if None in (filters, channels, kh, kw, height, width):
                return None
            padding, strides, dilation = ([int(v) for v in t] for t in (a.padding, a.strides, a.dilation))
            out_h = (height + padding[0] + padding[2] - (kh - 1) * dilation[0] - 1) // strides[0] + 1
            out_w = (width + padding[1] + padding[3] - (kw - 1) * dilation[1] - 1) // strides[1] + 1
            if int(a.groups) == filters == x_channels and channels == 1:
                depthwise.append(w)
                return self.builder_.call_te(depthwise_conv2d, data, w, strides, padding, dilation,
                                             *depthwise_tile(out_h, out_w, lanes),
                                             primfunc_name_hint="depthwise_conv2d")
            if int(a.groups) != 1 or x_channels != channels:
                return None
            # Whole vectors of output channels (or half a vector: 8 with AVX-512): a 24- or 30-wide
            # block (mobilenet's 72 and 120 filters with AVX-512) ran 2-4x slower than the unpacked
            # schedule, 8-wide blocks about as fast. Other counts (Mask R-CNN's 91 classes) are
            # padded with zero filters up to a whole vector.
            block = next((b for b in (2 * lanes, lanes, lanes // 2) if filters % b == 0 and b >= 4), lanes)
            packed = self.builder_.emit(self.builder_.call_te(pack_conv_weight, w, block,
                                                             primfunc_name_hint="pack_conv_weight"))
            rewritten.append(w)
            return self.builder_.call_te(packed_conv2d, data, packed, filters, strides, padding, dilation,
                                         conv_pixels(out_w, lanes), primfunc_name_hint="conv2d_packed")

        def upsampling_conv(self, call):
            """``call`` (a conv2d_transpose whose kernel equals its stride, no padding: every
            output pixel gets exactly one kernel tap) as a packed matmul of the input's pixels by
            the [c, f * kh * kw] weight, then depth-to-space; or None. TVM computes such a
            transposed convolution as a convolution of the zero-stuffed input: 4x the work at
            stride 2 (Mask R-CNN's mask predictor spent 19% of its run there)."""
            data, w = call.args
            a = call.attrs
            if (w not in weights or int(a.groups) != 1 or (a.data_layout, a.kernel_layout) != ("NCHW", "IOHW")
                    or (a.out_layout or "NCHW") != "NCHW" or any(int(v) for v in a.padding)
                    or any(int(v) for v in a.output_padding) or any(int(v) != 1 for v in a.dilation)):
                return None
            if not (float32(w, 4) and float32(data, 4)):
                return None
            w_ty, x_ty = w.ty, data.ty
            channels, filters, kh, kw = (static_extent(d) for d in w_ty.shape.values)
            batch, x_channels, height, width = x_ty.shape.values
            height, width = static_extent(height), static_extent(width)
            if (None in (channels, filters, kh, kw, height, width) or static_extent(x_channels) != channels
                    or [int(v) for v in a.strides] != [kh, kw]):
                return None
            op, bb = relax.op, self.builder_
            pixels = bb.emit(op.reshape(op.permute_dims(data, [0, 2, 3, 1]), [batch * (height * width), channels]))
            if not isinstance(batch, tirx.IntImm):
                # The row count as a variable of its own: with batch * h * w the kernel's write-back
                # could not be scheduled ("not a stage pipeline": TVM's arithmetic could not show
                # that the padded tiles cover every row).
                rows = tirx.Var("pixels", "int64")
                pixels = bb.match_cast(pixels, relax.TensorType([rows, channels], "float32"))
            matrix = bb.emit(op.reshape(w, [channels, filters * kh * kw]))
            panel = largest_divisor(filters * kh * kw, 2 * lanes)
            packed = bb.emit(bb.call_te(pack_weight, matrix, panel, False, primfunc_name_hint="pack_weight"))
            taps = bb.emit(bb.call_te(packed_matmul, pixels, packed, packed_rows(lanes),
                                      primfunc_name_hint="matmul_packed"))
            rewritten.append(w)
            spread = op.permute_dims(op.reshape(taps, [batch, height, width, filters, kh, kw]), [0, 3, 1, 4, 2, 5])
            return op.reshape(bb.emit(spread), [batch, filters, height * kh, width * kw])

        def visit_call_(self, call):
            call = self.visit_expr_post_order(call)
            if str(call.attrs.out_dtype if call.attrs is not None and hasattr(call.attrs, "out_dtype")
                   else "None") not in ("None", "", "void", "float32"):
                return call
            if call.op.same_as(conv2d) or call.op.same_as(conv2d_transpose):
                packed_conv = (self.conv if call.op.same_as(conv2d) else self.upsampling_conv)(call)
                return call if packed_conv is None else packed_conv
            if not call.op.same_as(matmul):
                return call
            x, rhs = call.args
            found = self.weight_of(rhs)
            if found is None or not static_2d(found[0]) or not float32(x) or x.ty.ndim < 2:
                return call
            x_info = x.ty
            w, transposed = found
            k_dim, n_dim = [static_extent(d) for d in w.ty.shape.values][::-1 if transposed else 1]
            if static_extent(x_info.shape.values[-1]) != k_dim:
                return call
            panel = largest_divisor(n_dim, 2 * lanes)
            packed = self.builder_.emit(self.builder_.call_te(pack_weight, w, panel, transposed,
                                                             primfunc_name_hint="pack_weight"))
            rewritten.append(w)
            *lead, rows, _ = x_info.shape.values
            if isinstance(rows, (tirx.Var, tirx.IntImm)):
                return self.builder_.call_te(packed_matmul, x, packed, packed_rows(lanes),
                                             primfunc_name_hint="matmul_packed")
            # A row count that is an expression (batch x sequence, a text encoder's tokens flattened)
            # becomes a variable of its own for the kernel, then the product gets its shape back. With
            # the expression the kernel's tiles could not be shown whole and ran 60x slower
            # (4 x 128 rows x 768 x 768 on AVX2: 348 ms against 5.8 ms).
            bb, count = self.builder_, tirx.Var("rows", "int64")
            x = bb.match_cast(x, relax.TensorType([*lead, count, k_dim], "float32"))
            product = bb.emit(bb.call_te(packed_matmul, x, packed, packed_rows(lanes),
                                         primfunc_name_hint="matmul_packed"))
            return relax.op.reshape(product, [*lead, rows, n_dim])

    packer = Packer(mod)
    new_main = packer.visit_expr(main)
    if not rewritten and not folded and not depthwise:
        return mod, 0
    mod = packer.builder_.get()
    mod[mod.get_global_var("main")] = new_main
    T = relax.transform
    mod = tvm.transform.Sequential([T.DeadCodeElimination(), T.LiftTransformParams()])(mod)
    return mod, len(rewritten) + folded
