"""Default CPU schedules for what tuning cannot reach.

TVM's CPU pipeline lowers a kernel without tuning records as the plain loop nest
that legalization wrote. For a matmul that means the reduction innermost and the
right-hand matrix read down its columns: the box head of an R-CNN detector
(up to 1000 proposals x 12544 -> 1024, a row count only known at run time, so
MetaSchedule cannot tune it) spent 77% of a Mask R-CNN inference there
(perf, see README: Default schedules). Every unscheduled matmul and NCHW
convolution, static or dynamic, gets a cache-blocked, register-tiled, vectorized
and parallel schedule; kernels not recognised are left as they were.

A matmul whose right-hand side is a 2-D weight parameter (a dense layer) reads it packed:
``pack_weights`` rewrites it, before legalization, to read [n / panel, k, panel] panels
(two vectors wide) that ``main_transform_params`` makes once at build time, and its kernel runs
a 6-row x two-vector register tile over the panels. On the box head (1000x12544x1024, one
thread, 2026-12-01) that ran at 111 GFLOP/s with AVX-512 (104 with AVX2) where numpy's OpenBLAS
ran 102 and the unpacked schedule 31 (28); benchmarks/kernels.py measures all the kernels.
Convolutions whose filters fill whole vectors read their weights channel-blocked the same way,
and a tile is 6 (AVX-512: up to 7) output pixels x two vectors of channels: resnet18's 3x3
convolutions ran at 210-225 GFLOP/s on two AVX-512 threads against 80-150 unpacked.

Depthwise convolutions (MobileNet) get a kernel of their own: channels in parallel, each channel's
input copied into a zero-padded plane split by column phase (a stride-2 tap reads a contiguous
vector), up to 8 vectors of output accumulated in registers over the taps, the epilogue in the
write-back. With the generic NCHW schedule they had taken 35% of mobilenet_v3_large on znver4; on
its shapes (kernel bench, 2 threads, znver4, busy machine) 3x3 @56 ran at 75 GFLOP/s against 33,
3x3 stride 2 @112 18 against 9, 5x5 stride 2 @56 28 against 15, 5x5 @7 59 against 42. Batch norm
is folded into the convolution before it (``folding.py``) by the same build-time pass. Sums over
a feature map (squeeze-and-excitation's global average pool) keep a vector of partial sums:
120x28x28 took 12 us against about 70 unscheduled (znver4, one thread).

Longer than 400 lines on purpose: the packing rewrite and the schedules that read packed
weights must agree on layouts and tile sizes; they share those constants and helpers here.
"""

from __future__ import annotations

# Output tiles are sized for the target's vector registers (16 of them without AVX-512): about 8
# accumulators, the rest for loads and broadcasts. Measured on 3x3 convolutions (znver3): a
# 4-filter x 2-row x 7-pixel tile (one AVX2 vector a row) ran 1.3-2x faster than 4 x 14 pixels.
ROWS = 4  # matmul: rows of the output tile; columns: a divisor of N up to two vectors
CONV_FILTERS = 4  # convolution: output channels of the tile; pixels: a divisor of the width
ACCUMULATORS = 8  # vector registers the tile may hold
MAX_DEPTH = 256  # matmul reduction block: this many rows of the right-hand matrix stay in cache
RULE_NAME = "buildsys.CPUMatmul/6"  # recorded in the manifest; bump when the schedule changes


def _largest_divisor(n: int, at_most: int) -> int:
    return next(d for d in range(min(n, at_most), 0, -1) if n % d == 0)


def vector_lanes(target) -> int:
    """float32 lanes of the target's vectors: on x86 16 (AVX-512), 8 (AVX2), else 4 (SSE2); on other
    architectures their baseline width from ``buildsys/platforms.py`` (NEON: 128 bits, 4 lanes;
    SVE code is generated for 128-bit NEON vectors too)."""
    from tvm.target import codegen

    from buildsys import platforms

    if target is None or target.kind.name != "llvm":
        return 4
    triple = str(target.attrs.get("mtriple", "") or "")
    row = platforms.for_triple(triple) if triple else platforms.host()
    if row is not None and row.arch != "x86_64":
        return row.vector_lanes
    for feature, lanes in (("avx512f", 16), ("avx2", 8)):
        if codegen.llvm_cpu_has_features(feature, target):
            return lanes
    return 4


