"""Relax -> VM executable under ``PassContext(opt_level, disabled_pass)``, with a pass trace."""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass
from typing import Mapping

from buildsys.errors import BuildError
from buildsys.config.passes import OPAQUE_DYNAMIC_PASS_NAME, PACK_PASS_NAME, PASS_NAME, TO_DATAFLOW_PASS_NAME
from buildsys.config.spec import BuildSpec
from buildsys.compiler.cross import host_transform
from buildsys.config.targets import to_tvm
from buildsys.format.target import Target


@dataclass
class CompiledModel:
    executable: object
    pass_trace: list[dict]  # [{"name": ..., "runs": n}] in first-run order
    seconds: float
    scheduled: int | None = None  # functions scheduled by tuning records (None: untuned build)
    transforms_params: bool = False  # has main_transform_params (weights prepacked at build time)
    prepack_note: str | None = None  # why weights could not be prepacked, when they could not
    default_scheduled: list[str] | None = None  # kernels given buildsys' default CPU schedule (schedules/)
    schedules_note: str | None = None  # why the default schedules were turned off, when they were
    packed_weights: int = 0  # weights transformed at build time: batch norms folded (folding.py), ops packed (schedules/)
    kernel_flops: dict[str, float | None] | None = None  # kernel -> floating-point ops per call (None: symbolic shape)
    host_transform: object | None = None  # a cross build's main_transform_params, built for the build host
    device: dict | None = None  # a CUDA build's device code: architectures, PTX, images (compiler/cuda.py)


def _pass_recorder():
    import tvm

    @tvm.instrument.pass_instrument
    class PassRecorder:
        """Records the name of every pass that runs (disabled ones never do)."""

        def __init__(self):
            self.counts: Counter = Counter()

        def run_before_pass(self, _mod, info):
            self.counts[info.name] += 1

    return PassRecorder()


def _pass_trace(recorder, disabled_passes) -> list[dict]:
    """The manifest's pass trace ([{"name", "runs"}] in first-run order), after checking that no
    disabled pass ran: that would mean PassContext ignored the request; never publish it silently."""
    leaked = [p for p in disabled_passes if p in recorder.counts]
    if leaked:
        raise BuildError(f"disabled passes ran anyway: {leaked}", stage="compile")
    return [{"name": name, "runs": runs} for name, runs in recorder.counts.items()]


def kernel_flops(mod) -> dict[str, float | None]:
    """Floating-point operations of one call of each kernel (TIR function) of ``mod``, by the name the
    VM calls it by; None where a shape is only known at run time. Counted on the kernels before
    scheduling, by TVM's estimate (loop extents x operations): a packed convolution's compute
    rounds a row up to whole tiles, so on small odd maps (resnet18 at 64 px: 2x2) it counts the
    tile it computes, up to twice the useful work. ``buildsys profile`` divides them by measured times."""
    import tvm
    from tvm import tirx
    from tvm.s_tir.analysis import estimate_tir_flops

    flops: dict[str, float | None] = {}
    dynamic = _dynamic_callees(mod)  # TVM's estimate takes a symbolic extent for 1: no figure is better
    for gvar, func in mod.functions.items():
        if not isinstance(func, tirx.PrimFunc):
            continue
        if gvar.name_hint in dynamic:
            flops[gvar.name_hint] = None
            continue
        try:
            flops[gvar.name_hint] = float(estimate_tir_flops(tvm.IRModule({"main": func})))
        except Exception:  # noqa: BLE001 - TVM refuses symbolic extents: no figure, not a failed build
            flops[gvar.name_hint] = None
    return flops


def _has_plain_blocks(mod) -> bool:
    """Whether a function's body holds bindings outside dataflow blocks (the ONNX importer writes
    ``main`` as one plain block; FuseOps fuses only inside dataflow blocks)."""
    from tvm import relax

    return any(isinstance(func, relax.Function) and isinstance(func.body, relax.SeqExpr)
               and any(not isinstance(block, relax.DataflowBlock) and len(block.bindings) > 1
                       for block in func.body.blocks)
               for func in mod.functions.values())


def _dynamic_callees(mod) -> set[str]:
    """Names of the kernels some call passes a tensor whose shape is known only at run time."""
    import tvm
    from tvm import relax

    call_tir = tvm.ir.Op.get("relax.call_tir")

    def dynamic(ty) -> bool:
        if isinstance(ty, relax.TensorType):
            values = getattr(ty.shape, "values", None)
            return values is None or any(not isinstance(d, tvm.tirx.IntImm) for d in values)
        if isinstance(ty, relax.TupleType):
            return any(dynamic(f) for f in ty.fields)
        return False

    found: set[str] = set()

    def visit(expr) -> None:
        if isinstance(expr, relax.Call) and expr.op.same_as(call_tir):
            args = expr.args[1]
            types = [a.ty for a in (args.fields if isinstance(args, relax.Tuple) else [args])] + [expr.ty]
            if any(dynamic(ty) for ty in types):
                found.add(expr.args[0].name_hint)

    for func in mod.functions.values():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func, visit)
    return found


