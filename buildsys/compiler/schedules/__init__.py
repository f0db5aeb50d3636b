"""Default CPU schedules for what tuning cannot reach.

TVM's CPU pipeline lowers a kernel without tuning records as the plain loop nest that legalization
wrote. For a matmul that means the reduction innermost and the right-hand matrix read down its
columns: the box head of an R-CNN detector (up to 1000 proposals x 12544 -> 1024, a row count only
known at run time, so MetaSchedule cannot tune it) spent 77% of a Mask R-CNN inference there (perf,
see README: Default schedules). Every unscheduled kernel of a family below, static or dynamic, gets
a cache-blocked, register-tiled, vectorized and parallel schedule; kernels not recognised are left
as they were. One file per kernel family, each its TE kernel (where it has one) and its schedule
rule, every rule written the same way (``common.schedule_with``):

- ``matmul``: matmuls, unpacked or reading weights packed in panels;
- ``conv2d``: NCHW convolutions, unpacked or on channel-blocked weights;
- ``depthwise``: depthwise convolutions (MobileNet);
- ``reduction``: sums over a feature map (global average pools);
- ``parallel``: the last resort, any kernel's leading loops on every thread;
- ``packing``: the build-time rewrite that packs the weights those kernels read;
- ``common``: vector width, tile budget, finding the block, the register tile.

``benchmarks/kernels.py`` measures every kernel against numpy and torch.
"""

from __future__ import annotations

from buildsys.compiler.schedules.common import vector_lanes
from buildsys.compiler.schedules.conv2d import schedule_conv2d, schedule_packed_conv2d
from buildsys.compiler.schedules.depthwise import schedule_depthwise_conv2d
from buildsys.compiler.schedules.matmul import schedule_matmul, schedule_packed_matmul
from buildsys.compiler.schedules.packing import pack_weights
from buildsys.compiler.schedules.parallel import schedule_parallel
from buildsys.compiler.schedules.reduction import schedule_plane_sum

__all__ = ["RULE_NAME", "RULES", "apply_default_schedules", "pack_weights", "vector_lanes"]

RULE_NAME = "buildsys.CPUMatmul/7"  # recorded in the manifest; bump when a schedule changes

# In order: the first rule that takes a kernel schedules it (each returns None for a kernel it is not for).
RULES = (schedule_packed_matmul, schedule_packed_conv2d, schedule_depthwise_conv2d, schedule_plane_sum,
         schedule_matmul, schedule_conv2d, schedule_parallel)


def apply_default_schedules(mod):
    """Schedule every unscheduled kernel in ``mod`` with the first rule that takes it; returns
    (mod, names scheduled)."""
    from tvm import tirx
    from tvm.target import Target

    lanes = vector_lanes(Target.current(allow_none=True))
    updates = {}
    for gv, func in mod.functions_items():
        if not isinstance(func, tirx.PrimFunc) or int(func.attrs.get("tirx.is_scheduled", 0) if func.attrs else 0):
            continue
        new = next((found for rule in RULES if (found := rule(func, lanes)) is not None), None)
        if new is not None:
            updates[gv] = new
    for gv, func in updates.items():
        mod[gv] = func
    return mod, sorted(gv.name_hint for gv in updates)
