"""NCHW convolutions: the unpacked schedule, and the kernel on channel-blocked weights
([f / block, c, r, q, block], packed at build time by ``packing.pack_weights``) whose tile is 6 (AVX-512:
up to 7) output pixels x two vectors of channels: resnet18's 3x3 convolutions ran at 210-225
GFLOP/s on two AVX-512 threads against 80-150 unpacked.
"""

from __future__ import annotations

from buildsys.compiler.schedules.common import (ACCUMULATORS, PACKED_ROWS, largest_divisor, register_tile, same_vars,
                                                   schedule_with, static_extent)

CONV_FILTERS = 4  # convolution: output channels of the tile; pixels: a divisor of the width
PACKED_CONV = "buildsys.packed_conv2d"  # block annotation of the convolution on channel-blocked weights


def conv_tile_pixels(width: int, lanes: int) -> int:
    """Pixels of a convolution tile row: a divisor of the width, one vector if one fills more than
    half a vector, else up to two."""
    one = largest_divisor(width, lanes)
    return one if one * 2 > lanes else largest_divisor(width, 2 * lanes)


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
    return (same_vars([e.min for e in block.writes[0].region], [n, f, y, x])
            and same_vars([e.min for e in block.reads[1].region], [f, c, r, q]))


def schedule_conv2d(func, lanes: int = 8):
    """A schedule for an NCHW convolution kernel (padding before it, elementwise work after it)."""

    def body(sch, blocks, position):
        main = blocks[position]
        n, f, y, x, c, r, q = sch.get_loops(main)
        filters, width = static_extent(sch.get(f).extent), static_extent(sch.get(x).extent)
        if filters is None or width is None:
            raise ValueError("a symbolic filter count or width")
        fb, xb = largest_divisor(filters, CONV_FILTERS), conv_tile_pixels(width, lanes)
        rows = max(1, ACCUMULATORS // (fb * -(-xb // lanes)))  # output rows in the tile
        fo, fi = sch.split(f, [None, fb])
        xo, xi = sch.split(x, [None, xb])
        yo, yi = sch.split(y, [None, rows])
        sch.reorder(n, fo, yo, xo, c, r, q, yi, fi, xi)
        sch.parallel(sch.fuse(n, fo))
        sch.unroll(yi)
        register_tile(sch, main, xo, fi, xi, c, blocks[position + 1:])
        for producer in blocks[:position]:  # padding: its own loop nest, in parallel
            sch.parallel(sch.fuse(*sch.get_loops(producer)[:2]))

    return schedule_with(func, _is_conv2d, body)


def pack_conv_weight(w, block: int):
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


def packed_conv2d(data, packed, filters: int, strides, padding, dilation, pixels: int):
    """NCHW ``conv2d`` reading channel-blocked weights (``pack_conv_weight``). Output tiles are
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
        register_tile(sch, main, xo, xi, fi, c, consumers, writeback=writeback, vectorize_writeback=False)
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

    return schedule_with(func, lambda block: PACKED_CONV in block.annotations, body)
