"""Depthwise convolutions (MobileNet): channels in parallel, each channel's input copied into a
zero-padded plane split by column phase (a stride-2 tap reads a contiguous vector), up to 8
vectors of output accumulated in registers over the taps, the epilogue in the write-back. With the
generic NCHW schedule they had taken 35% of mobilenet_v3_large on znver4; on its shapes (kernel
bench, 2 threads, znver4, busy machine) 3x3 @56 ran at 75 GFLOP/s against 33, 3x3 stride 2 @112 18
against 9, 5x5 stride 2 @56 28 against 15, 5x5 @7 59 against 42.
"""

from __future__ import annotations

from buildsys.compiler.schedules.common import ACCUMULATORS, register_tile, schedule_with

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


def depthwise_conv2d(data, w, strides, padding, dilation, vector: int, vectors: int, rows: int):
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


def schedule_depthwise_conv2d(func, lanes: int = 8):
    """A schedule for a depthwise convolution (``depthwise_conv2d``), else None: channels in
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
        register_tile(sch, main, xo, yi, xl, r, consumers, writeback=writeback, vectorize_writeback=whole == out)
        sch.unroll(xv)
        sch.unroll(q)
        for producer in blocks[:position]:  # the padded plane: made per channel, under its loop
            sch.compute_at(producer, channel)

    return schedule_with(func, lambda block: DEPTHWISE in block.annotations, body)