def _legalize_passes(target, converted: list | None = None):
    """TVM's CPU legalization, fusing across plain binding blocks too.

    The ONNX route's ``main`` is one plain binding block, so FuseOps fused nothing there: every
    bias add and ReLU of a detector ran as a kernel of its own (Mask R-CNN 300 on znver4: about
    200 ms of 2.5 s in add and relu kernels, ``buildsys profile``). Such a module is turned into
    dataflow blocks first; FuseTIR then failed (``VarRemapGet(source) == nullptr``) on groups
    whose kernels take run-time shapes (the detector heads' data-dependent counts), so those
    kernels are marked opaque and stay unfused; the static ones (backbone, FPN) fuse as in the
    torch.export route. A module already in dataflow blocks is left to TVM's passes as they are.
    ``converted`` gets whether the conversion happened; without the list, TVM's passes alone (the
    build retried after a failure)."""
    import tvm
    from tvm import relax, tirx
    from tvm.relax.backend.cpu_generic import pipeline as cpu

    if converted is None:  # off: TVM's passes as they are
        return cpu.legalize_passes(target)

    @tvm.transform.module_pass(opt_level=0, name=TO_DATAFLOW_PASS_NAME)
    def to_dataflow(mod, _ctx):
        converted.append(_has_plain_blocks(mod))
        return relax.transform.ConvertToDataflow()(mod) if converted[-1] else mod

    @tvm.transform.module_pass(opt_level=0, name=OPAQUE_DYNAMIC_PASS_NAME)
    def opaque_dynamic(mod, _ctx):
        if not converted or not converted[-1]:
            return mod
        dynamic = _dynamic_callees(mod)
        for gvar, func in list(mod.functions.items()):
            if isinstance(func, tirx.PrimFunc) and gvar.name_hint in dynamic:
                mod[gvar] = func.with_attr("op_pattern", 8)  # kOpaque: FuseOps leaves it alone
        return mod

    legalize, annotate, *rest = cpu.legalize_passes(target)
    return [to_dataflow, legalize, annotate, opaque_dynamic, *rest]


def _pipeline(target, scheduled: list[str], default_schedules: bool = True, packed: list | None = None,
              flops: dict | None = None, converted: list | None = None, lifted: list | None = None):
    """TVM's CPU pipeline (relax.backend.cpu_generic) with buildsys' default schedules applied
    to the fused kernels that tuning records did not schedule (unless ``default_schedules`` is off).
    With a ``packed`` list, dense and convolution weights are first packed by a transform lifted
    into ``main_transform_params`` (the list gets the number of ops rewritten; ``lifted``, when given,
    the module right after it, for ``cross.host_transform``)."""
    import tvm
    from tvm.relax.backend.cpu_generic import pipeline as cpu

    from buildsys.compiler.schedules import apply_default_schedules, pack_weights, vector_lanes

    @tvm.transform.module_pass(opt_level=0, name=PASS_NAME)
    def schedule_pass(mod, _ctx):
        mod, names = apply_default_schedules(mod)
        scheduled.extend(names)
        return mod

    @tvm.transform.module_pass(opt_level=0, name=PACK_PASS_NAME)
    def pack_pass(mod, _ctx):
        packed.append(0)  # it ran: should the build fail from here on, it is retried without it
        mod, packed[-1] = pack_weights(mod, vector_lanes(target))
        if lifted is not None:
            lifted.append(mod)
        return mod

    @tvm.transform.module_pass(opt_level=0, name="buildsys.CPUPipeline")
    def pipeline(mod, _ctx):
        with target:
            mod = tvm.transform.Sequential(
                ([pack_pass] if default_schedules and packed is not None else [])
                + cpu.library_dispatch_passes(target) + _legalize_passes(target, converted))(mod)
            if flops is not None:  # the fused kernels before scheduling: useful work, not padded tiles
                flops.update(kernel_flops(mod))
            return tvm.transform.Sequential(
                ([schedule_pass] if default_schedules else [])
                + cpu.dataflow_lower_passes(target) + cpu.finalize_passes(target))(mod)

    return pipeline


def compile_model(mod, spec: BuildSpec, tuning_db=None) -> CompiledModel:
    """``relax.build`` under the entry's PassContext; with a tuning database, its best
    records are applied first (then the target is the database's, num-cores included)."""
    if tuning_db is None:
        return compile_for_target(mod, spec.target, spec.opt_level, spec.disabled_passes)

    def tuned(mod):
        from buildsys.compiler.tuning import apply

        return apply(mod, spec, tuning_db)

    return _compile(mod, tuning_db.target, spec.opt_level, spec.disabled_passes, tuned)


def compile_for_target(mod, target: Mapping, opt_level: int = 3, disabled_passes=()) -> CompiledModel:
    """An untuned build of ``mod`` for a normalized ``target`` (what ``compile_model`` does for an
    entry without tuning; the kernel benchmark builds its one-kernel modules this way)."""
    return _compile(mod, target, opt_level, tuple(disabled_passes), None)