def _pixels(width: int, lanes: int) -> int:
    """Pixels of a convolution tile row: a divisor of the width, one vector if one fills more than
    half a vector, else up to two."""
    one = _largest_divisor(width, lanes)
    return one if one * 2 > lanes else _largest_divisor(width, 2 * lanes)


def _same_vars(exprs, wanted) -> bool:
    """Whether ``exprs`` are exactly the variables ``wanted``, in order."""
    from tvm import tirx

    return exprs is not None and len(exprs) == len(wanted) and all(
        isinstance(e, tirx.Var) and e.same_as(w) for e, w in zip(exprs, wanted))


def _is_matmul(block) -> bool:
    """Whether ``block`` is ``C[..., i, j] += A[..., i, k] * B[..., k, j]``."""
    from tvm import tirx

    iters = list(block.iter_vars)
    kinds = [it.iter_type for it in iters]
    if len(iters) < 3 or kinds[-1] != tirx.IterVar.CommReduce or any(k != tirx.IterVar.DataPar for k in kinds[:-1]):
        return False
    i, j, k = iters[-3].var, iters[-2].var, iters[-1].var
    batch = [it.var for it in iters[:-3]]
    if len(block.reads) != 2 or len(block.writes) != 1:
        return False

    def indices(region):
        return [r.min for r in region.region] if all(_is_one(r.extent) for r in region.region) else None

    reads = [indices(r) for r in block.reads]
    if not _same_vars(indices(block.writes[0]), batch + [i, j]):
        return False
    a, b = (reads[0], reads[1]) if _same_vars(reads[0], batch + [i, k]) else (reads[1], reads[0])
    if not (_same_vars(a, batch + [i, k]) and (_same_vars(b, batch + [k, j]) or _same_vars(b, [k, j]))):
        return False
    return isinstance(block.body, tirx.BufferStore) and isinstance(block.body.value, tirx.Add)


def _is_one(expr) -> bool:
    from tvm import tirx
    return isinstance(expr, tirx.IntImm) and expr.value == 1


def _static(extent) -> int | None:
    from tvm import tirx
    return extent.value if isinstance(extent, tirx.IntImm) else None


def _find(func, matches):
    """(schedule, the root's blocks, index of the one block ``matches`` accepts), or None."""
    from tvm import s_tir
    from tvm.s_tir.dlight.analysis import get_root_block

    sch = s_tir.Schedule(func)
    try:
        blocks = list(sch.get_child_blocks(get_root_block(sch)))
    except Exception:  # noqa: BLE001 - not the shape we handle
        return None
    found = [n for n, b in enumerate(blocks) if matches(sch.get(b))]
    return (sch, blocks, found[0]) if len(found) == 1 else None


def _schedule_with(func, matches, body):
    """``func`` with ``body(sch, blocks, position)`` applied to the one block ``matches`` accepts
    (see ``_find``), marked scheduled; None if there is no such block or the schedule fails (a
    schedule we cannot apply leaves the kernel as it was)."""
    found = _find(func, matches)
    if found is None:
        return None
    sch, blocks, position = found
    try:
        body(sch, blocks, position)
    except Exception:  # noqa: BLE001
        return None
    return sch.mod["main"].with_attr("tirx.is_scheduled", True)


def _register_tile(sch, main, at, unrolled, vectorized, reduction, consumers, writeback=None,
                   vectorize_writeback: bool = True) -> None:
    """The output tile accumulates in a buffer written back under loop ``at``; elementwise
    consumers are folded into that write-back while the tile is hot. ``writeback``: a block
    that already copies ``main``'s output out (then ``main``'s buffer becomes the tile)."""
    if writeback is None:
        tile = sch.cache_write(main, 0, "global")
    else:
        tile = writeback
        sch.set_scope(main, 0, "global")
    sch.reverse_compute_at(tile, at)
    sch.unroll(unrolled)
    sch.vectorize(vectorized)
    sch.decompose_reduction(main, reduction)
    if vectorize_writeback:
        sch.vectorize(sch.get_loops(tile)[-1])
    # Fold the elementwise chain forward into its last block (an intermediate may feed several
    # blocks, hardswish's x * relu6(x + 3) / 6), then that block into the write-back.
    for consumer in consumers[:-1]:
        try:
            sch.compute_inline(consumer)
        except Exception:  # noqa: BLE001 - not inlinable: the rest stay their own loop nests
            return
    if consumers:
        try:
            sch.reverse_compute_inline(consumers[-1])
        except Exception:  # noqa: BLE001
            pass


