"""Matmuls: the unpacked schedule (any matmul, its right-hand side read as it is) and the packed
one, whose weight ``packing.pack_weights`` stored in [n / panel, k, panel] panels two vectors wide
at build time, computed by a 6-row x two-vector register tile over the panels.

On the box head of an R-CNN (1000x12544x1024, one thread, 2026-12-01) the packed kernel ran at 111
GFLOP/s with AVX-512 (104 with AVX2) where numpy's OpenBLAS ran 102 and the unpacked schedule 31
(28); unscheduled, that kernel had taken 77% of a Mask R-CNN inference (README: Default schedules).
"""

from __future__ import annotations

from buildsys.compiler.schedules.common import (PACKED_ROWS, largest_divisor, is_one, register_tile, same_vars,
                                                   schedule_with, static_extent)

ROWS = 4  # matmul: rows of the output tile; columns: a divisor of N up to two vectors
MAX_DEPTH = 256  # matmul reduction block: this many rows of the right-hand matrix stay in cache
PACKED = "buildsys.packed_matmul"  # block annotation of the matmul that reads a packed weight: its panel width


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
        return [r.min for r in region.region] if all(is_one(r.extent) for r in region.region) else None

    reads = [indices(r) for r in block.reads]
    if not same_vars(indices(block.writes[0]), batch + [i, j]):
        return False
    a, b = (reads[0], reads[1]) if same_vars(reads[0], batch + [i, k]) else (reads[1], reads[0])
    if not (same_vars(a, batch + [i, k]) and (same_vars(b, batch + [k, j]) or same_vars(b, [k, j]))):
        return False
    return isinstance(block.body, tirx.BufferStore) and isinstance(block.body.value, tirx.Add)


def schedule_matmul(func, lanes: int = 8):
    """A schedule for ``func`` if it is a matmul (optionally with elementwise work after it
    in the same kernel), else None."""

    def body(sch, blocks, position):
        main = blocks[position]
        for producer in blocks[:position]:  # inline what feeds it (a transpose, a cast)
            sch.compute_inline(producer)
        loops = sch.get_loops(main)
        if len(loops) != len(sch.get(main).iter_vars):
            raise ValueError("the loops are not the block's iterators")
        *batch, i, j, k = loops
        n, depth = static_extent(sch.get(j).extent), static_extent(sch.get(k).extent)
        if n is None or depth is None:
            raise ValueError("a symbolic column count or depth")
        io, ii = sch.split(i, [None, ROWS])
        jo, ji = sch.split(j, [None, largest_divisor(n, 2 * lanes)])
        ko, ki = sch.split(k, [None, largest_divisor(depth, MAX_DEPTH)])
        sch.reorder(*batch, jo, io, ko, ki, ii, ji)
        sch.parallel(sch.fuse(*batch, jo) if batch else jo)
        register_tile(sch, main, io, ii, ji, ko, blocks[position + 1:])

    return schedule_with(func, _is_matmul, body)


def pack_weight(w, panel: int, transposed: bool):
    """``w`` ([k, n], or [n, k] when ``transposed``) as [n / panel, k, panel] panels."""
    from tvm import te

    n, k = (w.shape[0], w.shape[1]) if transposed else (w.shape[1], w.shape[0])
    return te.compute((n // panel, k, panel),
                      lambda jo, kk, ji: w[jo * panel + ji, kk] if transposed else w[kk, jo * panel + ji],
                      name="pack_weight")


def packed_matmul(x, packed, rows: int):
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


def packed_rows(lanes: int) -> int:
    """Rows of the packed matmul's register tile, two vectors wide: 6 x 2 accumulators leave
    registers for two weight vectors and a broadcast with 16 vector registers, and the tile
    (768 bytes on AVX-512) stays under TVM's 1 KiB limit for stack buffers (above it the tile goes
    to a heap workspace that LLVM cannot keep in registers: 8 rows ran at 40% of 6)."""
    return 6


def _is_packed_matmul(block) -> bool:
    from tvm import tirx

    kinds = [it.iter_type for it in block.iter_vars]
    return (PACKED in block.annotations and len(kinds) >= 3 and kinds[-1] == tirx.IterVar.CommReduce
            and all(k == tirx.IterVar.DataPar for k in kinds[:-1]))


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
        register_tile(sch, main, io, ii, ji, k, consumers, writeback=writeback)

    return schedule_with(func, _is_packed_matmul, body)