def _compile(mod, target_dict: Mapping, opt_level: int, disabled_passes: tuple, tuned) -> CompiledModel:
    import tvm
    from tvm import relax

    target_dict = Target(target_dict)
    if target_dict.is_cuda:
        if tuned is not None:
            raise BuildError("tuning measures kernels on the GPU that runs them: a CUDA target cannot be tuned on "
                             "this builder (untuned entries build, with TVM's default GPU schedules)", stage="tune")
        return _compile_cuda(mod, target_dict, opt_level, disabled_passes)
    cross = target_dict.is_cross()
    if cross and tuned is not None:
        raise BuildError("tuning measures on the machine that runs the code: a target of another architecture "
                         "cannot be tuned here (untuned entries build)", stage="tune")
    target = to_tvm(target_dict)
    recorder = _pass_recorder()
    start = time.perf_counter()
    scheduled = prepack_note = schedules_note = None
    try:
        with tvm.transform.PassContext(opt_level=opt_level, disabled_pass=list(disabled_passes),
                                       instruments=[recorder]):
            if tuned is not None:
                mod, scheduled, prepack_note = tuned(mod)
            default_scheduled: list[str] = []
            # Tuned builds leave weights as the records expect them (their lifting is tuning.apply's).
            packed: list[int] | None = [] if tuned is None else None
            flops: dict[str, float | None] = {}
            converted: list[bool] = []  # whether plain binding blocks were made dataflow blocks
            lifted: list = []  # the module with main_transform_params lifted (a cross build runs it on the host)
            try:
                executable = relax.build(mod, target=target,
                                         relax_pipeline=_pipeline(target, default_scheduled, packed=packed,
                                                                  flops=flops, converted=converted,
                                                                  lifted=lifted if cross else None))
            except Exception as exc:  # noqa: BLE001 - retried without them below, or raised
                if not default_scheduled and not packed and not any(converted):
                    raise
                # A default schedule TVM cannot lower (or a weight rewrite, or a fusion across plain
                # blocks, it cannot build) must not cost the build: the kernels stay unscheduled, the
                # weights as they were and plain blocks unfused (slow, correct), and the manifest and
                # the run's log say why.
                schedules_note = (f"default schedules off: relax.build failed with them "
                                  f"({type(exc).__name__}: {str(exc).splitlines()[0][:300]})")
                logging.getLogger(__name__).warning("%s; building again without them", schedules_note)
                default_scheduled, packed = [], None
                flops.clear()
                lifted.clear()
                executable = relax.build(mod, target=target,
                                         relax_pipeline=_pipeline(target, [], default_schedules=False, flops=flops))
    except BuildError:
        raise
    except Exception as exc:
        raise BuildError(f"relax.build failed: {type(exc).__name__}: {str(exc)[-2000:]}", stage="compile") from None
    transform = host_transform(lifted[-1]) if cross and sum(packed or []) else None
    seconds = time.perf_counter() - start
    trace = _pass_trace(recorder, disabled_passes)
    return CompiledModel(executable=executable, pass_trace=trace, seconds=seconds, scheduled=scheduled,
                         transforms_params=tuned is not None or bool(sum(packed or [])),
                         packed_weights=sum(packed or []), prepack_note=prepack_note,
                         default_scheduled=default_scheduled, schedules_note=schedules_note,
                         kernel_flops=flops, host_transform=transform)


def _compile_cuda(mod, target_dict: Target, opt_level: int, disabled_passes: tuple) -> CompiledModel:
    """TVM's CUDA pipeline (its default GPU schedules, dlight) with device code for every
    architecture of the target, compiled here whether or not this machine has a GPU
    (``compiler/cuda.py``). A kernel no default schedule covers fails the build, named."""
    import tvm
    from tvm import relax

    from buildsys.compiler import cuda

    stub = cuda.ensure_device_codegen()
    target = to_tvm(target_dict)
    compiler = cuda.DeviceCompiler(target_dict.cuda_archs, target_dict.ptx)
    scheduled: dict[str, str] = {}  # kernel -> the dlight rule that scheduled it
    recorder = _pass_recorder()
    start = time.perf_counter()
    try:
        with tvm.transform.PassContext(opt_level=opt_level, disabled_pass=list(disabled_passes),
                                       instruments=[recorder]), target, compiler.installed():
            executable = relax.build(mod, target=target, relax_pipeline=cuda.gpu_pipeline(target, scheduled))
    except BuildError:
        raise
    except Exception as exc:
        logging.getLogger(__name__).error("relax.build for CUDA failed", exc_info=True)  # TVM's stack, to the log
        raise BuildError(cuda.explain_failure(exc), stage="compile") from None
    if not compiler.images:
        raise BuildError("the CUDA build made no device code (TVM kept CUDA source only): its CUDA runtime did not "
                         "load", stage="compile")
    seconds = time.perf_counter() - start
    trace = _pass_trace(recorder, disabled_passes)
    rules = Counter(scheduled.values())
    return CompiledModel(executable=executable, pass_trace=trace, seconds=seconds, default_scheduled=[],
                         schedules_note="TVM's default GPU schedules (dlight), kernel by kernel",
                         device={**compiler.describe(), "driver_stub": stub, "schedules": dict(sorted(rules.items()))})