def schedule_matmul(func, lanes: int = 8):
    """A schedule for ``func`` if it is a matmul (optionally with elementwise work after it
    in the same kernel), else None."""
    found = _find(func, _is_matmul)
    if found is None:
        return None
    sch, blocks, position = found
    main = blocks[position]
    try:
        for producer in blocks[:position]:  # inline what feeds it (a transpose, a cast)
            sch.compute_inline(producer)
        loops = sch.get_loops(main)
        if len(loops) != len(sch.get(main).iter_vars):
            return None
        *batch, i, j, k = loops
        n, depth = _static(sch.get(j).extent), _static(sch.get(k).extent)
        if n is None or depth is None:
            return None
        io, ii = sch.split(i, [None, ROWS])
        jo, ji = sch.split(j, [None, _largest_divisor(n, 2 * lanes)])
        ko, ki = sch.split(k, [None, _largest_divisor(depth, MAX_DEPTH)])
        sch.reorder(*batch, jo, io, ko, ki, ii, ji)
        sch.parallel(sch.fuse(*batch, jo) if batch else jo)
        _register_tile(sch, main, io, ii, ji, ko, blocks[position + 1:])
    except Exception:  # noqa: BLE001 - a schedule we cannot apply leaves the kernel as it was
        return None
    return sch.mod["main"].with_attr("tirx.is_scheduled", True)


def _is_conv2d(block) -> bool:
    """Whether ``block`` is a direct NCHW convolution: ``C[n, f, y, x] += P[n, c, y*s+r*d, x*s+q*d] * W[f, c, r, q]``."""
    from tvm import tirx

    iters = list(block.iter_vars)
    kinds = [it.iter_type for it in iters]
    if [k == tirx.IterVar.DataPar for k in kinds] != [True] * 4 + [False] * 3:
        return False
    if any(k != tirx.IterVar.CommReduce for k in kinds[4:]) or len(block.reads) != 2 or len(block.writes) != 1:
        return False
    n, f, y, x, c, r, q = (it.var for it in iters)
    return (_same_vars([e.min for e in block.writes[0].region], [n, f, y, x])
            and _same_vars([e.min for e in block.reads[1].region], [f, c, r, q]))


