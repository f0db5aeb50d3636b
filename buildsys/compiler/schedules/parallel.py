"""The rule of last resort: kernels no other rule takes run their leading loops on every thread."""

from __future__ import annotations

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
