"""What every default schedule shares: the target's vector width, the register budget of a tile,
finding the one block a rule is for, applying a rule (``schedule_with``: a rule that cannot
apply leaves the kernel as it was) and the register tile with its write-back.

Output tiles are sized for the target's vector registers (16 of them without AVX-512): about 8
accumulators, the rest for loads and broadcasts. Measured on 3x3 convolutions (znver3): a
4-filter x 2-row x 7-pixel tile (one AVX2 vector a row) ran 1.3-2x faster than 4 x 14 pixels.
"""

from __future__ import annotations

ACCUMULATORS = 8  # vector registers the tile may hold
PACKED_ROWS = "buildsys.packed_matmul_rows"  # block annotation: rows (pixels) of a packed register tile


def largest_divisor(n: int, at_most: int) -> int:
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


def same_vars(exprs, wanted) -> bool:
    """Whether ``exprs`` are exactly the variables ``wanted``, in order."""
    from tvm import tirx

    return exprs is not None and len(exprs) == len(wanted) and all(
        isinstance(e, tirx.Var) and e.same_as(w) for e, w in zip(exprs, wanted))


def is_one(expr) -> bool:
    from tvm import tirx
    return isinstance(expr, tirx.IntImm) and expr.value == 1


def static_extent(extent) -> int | None:
    from tvm import tirx
    return extent.value if isinstance(extent, tirx.IntImm) else None


def find_block(func, matches):
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


def schedule_with(func, matches, body):
    """``func`` with ``body(sch, blocks, position)`` applied to the one block ``matches`` accepts
    (see ``find_block``), marked scheduled; None if there is no such block or the schedule fails (a
    schedule we cannot apply leaves the kernel as it was)."""
    found = find_block(func, matches)
    if found is None:
        return None
    sch, blocks, position = found
    try:
        body(sch, blocks, position)
    except Exception:  # noqa: BLE001
        return None
    return sch.mod["main"].with_attr("tirx.is_scheduled", True)


def register_tile(sch, main, at, unrolled, vectorized, reduction, consumers, writeback=None,
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