def schedule_conv2d(func, lanes: int = 8):
    """A schedule for an NCHW convolution kernel (padding before it, elementwise work after it)."""
    found = _find(func, _is_conv2d)
    if found is None:
        return None
    sch, blocks, position = found
    main = blocks[position]
    try:
        n, f, y, x, c, r, q = sch.get_loops(main)
        filters, width = _static(sch.get(f).extent), _static(sch.get(x).extent)
        if filters is None or width is None:
            return None
        fb, xb = _largest_divisor(filters, CONV_FILTERS), _pixels(width, lanes)
        rows = max(1, ACCUMULATORS // (fb * -(-xb // lanes)))  # output rows in the tile
        fo, fi = sch.split(f, [None, fb])
        xo, xi = sch.split(x, [None, xb])
        yo, yi = sch.split(y, [None, rows])
        sch.reorder(n, fo, yo, xo, c, r, q, yi, fi, xi)
        sch.parallel(sch.fuse(n, fo))
        sch.unroll(yi)
        _register_tile(sch, main, xo, fi, xi, c, blocks[position + 1:])
        for producer in blocks[:position]:  # padding: its own loop nest, in parallel
            sch.parallel(sch.fuse(*sch.get_loops(producer)[:2]))
    except Exception:  # noqa: BLE001 - a schedule we cannot apply leaves the kernel as it was
        return None
    return sch.mod["main"].with_attr("tirx.is_scheduled", True)


PACKED = "buildsys.packed_matmul"  # block annotation of the matmul that reads a packed weight: its panel width
PACKED_ROWS = "buildsys.packed_matmul_rows"  # ... and the rows of its register tile (its row count's multiple)
PACKED_CONV = "buildsys.packed_conv2d"  # block annotation of the convolution on channel-blocked weights


def _pack_weight(w, panel: int, transposed: bool):
    """``w`` ([k, n], or [n, k] when ``transposed``) as [n / panel, k, panel] panels."""
    from tvm import te

    n, k = (w.shape[0], w.shape[1]) if transposed else (w.shape[1], w.shape[0])
    return te.compute((n // panel, k, panel),
                      lambda jo, kk, ji: w[jo * panel + ji, kk] if transposed else w[kk, jo * panel + ji],
                      name="pack_weight")


def _packed_matmul(x, packed, rows: int):
    """``x[..., m, k] @ w`` with ``w`` read from its [n / panel, k, panel] panels. The product is
    computed for m rounded up to ``rows`` (the register tile's), the extra rows reading x's last
    row again, and then cut to m: every tile is whole, so the tile's accumulators need no bounds
    checks (a predicated tile made TVM allocate them in memory, not in registers)."""
    from tvm import te, tirx

    *lead, m, depth = x.shape
    panels, _, panel = (int(d) for d in packed.shape)
    whole = tirx.floordiv(m + rows - 1, rows) * rows if not isinstance(m, (int, tirx.IntImm)) \
        else -(-int(m) // rows) * rows
    r = te.reduce_axis((0, depth), name="k")
    tiles = te.compute(
        (*lead, whole, panels * panel),
        lambda *i: te.sum(x[(*i[:-2], tirx.min(i[-2], m - 1), r)] * packed[i[-1] // panel, r, i[-1] % panel],
                          axis=r),
        name="matmul_packed", attrs={PACKED: panel, PACKED_ROWS: rows})
    return te.compute((*lead, m, panels * panel), lambda *i: tiles[i], name="matmul_packed_rows")


def _pack_conv_weight(w, block: int):
    """``w[f, c, r, q]`` as [ceil(f / block), c, r, q, block]: ``block`` output channels side by
    side, the last block padded with zero filters."""
    from tvm import te, tirx

    filters = int(w.shape[0])
    return te.compute(
        (-(-filters // block), *w.shape[1:], block),
        lambda fo, c, r, q, fi: tirx.if_then_else(fo * block + fi < filters,
                                                  w[tirx.min(fo * block + fi, filters - 1), c, r, q],
                                                  tirx.const(0.0, "float32")),
        name="pack_conv_weight")


def conv_pixels(width: int, lanes: int) -> int:
    """Output pixels of the packed convolution's register tile (x two vectors of channels): the
    count up to 6 (7 with AVX-512's 32 registers) that wastes the fewest padded pixels on a row."""
    largest = 7 if lanes >= 16 else 6
    return min(range(largest, 3, -1), key=lambda p: -(-width // p) * p - width)


def _packed_conv2d(data, packed, filters: int, strides, padding, dilation, pixels: int):
    """NCHW ``conv2d`` reading channel-blocked weights (``_pack_conv_weight``). Output tiles are
    ``pixels`` of a row x ``block`` channels, so each step broadcasts a pixel's input and
    multiplies it into vectors of channels; a row is computed up to a multiple of ``pixels``
    (the extra pixels repeat its last one) and cut, so tiles need no bounds checks."""
    from tvm import te, tirx

    batch, channels, height, width = data.shape
    height, width = int(height), int(width)
    blocks, _, kh, kw, block = (int(d) for d in packed.shape)
    (top, left, bottom, right), (sh, sw), (dh, dw) = ([int(v) for v in t] for t in (padding, strides, dilation))
    pixels, filters = int(pixels), int(filters)
    out_h = (height + top + bottom - (kh - 1) * dh - 1) // sh + 1
    out_w = (width + left + right - (kw - 1) * dw - 1) // sw + 1
    if top or left or bottom or right:
        data = te.compute(
            (batch, channels, height + top + bottom, width + left + right),
            lambda n, c, y, x: tirx.if_then_else(
                tirx.all(y >= top, y < height + top, x >= left, x < width + left),
                data[n, c, y - top, x - left], tirx.const(0.0, "float32")), name="pad")
    c = te.reduce_axis((0, channels), name="c")
    r = te.reduce_axis((0, kh), name="r")
    q = te.reduce_axis((0, kw), name="q")
    whole = -(-out_w // pixels) * pixels
    tiles = te.compute(
        (batch, out_h, whole, blocks * block),
        lambda n, y, x, f: te.sum(data[n, c, y * sh + r * dh, tirx.min(x, out_w - 1) * sw + q * dw]
                                  * packed[f // block, c, r, q, f % block], axis=[c, r, q]),
        name="conv2d_packed", attrs={PACKED_CONV: block, PACKED_ROWS: pixels})
    return te.compute((batch, filters, out_h, out_w), lambda n, f, y, x: tiles[n, y, x, f],
                      name="conv2d_packed_nchw")


DEPTHWISE = "buildsys.depthwise_conv2d"  # block annotation of the depthwise convolution: its vector width
DEPTHWISE_TILE = "buildsys.depthwise_tile"  # ... and its tile's vectors along a row (x 100: rows)


def depthwise_tile(out_h: int, out_w: int, lanes: int) -> tuple[int, int, int]:
    """(vector width, vectors along a row, rows) of a depthwise convolution's output tile: the vector
    (the target's, half or a quarter of it, at least 4 lanes) that computes a row in the fewest
    lanes, a lane costing at least an eighth of a vector op (AVX-512 on zen 4 runs as two 8-lane
    halves); then up to 8 accumulators of vectors x rows wasting the fewest padded pixels."""
    widths = sorted({v for v in (lanes, lanes // 2, lanes // 4) if v >= 4} or {4}, reverse=True)
    vector = min(widths, key=lambda v: -(-out_w // v) * max(v, 8))
    needed = -(-out_w // vector)
    vectors = min(range(min(needed, ACCUMULATORS), 0, -1), key=lambda k: -(-needed // k) * k)
    rows = min(range(min(ACCUMULATORS // vectors, out_h), 0, -1), key=lambda k: -(-out_h // k) * k)
    return vector, vectors, rows


def _depthwise_conv2d(data, w, strides, padding, dilation, vector: int, vectors: int, rows: int):
    """NCHW depthwise ``conv2d`` (groups = channels = filters). Each channel's input is first copied
    into a zero-padded plane split by column phase (``x % stride``: a stride-2 convolution reads
    every tap as a contiguous vector of one phase instead of a gather), large enough that the output
    is computed in whole tiles (``rows`` x ``vectors`` vectors of ``vector`` pixels) without bounds
    checks; the extra pixels are cut afterwards."""
    from tvm import te, tirx

    batch, channels, height, width = data.shape
    height, width = int(height), int(width)
    kh, kw = int(w.shape[2]), int(w.shape[3])
    (top, left, bottom, right), (sh, sw), (dh, dw) = ([int(v) for v in t] for t in (padding, strides, dilation))
    out_h = (height + top + bottom - (kh - 1) * dh - 1) // sh + 1
    out_w = (width + left + right - (kw - 1) * dw - 1) // sw + 1
    whole_w = -(-out_w // (vector * vectors)) * vector * vectors
    whole_h = -(-out_h // rows) * rows
    plane_rows, plane_cols = (whole_h - 1) * sh + (kh - 1) * dh + 1, whole_w + (kw - 1) * dw // sw

    def padded(n, c, phase, y, x):
        col = x * sw + phase - left
        return tirx.if_then_else(tirx.all(y >= top, y < height + top, col >= 0, col < width),
                                 data[n, c, tirx.min(y - top, height - 1), tirx.max(tirx.min(col, width - 1), 0)],
                                 tirx.const(0.0, "float32"))

    plane = te.compute((batch, channels, sw, plane_rows, plane_cols), padded, name="pad_phases")
    r = te.reduce_axis((0, kh), name="r")
    q = te.reduce_axis((0, kw), name="q")
    tiles = te.compute(
        (batch, channels, whole_h, whole_w),
        lambda n, c, y, x: te.sum(plane[n, c, (q * dw) % sw, y * sh + r * dh, x + (q * dw) // sw] * w[c, 0, r, q],
                                  axis=[r, q]),
        name="depthwise_conv2d", attrs={DEPTHWISE: vector, DEPTHWISE_TILE: vectors + 100 * rows})
    return te.compute((batch, channels, out_h, out_w), lambda n, c, y, x: tiles[n, c, y, x],
                      name="depthwise_conv2d_nchw")


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
        return float32(var, 2) and all(_static(d) is not None for d in var.ty.shape.values)

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
            filters, channels, kh, kw = (_static(d) for d in w_ty.shape.values)
            _, x_channels, height, width = (_static(d) for d in x_ty.shape.values)
            if None in (filters, channels, kh, kw, height, width):
                return None
            padding, strides, dilation = ([int(v) for v in t] for t in (a.padding, a.strides, a.dilation))
            out_h = (height + padding[0] + padding[2] - (kh - 1) * dilation[0] - 1) // strides[0] + 1
            out_w = (width + padding[1] + padding[3] - (kw - 1) * dilation[1] - 1) // strides[1] + 1
            if int(a.groups) == filters == x_channels and channels == 1:
                depthwise.append(w)
                return self.builder_.call_te(_depthwise_conv2d, data, w, strides, padding, dilation,
                                             *depthwise_tile(out_h, out_w, lanes),
                                             primfunc_name_hint="depthwise_conv2d")
            if int(a.groups) != 1 or x_channels != channels:
                return None
            # Whole vectors of output channels (or half a vector: 8 with AVX-512): a 24- or 30-wide
            # block (mobilenet's 72 and 120 filters with AVX-512) ran 2-4x slower than the unpacked
            # schedule, 8-wide blocks about as fast. Other counts (Mask R-CNN's 91 classes) are
            # padded with zero filters up to a whole vector.
            block = next((b for b in (2 * lanes, lanes, lanes // 2) if filters % b == 0 and b >= 4), lanes)
            packed = self.builder_.emit(self.builder_.call_te(_pack_conv_weight, w, block,
                                                             primfunc_name_hint="pack_conv_weight"))
            rewritten.append(w)
            return self.builder_.call_te(_packed_conv2d, data, packed, filters, strides, padding, dilation,
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
            channels, filters, kh, kw = (_static(d) for d in w_ty.shape.values)
            batch, x_channels, height, width = x_ty.shape.values
            height, width = _static(height), _static(width)
            if (None in (channels, filters, kh, kw, height, width) or _static(x_channels) != channels
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
            panel = _largest_divisor(filters * kh * kw, 2 * lanes)
            packed = bb.emit(bb.call_te(_pack_weight, matrix, panel, False, primfunc_name_hint="pack_weight"))
            taps = bb.emit(bb.call_te(_packed_matmul, pixels, packed, packed_rows(lanes),
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
            k_dim, n_dim = [_static(d) for d in w.ty.shape.values][::-1 if transposed else 1]
            if _static(x_info.shape.values[-1]) != k_dim:
                return call
            panel = _largest_divisor(n_dim, 2 * lanes)
            packed = self.builder_.emit(self.builder_.call_te(_pack_weight, w, panel, transposed,
                                                             primfunc_name_hint="pack_weight"))
            rewritten.append(w)
            return self.builder_.call_te(_packed_matmul, x, packed, packed_rows(lanes),
                                         primfunc_name_hint="matmul_packed")

    packer = Packer(mod)
    new_main = packer.visit_expr(main)
    if not rewritten and not folded and not depthwise:
        return mod, 0
    mod = packer.builder_.get()
    mod[mod.get_global_var("main")] = new_main
    T = relax.transform
    mod = tvm.transform.Sequential([T.DeadCodeElimination(), T.LiftTransformParams()])(mod)
    return mod, len(rewritten) + folded


def _is_packed_matmul(block) -> bool:
    from tvm import tirx

    kinds = [it.iter_type for it in block.iter_vars]
    return (PACKED in block.annotations and len(kinds) >= 3 and kinds[-1] == tirx.IterVar.CommReduce
            and all(k == tirx.IterVar.DataPar for k in kinds[:-1]))


def packed_rows(lanes: int) -> int:
    """Rows of the packed matmul's register tile, two vectors wide: 6 x 2 accumulators leave
    registers for two weight vectors and a broadcast with 16 vector registers, and the tile
    (768 bytes on AVX-512) stays under TVM's 1 KiB limit for stack buffers (above it the tile goes
    to a heap workspace that LLVM cannot keep in registers: 8 rows ran at 40% of 6)."""
    return 6


def schedule_packed_matmul(func, lanes: int = 8):
    """A schedule for a matmul that reads its weight in panels (``pack_weights``), else None."""

    def body(sch, blocks, position):
        main = blocks[position]
        annotations = sch.get(main).annotations
        panel, rows = int(annotations[PACKED]), int(annotations[PACKED_ROWS])
        for producer in blocks[:position]:
            sch.compute_inline(producer)
        *batch, i, j, k = sch.get_loops(main)
        io, ii = sch.split(i, [None, rows])
        jo, ji = sch.split(j, [None, panel])
        sch.reorder(*batch, jo, io, k, ii, ji)
        sch.parallel(sch.fuse(*batch, jo) if batch else jo)
        writeback, *consumers = blocks[position + 1:]
        _register_tile(sch, main, io, ii, ji, k, consumers, writeback=writeback)

    return _schedule_with(func, _is_packed_matmul, body)


def schedule_packed_conv2d(func, lanes: int = 8):
    """A schedule for a convolution on channel-blocked weights (``pack_weights``), else None."""

    def body(sch, blocks, position):
        main = blocks[position]
        annotations = sch.get(main).annotations
        block, pixels = int(annotations[PACKED_CONV]), int(annotations[PACKED_ROWS])
        n, y, x, f, c, r, q = sch.get_loops(main)
        xo, xi = sch.split(x, [None, pixels])
        fo, fi = sch.split(f, [None, block])
        sch.reorder(n, fo, y, xo, c, r, q, xi, fi)
        sch.parallel(sch.fuse(n, fo, y))
        writeback, *consumers = blocks[position + 1:]
        _register_tile(sch, main, xo, xi, fi, c, consumers, writeback=writeback, vectorize_writeback=False)
        # The write-back (a tile's channels x pixels, epilogue included) unrolled over channels, its
        # pixels as one vector where no tile is cut at the row's end: mobilenet_v3_large znver4 ran
        # 8.7 ms against 9.5 with the scalar loop nest (one thread, side by side).
        channels_loop, pixels_loop = sch.get_loops(writeback)[-2:]
        sch.unroll(channels_loop)
        whole = int(sch.get(main).writes[0].source.shape[2])
        out_w = int(sch.get(writeback).writes[0].source.shape[3])
        if whole == out_w:
            sch.vectorize(pixels_loop)
        else:
            sch.unroll(pixels_loop)
        for producer in blocks[:position]:  # padding: its own loop nest, in parallel
            sch.parallel(sch.fuse(*sch.get_loops(producer)[:2]))

    return _schedule_with(func, lambda block: PACKED_CONV in block.annotations, body)


def schedule_depthwise_conv2d(func, lanes: int = 8):
    """A schedule for a depthwise convolution (``_depthwise_conv2d``), else None: channels in
    parallel, each channel's padded plane made under its channel loop (it stays in cache for the
    taps that read it), a tile of rows x vectors accumulated in registers over the taps, the
    epilogue folded into the tile's write-back."""

    def body(sch, blocks, position):
        main = blocks[position]
        annotations = sch.get(main).annotations
        vector, tile = int(annotations[DEPTHWISE]), int(annotations[DEPTHWISE_TILE])
        vectors, rows = tile % 100, tile // 100
        n, c, y, x, r, q = sch.get_loops(main)
        yo, yi = sch.split(y, [None, rows])
        xo, xv, xl = sch.split(x, [None, vectors, vector])
        sch.reorder(n, c, yo, xo, r, q, yi, xv, xl)
        channel = sch.fuse(n, c)
        sch.parallel(channel)
        writeback, *consumers = blocks[position + 1:]
        # Whole tiles (no cut at the edges) let the write-back and epilogue run on vectors too.
        whole = [int(d) for d in sch.get(main).writes[0].source.shape[2:]]
        out = [int(d) for d in sch.get(writeback).writes[0].source.shape[2:]]
        _register_tile(sch, main, xo, yi, xl, r, consumers, writeback=writeback, vectorize_writeback=whole == out)
        sch.unroll(xv)
        sch.unroll(q)
        for producer in blocks[:position]:  # the padded plane: made per channel, under its loop
            sch.compute_at(producer, channel)

    return _schedule_with(func, lambda block: DEPTHWISE in block.annotations, body)


def _is_plane_sum(block) -> bool:
    """Whether ``block`` sums its input over the two trailing axes, ``S[n, c, ...] += X[n, c, h, w]``
    (a global average pool's sum: ``mean`` over H and W, keepdims or not)."""
    from tvm import tirx

    iters = list(block.iter_vars)
    kinds = [it.iter_type for it in iters]
    if (len(iters) < 4 or kinds[-2:] != [tirx.IterVar.CommReduce] * 2
            or any(k != tirx.IterVar.DataPar for k in kinds[:-2]) or len(block.reads) != 1):
        return False
    read = [r.min for r in block.reads[0].region]
    spatial = [it.var for it in iters[:-2]][:len(read) - 2]
    return (_same_vars(read, spatial + [iters[-2].var, iters[-1].var])
            and isinstance(block.body, tirx.BufferStore) and isinstance(block.body.value, tirx.Add))


def schedule_plane_sum(func, lanes: int = 8):
    """A schedule for a sum over H and W (squeeze-and-excitation's global average pool), else None:
    channels in parallel, each channel's plane summed in a vector of partial sums (``rfactor``),
    then across the vector. Unscheduled, mobilenet_v3_large's ran one scalar add at a time."""

    def body(sch, blocks, position):
        main = blocks[position]
        *spatial, h, w = sch.get_loops(main)
        plane = _static(sch.get(h).extent) * _static(sch.get(w).extent)
        width = _largest_divisor(plane, lanes)
        if width < 2:
            raise ValueError("no vector divides the plane")
        ko, ki = sch.split(sch.fuse(h, w), [None, width])
        partial = sch.rfactor(ki, len(spatial))
        sch.vectorize(sch.get_loops(partial)[-1])
        outer = sch.fuse(*sch.get_loops(partial)[:len(spatial)])
        sch.parallel(outer)
        sch.reverse_compute_at(main, outer)
        for consumer in blocks[position + 1:]:  # the division by H x W
            sch.reverse_compute_at(consumer, outer)
        for producer in blocks[:position]:
            sch.compute_inline(producer)

    return _schedule_with(func, _is_plane_sum, body)


PARALLEL_MIN_ITERATIONS = 1 << 14  # below this a kernel's threads would cost more than they save


def schedule_parallel(func, lanes: int = 8):
    """The rule of last resort, else None: each block's leading spatial loops fused and run in
    parallel, for kernels with enough work (a symbolic extent counts as enough). Unscheduled
    kernels ran on one thread whatever ``num_threads`` said: in Mask R-CNN 300 on znver4 that was
    RoIAlign (360 ms of 2.5 s), the mask head's bias adds and ReLUs, the mask sigmoid and the
    transposes (``buildsys profile``)."""
    from tvm import s_tir
    from tvm.s_tir.dlight.analysis import normalize_prim_func

    sch = s_tir.Schedule(func)
    infos = normalize_prim_func(sch)
    if not infos:
        return None
    changed = False
    for info in infos:
        lead = []
        for it in info.iters:
            if it.kind != "S":
                break
            lead.append(it)
        if not lead:
            continue
        extents = [it.dom for it in info.iters]
        static = [e for e in extents if isinstance(e, int)]
        if len(static) == len(extents) and _product(static) < PARALLEL_MIN_ITERATIONS:
            continue
        try:
            outer = sch.fuse(*[it.loop_rv for it in lead]) if len(lead) > 1 else lead[0].loop_rv
            sch.parallel(outer)
        except Exception:  # noqa: BLE001 - a block this rule cannot take stays serial
            continue
        changed = True
    return sch.mod["main"].with_attr("tirx.is_scheduled", True) if changed else None


def _product(values) -> int:
    result = 1
    for v in values:
        result *= v
    return result


def apply_default_schedules(mod):
    """Schedule every unscheduled matmul-like kernel in ``mod``; returns (mod, names scheduled)."""
    from tvm import tirx

    from tvm.target import Target

    lanes = vector_lanes(Target.current(allow_none=True))
    scheduled = []
    updates = {}
    for gv, func in mod.functions_items():
        if not isinstance(func, tirx.PrimFunc) or int(func.attrs.get("tirx.is_scheduled", 0) if func.attrs else 0):
            continue
        new = schedule_packed_matmul(func, lanes)
        if new is None:
            new = schedule_packed_conv2d(func, lanes)
        if new is None:
            new = schedule_depthwise_conv2d(func, lanes)
        if new is None:
            new = schedule_plane_sum(func, lanes)
        if new is None:
            new = schedule_matmul(func, lanes)
        if new is None:
            new = schedule_conv2d(func, lanes)
        if new is None:
            new = schedule_parallel(func, lanes)
        if new is not None:
            updates[gv] = new
            scheduled.append(gv.name_hint)
    for gv, func in updates.items():
        mod[gv] = func
    return mod, sorted(scheduled)
