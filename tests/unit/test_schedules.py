"""buildsys' default CPU schedule for matmuls: which kernels it takes, and that they still compute the same."""

import numpy as np
import pytest

from tests.fixtures.capabilities import need_module, runnable_here

tvm = need_module("tvm", "make venv (the build extra)")

from tvm import relax  # noqa: E402

from buildsys.compiler.compile import _pipeline  # noqa: E402
from buildsys.compiler.schedules import apply_default_schedules  # noqa: E402
from buildsys.compiler.schedules.matmul import schedule_matmul  # noqa: E402


def _module(k: int, n: int, epilogue: bool, transpose_b: bool = False):
    """main(x: [rows, k] with rows only known at run time, w, b) -> matmul (+ bias, relu)."""
    bb = relax.BlockBuilder()
    rows = tvm.tirx.Var("rows", "int64")
    x = relax.Var("x", relax.TensorType([rows, k], "float32"))
    w = relax.Var("w", relax.TensorType([n, k] if transpose_b else [k, n], "float32"))
    b = relax.Var("b", relax.TensorType([n], "float32"))
    with bb.function("main", [x, w, b]):
        with bb.dataflow():
            y = bb.emit(relax.op.matmul(x, relax.op.permute_dims(w) if transpose_b else w))
            if epilogue:
                y = bb.emit(relax.op.nn.relu(relax.op.add(y, b)))
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    return bb.get()


def _legalized(mod):
    from tvm.relax.backend.cpu_generic import pipeline as cpu

    target = tvm.target.Target("llvm")
    with target:
        return tvm.transform.Sequential(cpu.legalize_passes(target))(mod)


def _run(mod, rows: int, k: int, n: int, transpose_b: bool = False):
    target = tvm.target.Target("llvm")
    scheduled: list[str] = []
    vm = relax.VirtualMachine(relax.build(mod, target=target, relax_pipeline=_pipeline(target, scheduled)), tvm.cpu())
    rng = np.random.default_rng(rows)
    x = rng.standard_normal((rows, k), dtype=np.float32)
    w = rng.standard_normal((n, k) if transpose_b else (k, n), dtype=np.float32)
    b = rng.standard_normal(n, dtype=np.float32)
    out = vm["main"](*(tvm.runtime.tensor(a) for a in (x, w, b))).numpy()
    return out, x, (w.T if transpose_b else w), b, scheduled


@pytest.mark.parametrize("k, n", [(256, 64), (96, 91)])  # 91: no vector width divides it
@pytest.mark.parametrize("rows", [0, 1, 7, 130])  # a detector's proposal count: any, none included
def test_a_dynamic_row_count_matmul_is_scheduled_and_computes_the_same(rows, k, n):
    out, x, w, _, scheduled = _run(_module(k, n, epilogue=False), rows, k, n)
    assert scheduled == ["matmul"]
    assert out.shape == (rows, n)
    np.testing.assert_allclose(out, x @ w, rtol=1e-4, atol=1e-4)


def test_elementwise_work_after_the_matmul_is_kept_and_correct():
    mod = _module(128, 48, epilogue=True)
    fused = _legalized(mod)
    names = [gv.name_hint for gv, f in fused.functions_items() if isinstance(f, tvm.tirx.PrimFunc)]
    out, x, w, b, scheduled = _run(mod, 33, 128, 48)
    assert scheduled and set(scheduled) <= set(names)
    np.testing.assert_allclose(out, np.maximum(x @ w + b, 0), rtol=1e-4, atol=1e-4)


def test_what_it_does_not_recognise_is_left_alone():
    fused = _legalized(_module(64, 32, epilogue=True))
    _, names = apply_default_schedules(fused)
    add_relu = [f for gv, f in fused.functions_items()
                if isinstance(f, tvm.tirx.PrimFunc) and gv.name_hint not in names
                and "matmul" not in gv.name_hint]
    for func in add_relu:  # elementwise kernels are not matmuls
        assert schedule_matmul(func) is None
    # an already scheduled kernel (tuning records) is never touched
    scheduled = {gv.name_hint: f for gv, f in apply_default_schedules(_legalized(_module(64, 32, False)))[0]
                 .functions_items() if isinstance(f, tvm.tirx.PrimFunc)}
    assert int(scheduled["matmul"].attrs["tirx.is_scheduled"]) == 1
    again, names = apply_default_schedules(tvm.IRModule({"matmul": scheduled["matmul"]}))
    assert names == []


def test_a_transposed_right_hand_side_is_correct_either_way():
    out, x, w, _, _ = _run(_module(64, 40, epilogue=False, transpose_b=True), 9, 64, 40, transpose_b=True)
    np.testing.assert_allclose(out, x @ w, rtol=1e-4, atol=1e-4)


def _conv_module(channels: int, filters: int, size: int, kernel: int, stride: int, padding: int):
    """main(x: [batch known at run time, C, H, W], w, b) -> relu(conv2d(x, w) + b)."""
    bb = relax.BlockBuilder()
    batch = tvm.tirx.Var("batch", "int64")
    x = relax.Var("x", relax.TensorType([batch, channels, size, size], "float32"))
    w = relax.Var("w", relax.TensorType([filters, channels, kernel, kernel], "float32"))
    b = relax.Var("b", relax.TensorType([1, filters, 1, 1], "float32"))
    with bb.function("main", [x, w, b]):
        with bb.dataflow():
            y = bb.emit(relax.op.nn.conv2d(x, w, strides=stride, padding=padding))
            y = bb.emit(relax.op.nn.relu(relax.op.add(y, b)))
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    return bb.get()


@pytest.mark.parametrize("channels, filters, size, kernel, stride, padding", [
    (8, 12, 14, 3, 1, 1), (6, 16, 15, 3, 2, 1), (5, 7, 9, 1, 1, 0), (3, 8, 11, 7, 2, 3)])
@pytest.mark.parametrize("batch", [0, 1, 3])  # the mask head's batch is the detection count
def test_convolutions_are_scheduled_and_compute_the_same(batch, channels, filters, size, kernel, stride, padding):
    torch = need_module("torch", "make venv (the build extra)")
    target = tvm.target.Target("llvm")
    scheduled: list[str] = []
    mod = _conv_module(channels, filters, size, kernel, stride, padding)
    vm = relax.VirtualMachine(relax.build(mod, target=target, relax_pipeline=_pipeline(target, scheduled)), tvm.cpu())
    assert len(scheduled) == 1 and "conv2d" in scheduled[0]
    rng = np.random.default_rng(batch)
    x = rng.standard_normal((batch, channels, size, size), dtype=np.float32)
    w = rng.standard_normal((filters, channels, kernel, kernel), dtype=np.float32)
    b = rng.standard_normal((1, filters, 1, 1), dtype=np.float32)
    out = vm["main"](*(tvm.runtime.tensor(a) for a in (x, w, b))).numpy()
    expected = torch.relu(torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(w), stride=stride,
                                                     padding=padding) + torch.from_numpy(b)).numpy()
    assert out.shape == expected.shape
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)


def _hardswish_module():
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType([1, 96], "float32"))
    w = relax.Var("w", relax.TensorType([96, 40], "float32"))
    b = relax.Var("b", relax.TensorType([40], "float32"))
    with bb.function("main", [x, w, b]):
        with bb.dataflow():
            y = bb.emit(relax.op.add(relax.op.matmul(x, w), b))
            relu6 = relax.op.clip(relax.op.add(y, relax.const(3.0)), 0.0, 6.0)
            out = bb.emit_output(bb.emit(relax.op.divide(relax.op.multiply(y, relu6), relax.const(6.0))))
        bb.emit_func_output(out)
    return bb.get()


def test_an_epilogue_that_reads_an_intermediate_twice_stays_correct():
    """MobileNetV3's classifier: matmul + bias, then hardswish (x * relu6(x + 3) / 6) reads x twice."""
    target = tvm.target.Target("llvm")
    scheduled: list[str] = []
    mod = _hardswish_module()
    vm = relax.VirtualMachine(relax.build(mod, target=target, relax_pipeline=_pipeline(target, scheduled)), tvm.cpu())
    assert len(scheduled) == 1 and "matmul" in scheduled[0]
    rng = np.random.default_rng(3)
    args = [rng.standard_normal(s, dtype=np.float32) for s in ((1, 96), (96, 40), (40,))]
    out = vm["main"](*(tvm.runtime.tensor(a) for a in args)).numpy()
    y = args[0] @ args[1] + args[2]
    np.testing.assert_allclose(out, y * np.clip(y + 3, 0, 6) / 6, rtol=1e-4, atol=1e-4)


def test_a_schedule_tvm_cannot_lower_costs_speed_not_the_build(monkeypatch):
    """If a default schedule breaks lowering, the module is built again without them, and the
    manifest's note says so. The broken schedule here is the one that failed on MobileNetV3:
    each consumer of a multiply-read intermediate folded into the write-back in turn."""
    from tvm import s_tir

    from buildsys.compiler import compile as compile_module
    from buildsys.compiler import schedules
    from buildsys.config.spec import parse_specs

    def broken(mod):
        for gv, func in list(mod.functions_items()):
            if isinstance(func, tvm.tirx.PrimFunc) and "matmul" in gv.name_hint:
                sch = s_tir.Schedule(func)
                main, *consumers = sch.get_child_blocks(sch.get_sblock("root"))
                tile = sch.cache_write(main, 0, "global")
                sch.reverse_compute_at(tile, sch.get_loops(main)[0])
                for consumer in consumers:
                    try:
                        sch.reverse_compute_inline(consumer)
                    except Exception:  # noqa: BLE001
                        pass
                mod[gv] = sch.mod["main"].with_attr("tirx.is_scheduled", True)
                return mod, [gv.name_hint]
        return mod, []

    monkeypatch.setattr(schedules, "apply_default_schedules", broken)
    spec = parse_specs("models: {a: {source: 'tests.fixtures.models:tiny_cnn'}}\n"
                       "matrix: {model: [a], input_size: [16]}\n")[0]
    compiled = compile_module.compile_model(_hardswish_module(), spec)
    assert compiled.default_scheduled == []
    assert compiled.schedules_note.startswith("default schedules off: relax.build failed with them")
    args = [np.random.default_rng(5).standard_normal(s, dtype=np.float32) for s in ((1, 96), (96, 40), (40,))]
    out = relax.VirtualMachine(compiled.executable, tvm.cpu())["main"](*(tvm.runtime.tensor(a) for a in args))
    y = args[0] @ args[1] + args[2]
    np.testing.assert_allclose(out.numpy(), y * np.clip(y + 3, 0, 6) / 6, rtol=1e-4, atol=1e-4)


def test_disabled_passes_can_turn_the_default_schedules_off():
    from buildsys.compiler.compile import compile_model
    from buildsys.config.passes import PASS_NAME
    from buildsys.config.spec import parse_specs

    text = ("models: {a: {source: 'tests.fixtures.models:tiny_cnn'}}\n"
            "matrix: {model: [a], input_size: [16], disabled_passes: [[], [%s]]}\n" % PASS_NAME)
    on, off = sorted(parse_specs(text), key=lambda s: len(s.disabled_passes))
    assert off.disabled_passes == (PASS_NAME,)
    compiled = {spec: compile_model(_module(64, 32, epilogue=True), spec) for spec in (on, off)}
    assert compiled[on].default_scheduled and PASS_NAME in {p["name"] for p in compiled[on].pass_trace}
    assert compiled[off].default_scheduled == [] and PASS_NAME not in {p["name"] for p in compiled[off].pass_trace}


def test_tiles_follow_the_targets_vector_width():
    from buildsys.compiler.schedules.common import vector_lanes
    from buildsys.compiler.schedules.conv2d import conv_tile_pixels as _pixels

    lanes = {mcpu: vector_lanes(tvm.target.Target({"kind": "llvm", **({"mcpu": mcpu} if mcpu else {})}))
             for mcpu in (None, "znver3", "skylake-avx512")}
    assert lanes == {None: 4, "znver3": 8, "skylake-avx512": 16}
    # a row of the convolution tile: one vector if a divisor of the width fills half of one, else two
    assert [_pixels(w, 8) for w in (14, 75, 200, 38, 19)] == [7, 5, 8, 2, 1]
    assert [_pixels(w, 4) for w in (14, 75, 200)] == [7, 3, 4]


def _weight_module(k: int, n: int, transposed: bool, epilogue: bool, lead: tuple = ()):
    """main(x: [*lead, rows, k] with rows known at run time; weights w, b) as an imported model has it:
    ``num_input`` 1, so w and b are parameters the build may transform."""
    bb = relax.BlockBuilder()
    rows = tvm.tirx.Var("rows", "int64")
    x = relax.Var("x", relax.TensorType([*lead, rows, k], "float32"))
    w = relax.Var("w", relax.TensorType([n, k] if transposed else [k, n], "float32"))
    b = relax.Var("b", relax.TensorType([n], "float32"))
    with bb.function("main", [x, w, b], attrs={"num_input": 1}):
        with bb.dataflow():
            y = bb.emit(relax.op.matmul(x, relax.op.permute_dims(w) if transposed else w))
            if epilogue:
                y = bb.emit(relax.op.nn.relu(relax.op.add(y, b)))
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    return bb.get()


def _flattened_tokens_module(k: int, n: int):
    """main(x: [batch, 16, k]) reshaped to [batch * 16, k] rows before a dense layer: a text encoder's
    tokens, whose row count is an expression of the batch, not a variable."""
    bb = relax.BlockBuilder()
    batch = tvm.tirx.Var("batch", "int64")
    x = relax.Var("x", relax.TensorType([batch, 16, k], "float32"))
    w = relax.Var("w", relax.TensorType([n, k], "float32"))
    b = relax.Var("b", relax.TensorType([n], "float32"))
    with bb.function("main", [x, w, b], attrs={"num_input": 1}):
        with bb.dataflow():
            rows = bb.emit(relax.op.reshape(x, [batch * 16, k]))
            y = bb.emit(relax.op.add(relax.op.matmul(rows, relax.op.permute_dims(w)), b))
            out = bb.emit_output(relax.op.reshape(y, [batch, 16, n]))
        bb.emit_func_output(out)
    return bb.get()


def test_a_row_count_that_is_an_expression_reaches_the_packed_kernel_as_a_variable():
    """With rows = batch * 16 inside the kernel its tiles could not be shown whole: it ran 60x slower
    (4 x 128 x 768 x 768, AVX2: 348 ms against 5.8). The kernel gets a variable, the result its shape back."""
    from buildsys.compiler.compile import compile_for_target
    from buildsys.compiler.schedules import pack_weights

    packed, count = pack_weights(_flattened_tokens_module(64, 32), lanes=8)
    assert count == 1
    calls = [b.value for block in packed["main"].body.blocks for b in block.bindings
             if isinstance(b.value, relax.Call) and "matmul_packed" in str(b.value.args[0])]
    assert len(calls) == 1
    kernel = packed[calls[0].args[0]]  # the PrimFunc: its rows come from its input buffer's shape
    rows = kernel.params[0].shape[-2]
    assert isinstance(rows, tvm.tirx.Var), rows

    compiled = compile_for_target(_flattened_tokens_module(64, 32), {"kind": "llvm"})
    assert "matmul_packed" in " ".join(compiled.default_scheduled) and compiled.transforms_params
    vm = relax.VirtualMachine(compiled.executable, tvm.cpu())
    rng = np.random.default_rng(2)
    x, w, b = (rng.standard_normal(s, dtype=np.float32) for s in ((3, 16, 64), (32, 64), (32,)))
    params = vm["main_transform_params"]([tvm.runtime.tensor(w), tvm.runtime.tensor(b)])
    out = vm["main"](tvm.runtime.tensor(x), *[params[i] for i in range(len(params))])
    np.testing.assert_allclose(out.numpy(), x @ w.T + b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("mcpu, k, n, transposed, epilogue, lead", [
    (None, 33, 91, True, True, ()),  # SSE: 4 lanes; 91: a 13-wide panel; k odd
    ("x86-64-v3", 257, 91, True, False, ()),  # AVX2
    ("x86-64-v3", 64, 48, False, True, (3,)),  # w stored [k, n]; a batch dimension before the rows
    ("skylake-avx512", 96, 1024, True, True, ()),  # AVX-512: 32-wide panels
])
def test_dense_weights_are_packed_at_build_time_and_the_matmul_computes_the_same(mcpu, k, n, transposed,
                                                                                epilogue, lead):
    from buildsys.compiler.compile import compile_for_target

    target = {"kind": "llvm", **({"mcpu": mcpu} if runnable_here(mcpu) else {})}
    compiled = compile_for_target(_weight_module(k, n, transposed, epilogue, lead), target)
    assert compiled.packed_weights == 1 and compiled.transforms_params
    assert any("matmul_packed" in name for name in compiled.default_scheduled)
    vm = relax.VirtualMachine(compiled.executable, tvm.cpu())
    rng = np.random.default_rng(k)
    w = rng.standard_normal((n, k) if transposed else (k, n), dtype=np.float32)
    b = rng.standard_normal(n, dtype=np.float32)
    params = list(vm["main_transform_params"]([tvm.runtime.tensor(w), tvm.runtime.tensor(b)]))
    panels = [p.shape for p in params if len(p.shape) == 3]
    assert len(panels) == 1 and panels[0][0] * panels[0][2] == n and panels[0][1] == k
    for rows in (0, 1, 7, 130):  # a detector's proposal count: any, none included
        x = rng.standard_normal((*lead, rows, k), dtype=np.float32)
        out = vm["main"](tvm.runtime.tensor(x), *params).numpy()
        expected = x @ (w.T if transposed else w)
        if epilogue:
            expected = np.maximum(expected + b, 0)
        assert out.shape == expected.shape
        np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)


def test_packing_can_be_turned_off_and_leaves_modules_without_weights_alone():
    from buildsys.compiler.compile import compile_for_target
    from buildsys.config.passes import known_pass_names
    from buildsys.config.passes import PACK_PASS_NAME

    assert PACK_PASS_NAME in known_pass_names()
    off = compile_for_target(_weight_module(64, 32, True, True), {"kind": "llvm"}, disabled_passes=[PACK_PASS_NAME])
    assert off.packed_weights == 0 and not off.transforms_params and off.default_scheduled
    no_weights = compile_for_target(_module(64, 32, epilogue=True), {"kind": "llvm"})  # no num_input
    assert no_weights.packed_weights == 0 and not no_weights.transforms_params


def _weight_conv_module(channels: int, filters: int, size: int, kernel: int, stride: int, padding, dilation=1):
    """main(x: [batch known at run time, C, H, W]; weights w, b) -> relu(conv2d(x, w) + b), ``num_input`` 1."""
    bb = relax.BlockBuilder()
    batch = tvm.tirx.Var("batch", "int64")
    x = relax.Var("x", relax.TensorType([batch, channels, size, size + 3], "float32"))  # not square
    w = relax.Var("w", relax.TensorType([filters, channels, kernel, kernel], "float32"))
    b = relax.Var("b", relax.TensorType([1, filters, 1, 1], "float32"))
    with bb.function("main", [x, w, b], attrs={"num_input": 1}):
        with bb.dataflow():
            y = bb.emit(relax.op.nn.conv2d(x, w, strides=stride, padding=padding, dilation=dilation))
            out = bb.emit_output(bb.emit(relax.op.nn.relu(relax.op.add(y, b))))
        bb.emit_func_output(out)
    return bb.get()


@pytest.mark.parametrize("mcpu, channels, filters, size, kernel, stride, padding, dilation", [
    (None, 5, 12, 9, 3, 1, 1, 1),  # SSE: 4 lanes, 12 filters -> 4-wide blocks
    ("x86-64-v3", 8, 16, 15, 3, 2, 1, 1),  # AVX2, stride 2, odd size
    ("x86-64-v3", 7, 24, 11, 1, 1, 0, 1),  # 1x1, 24 filters -> one-vector blocks
    ("x86-64-v3", 3, 8, 20, 7, 2, 3, 1),  # the stem's shape, small
    ("skylake-avx512", 16, 32, 10, 3, 1, (2, 1, 0, 2), 2),  # AVX-512, uneven padding, dilation 2
    ("skylake-avx512", 6, 72, 9, 1, 1, 0, 1),  # 72 filters: half-vector (8-wide) blocks
    ("skylake-avx512", 9, 91, 6, 1, 1, 0, 1),  # 91 (Mask R-CNN's classes): padded to 6 x 16 filters
    ("x86-64-v3", 3, 3, 7, 3, 1, 1, 1),  # 3 filters (an RPN's objectness): one padded 8-wide block
])
def test_convolution_weights_are_channel_blocked_at_build_time_and_compute_the_same(
        mcpu, channels, filters, size, kernel, stride, padding, dilation):
    torch = need_module("torch", "make venv (the build extra)")
    from buildsys.compiler.compile import compile_for_target

    target = {"kind": "llvm", **({"mcpu": mcpu} if runnable_here(mcpu) else {})}
    compiled = compile_for_target(_weight_conv_module(channels, filters, size, kernel, stride, padding, dilation),
                                  target)
    assert compiled.packed_weights == 1 and compiled.transforms_params
    assert any("conv2d_packed" in name for name in compiled.default_scheduled)
    vm = relax.VirtualMachine(compiled.executable, tvm.cpu())
    rng = np.random.default_rng(channels)
    w = rng.standard_normal((filters, channels, kernel, kernel), dtype=np.float32)
    b = rng.standard_normal((1, filters, 1, 1), dtype=np.float32)
    params = list(vm["main_transform_params"]([tvm.runtime.tensor(w), tvm.runtime.tensor(b)]))
    assert [p.shape[1:4] for p in params if len(p.shape) == 5] == [(channels, kernel, kernel)]
    top, left, bottom, right = (padding,) * 4 if isinstance(padding, int) else padding
    for batch in (0, 1, 3):  # the mask head's batch is the detection count
        x = rng.standard_normal((batch, channels, size, size + 3), dtype=np.float32)
        out = vm["main"](tvm.runtime.tensor(x), *params).numpy()
        padded = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
        expected = torch.relu(torch.nn.functional.conv2d(torch.from_numpy(padded), torch.from_numpy(w), stride=stride,
                                                         dilation=dilation) + torch.from_numpy(b)).numpy()
        assert out.shape == expected.shape
        np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)


def _transposed_conv_module(channels: int, filters: int, size: int, kernel: int, stride: int):
    """main(x: [batch known at run time, C, H, W]; weights w, b) -> relu(conv2d_transpose(x, w) + b)."""
    bb = relax.BlockBuilder()
    batch = tvm.tirx.Var("batch", "int64")
    x = relax.Var("x", relax.TensorType([batch, channels, size, size + 1], "float32"))
    w = relax.Var("w", relax.TensorType([channels, filters, kernel, kernel], "float32"))
    b = relax.Var("b", relax.TensorType([1, filters, 1, 1], "float32"))
    with bb.function("main", [x, w, b], attrs={"num_input": 1}):
        with bb.dataflow():
            y = bb.emit(relax.op.nn.conv2d_transpose(x, w, strides=stride))
            out = bb.emit_output(bb.emit(relax.op.nn.relu(relax.op.add(y, b))))
        bb.emit_func_output(out)
    return bb.get()


@pytest.mark.parametrize("mcpu, channels, filters, size, kernel, stride, packed", [
    ("x86-64-v3", 5, 6, 7, 2, 2, 1),  # Mask R-CNN's mask predictor, small: a matmul + depth-to-space
    ("skylake-avx512", 8, 16, 4, 3, 3, 1),  # kernel == stride 3
    ("x86-64-v3", 4, 8, 5, 3, 2, 0),  # overlapping taps: left to TVM's own lowering
])
def test_a_transposed_convolution_whose_kernel_is_its_stride_becomes_a_packed_matmul(
        mcpu, channels, filters, size, kernel, stride, packed):
    torch = need_module("torch", "make venv (the build extra)")
    from buildsys.compiler.compile import compile_for_target

    compiled = compile_for_target(_transposed_conv_module(channels, filters, size, kernel, stride),
                                  {"kind": "llvm", "mcpu": runnable_here(mcpu)})
    assert compiled.packed_weights == packed
    vm = relax.VirtualMachine(compiled.executable, tvm.cpu())
    rng = np.random.default_rng(filters)
    w = rng.standard_normal((channels, filters, kernel, kernel), dtype=np.float32)
    b = rng.standard_normal((1, filters, 1, 1), dtype=np.float32)
    params = [tvm.runtime.tensor(w), tvm.runtime.tensor(b)]
    if compiled.transforms_params:
        params = list(vm["main_transform_params"](params))
    for batch in (0, 1, 3):
        x = rng.standard_normal((batch, channels, size, size + 1), dtype=np.float32)
        out = vm["main"](tvm.runtime.tensor(x), *params).numpy()
        expected = torch.relu(torch.nn.functional.conv_transpose2d(torch.from_numpy(x), torch.from_numpy(w),
                                                                   stride=stride) + torch.from_numpy(b)).numpy()
        assert out.shape == expected.shape
        np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)


def test_a_weight_rewrite_that_fails_costs_speed_not_the_build(monkeypatch):
    from buildsys.compiler import schedules
    from buildsys.compiler.compile import compile_for_target

    def broken(mod, lanes):
        raise RuntimeError("a model this rewrite does not expect")

    monkeypatch.setattr(schedules, "pack_weights", broken)
    compiled = compile_for_target(_weight_module(64, 32, True, True), {"kind": "llvm"})
    assert compiled.packed_weights == 0 and not compiled.transforms_params and compiled.default_scheduled == []
    assert compiled.schedules_note.startswith("default schedules off: relax.build failed with them (RuntimeError")
    rng = np.random.default_rng(1)
    x, w, b = (rng.standard_normal(s, dtype=np.float32) for s in ((5, 64), (32, 64), (32,)))
    out = relax.VirtualMachine(compiled.executable, tvm.cpu())["main"](*(tvm.runtime.tensor(a) for a in (x, w, b)))
    np.testing.assert_allclose(out.numpy(), np.maximum(x @ w.T + b, 0), rtol=1e-4, atol=1e-4)


def _depthwise_module(channels: int, height: int, width: int, kernel: int, stride: int, padding, dilation,
                      dynamic: bool):
    """main(x; w, b) -> relu(depthwise conv2d(x, w) + b), ``num_input`` 1."""
    bb = relax.BlockBuilder()
    batch = tvm.tirx.Var("batch", "int64") if dynamic else 1
    x = relax.Var("x", relax.TensorType([batch, channels, height, width], "float32"))
    w = relax.Var("w", relax.TensorType([channels, 1, kernel, kernel], "float32"))
    b = relax.Var("b", relax.TensorType([1, channels, 1, 1], "float32"))
    with bb.function("main", [x, w, b], attrs={"num_input": 1}):
        with bb.dataflow():
            y = bb.emit(relax.op.nn.conv2d(x, w, strides=stride, padding=padding, dilation=dilation,
                                           groups=channels))
            out = bb.emit_output(bb.emit(relax.op.nn.relu(relax.op.add(y, b))))
        bb.emit_func_output(out)
    return bb.get()


@pytest.mark.parametrize("mcpu, channels, height, width, kernel, stride, padding, dilation, dynamic", [
    (None, 5, 9, 19, 3, 1, 1, 1, False),  # SSE: 4 lanes; width 19
    ("x86-64-v3", 7, 7, 7, 3, 2, 1, 1, True),  # AVX2, stride 2, width 7, batch at run time
    ("x86-64-v3", 3, 1, 1, 5, 1, 2, 1, False),  # a 1x1 map, 5x5 kernel: all padding
    ("skylake-avx512", 16, 38, 38, 5, 2, 2, 1, False),  # AVX-512, 5x5 stride 2 (mobilenet's)
    ("skylake-avx512", 9, 14, 11, 3, 1, (2, 1, 0, 2), 2, True),  # uneven padding, dilation 2
    ("x86-64-v3", 12, 56, 56, 3, 1, 1, 1, False),  # whole tiles: the write-back runs on vectors
])
def test_depthwise_convolutions_get_their_own_kernel_and_compute_the_same(mcpu, channels, height, width, kernel,
                                                                        stride, padding, dilation, dynamic):
    torch = need_module("torch", "make venv (the build extra)")
    from buildsys.compiler.compile import compile_for_target

    target = {"kind": "llvm", **({"mcpu": mcpu} if runnable_here(mcpu) else {})}
    compiled = compile_for_target(_depthwise_module(channels, height, width, kernel, stride, padding, dilation,
                                                    dynamic), target)
    assert any("depthwise_conv2d" in name for name in compiled.default_scheduled), compiled.default_scheduled
    vm = relax.VirtualMachine(compiled.executable, tvm.cpu())
    rng = np.random.default_rng(channels)
    w = rng.standard_normal((channels, 1, kernel, kernel), dtype=np.float32)
    b = rng.standard_normal((1, channels, 1, 1), dtype=np.float32)
    params = [tvm.runtime.tensor(w), tvm.runtime.tensor(b)]
    if compiled.transforms_params:
        params = list(vm["main_transform_params"](params))
    top, left, bottom, right = (padding,) * 4 if isinstance(padding, int) else padding
    for batch in ((0, 1, 3) if dynamic else (1,)):
        x = rng.standard_normal((batch, channels, height, width), dtype=np.float32)
        out = vm["main"](tvm.runtime.tensor(x), *params).numpy()
        padded = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
        expected = torch.relu(torch.nn.functional.conv2d(torch.from_numpy(padded), torch.from_numpy(w), stride=stride,
                                                         dilation=dilation, groups=channels)
                              + torch.from_numpy(b)).numpy()
        assert out.shape == expected.shape
        np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("out_h, out_w, lanes", [(56, 56, 16), (7, 7, 16), (28, 28, 8), (1, 1, 4), (19, 19, 16),
                                                 (112, 112, 16)])
def test_depthwise_tiles_fit_the_registers_and_cover_the_row(out_h, out_w, lanes):
    from buildsys.compiler.schedules.common import ACCUMULATORS
    from buildsys.compiler.schedules.depthwise import depthwise_tile

    vector, vectors, rows = depthwise_tile(out_h, out_w, lanes)
    assert vector in (lanes, lanes // 2, lanes // 4) and vector >= 4
    assert 1 <= vectors * rows <= ACCUMULATORS and rows <= out_h
    assert -(-out_w // (vector * vectors)) * vector * vectors - out_w < vector * vectors


@pytest.mark.parametrize("shape, keepdims, scheduled", [
    ((1, 120, 28, 28), True, True),  # mobilenet_v3's squeeze-and-excitation pool
    ((2, 9, 7, 7), False, True),  # 49: a 7-wide vector of partial sums
    ((3, 5, 19, 2), True, True),  # 38: 2-wide partial sums (no wider vector divides it)
    ((1, 4, 19, 1), True, False),  # 19 (prime): no vector divides it, left as it was
    ((1, 3, 1, 1), True, False),  # one pixel: nothing to vectorize, left as it was
])
def test_a_sum_over_the_plane_is_vectorized_and_computes_the_same(shape, keepdims, scheduled):
    from buildsys.compiler.compile import compile_for_target

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(list(shape), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(bb.emit(relax.op.mean(x, axis=[2, 3], keepdims=keepdims)))
        bb.emit_func_output(out)
    compiled = compile_for_target(bb.get(), {"kind": "llvm", "mcpu": runnable_here("x86-64-v3")})
    assert (compiled.default_scheduled == ["mean"]) == scheduled
    data = np.random.default_rng(shape[1]).standard_normal(shape, dtype=np.float32)
    out = relax.VirtualMachine(compiled.executable, tvm.cpu())["main"](tvm.runtime.tensor(data)).numpy()
    np.testing.assert_allclose(out, data.mean(axis=(2, 3), keepdims=keepdims), rtol=1e-5, atol=1e-6)


def _one_op_module(shape, op):
    """main(x: ``shape``, where a str is a dimension known only at run time) -> op(x)."""
    bb = relax.BlockBuilder()
    dims = [tvm.tirx.Var(d, "int64") if isinstance(d, str) else d for d in shape]
    x = relax.Var("x", relax.TensorType(dims, "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(bb.emit(op(x)))
        bb.emit_func_output(out)
    return bb.get()


@pytest.mark.parametrize("shape, runs, parallel", [
    ((1, 64, 64, 64), [(1, 64, 64, 64)], True),  # 262144 elements: worth two threads
    (("rois", 256, 14, 14), [(0, 256, 14, 14), (1, 256, 14, 14), (5, 256, 14, 14)], True),  # a mask head's
    ((1, 4, 8, 8), [(1, 4, 8, 8)], False),  # 256 elements: a thread pool would cost more than it saves
])
@pytest.mark.parametrize("op, reference", [
    (relax.op.sigmoid, lambda a: 1 / (1 + np.exp(-a))),
    (lambda x: relax.op.max(x, axis=[3]), lambda a: a.max(axis=3)),  # spatial loops, then a reduction
])
def test_other_kernels_with_enough_work_run_in_parallel_and_compute_the_same(shape, runs, parallel, op, reference):
    from buildsys.compiler.compile import compile_for_target

    compiled = compile_for_target(_one_op_module(shape, op), {"kind": "llvm", "mcpu": runnable_here("x86-64-v3")})
    assert bool(compiled.default_scheduled) == parallel
    scheduled, _ = apply_default_schedules(_legalized(_one_op_module(shape, op)))
    assert ("T.parallel" in scheduled.script()) == parallel
    vm = relax.VirtualMachine(compiled.executable, tvm.cpu())
    for run in runs:
        data = np.random.default_rng(sum(run)).standard_normal(run, dtype=np.float32)
        if 0 in run and op is not relax.op.sigmoid:
            continue  # max over an axis of an empty batch: nothing to compare
        out = vm["main"](tvm.runtime.tensor(data)).numpy()
        np.testing.assert_allclose(out, reference(data), rtol=1e-5, atol=1e-6)


def _plain_conv_module(channels: int, filters: int):
    """main(x, w, b) -> relu(conv2d(x, w) + b) in one plain binding block, as the ONNX importer writes it."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType([1, channels, 12, 12], "float32"))
    w = relax.Var("w", relax.TensorType([filters, channels, 3, 3], "float32"))
    b = relax.Var("b", relax.TensorType([1, filters, 1, 1], "float32"))
    with bb.function("main", [x, w, b]):
        y = bb.emit(relax.op.nn.conv2d(x, w, padding=1))
        y = bb.emit(relax.op.add(y, b))
        y = bb.emit(relax.op.nn.relu(y))
        bb.emit_func_output(y)
    return bb.get()


def test_a_module_in_plain_binding_blocks_is_fused_like_a_dataflow_one():
    import torch

    from buildsys.compiler.compile import compile_for_target
    from buildsys.config.passes import TO_DATAFLOW_PASS_NAME

    mod = _plain_conv_module(8, 16)
    fused = compile_for_target(mod, {"kind": "llvm", "mcpu": runnable_here("x86-64-v3")})
    unfused = compile_for_target(mod, {"kind": "llvm", "mcpu": runnable_here("x86-64-v3")}, disabled_passes=[TO_DATAFLOW_PASS_NAME])
    assert any("conv2d" in k and "add" in k and "relu" in k for k in fused.kernel_flops), fused.kernel_flops
    assert not any("conv2d" in k and "relu" in k for k in unfused.kernel_flops), unfused.kernel_flops
    rng = np.random.default_rng(0)
    x, w, b = (rng.standard_normal(s, dtype=np.float32) for s in ((1, 8, 12, 12), (16, 8, 3, 3), (1, 16, 1, 1)))
    expected = torch.relu(torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(w), padding=1)
                          + torch.from_numpy(b)).numpy()
    for compiled in (fused, unfused):
        out = relax.VirtualMachine(compiled.executable, tvm.cpu())["main"](
            *(tvm.runtime.tensor(a) for a in (x, w, b))).numpy()
        np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)


def test_kernels_with_run_time_shapes_in_plain_blocks_stay_unfused_and_build():
    """FuseTIR fails on fused groups of kernels with symbolic shapes (VarRemapGet): they stay apart."""
    bb = relax.BlockBuilder()
    rows = tvm.tirx.Var("rows", "int64")
    x = relax.Var("x", relax.TensorType([rows, 32], "float32"))
    with bb.function("main", [x]):
        y = bb.emit(relax.op.add(x, relax.const(1.0)))
        y = bb.emit(relax.op.nn.relu(y))
        y = bb.emit(relax.op.sigmoid(y))
        bb.emit_func_output(y)
    from buildsys.compiler.compile import compile_for_target

    compiled = compile_for_target(bb.get(), {"kind": "llvm"})
    assert not any(k.startswith("fused_") for k in compiled.kernel_flops)
    data = np.random.default_rng(3).standard_normal((7, 32), dtype=np.float32)
    out = relax.VirtualMachine(compiled.executable, tvm.cpu())["main"](tvm.runtime.tensor(data)).numpy()
    np.testing.assert_allclose(out, 1 / (1 + np.exp(-np.maximum(data + 1, 0))), rtol=1e-5, atol=1e-6)


def test_kernel_flops_are_counted_for_static_kernels_only():
    from buildsys.compiler.compile import compile_for_target

    double = lambda x: relax.op.add(x, x)  # noqa: E731
    static = compile_for_target(_one_op_module((1, 64, 64, 64), double), {"kind": "llvm"})
    assert static.kernel_flops["add"] == 64 ** 3
    dynamic = compile_for_target(_one_op_module(("rois", 256, 14, 14), double), {"kind": "llvm"})
    assert dynamic.kernel_flops["add"] is None  # a run-time row count: no figure rather than a wrong one
    matmul = compile_for_target(_module(64, 32, epilogue=False), {"kind": "llvm"})
    assert all(v is None for k, v in matmul.kernel_flops.items() if "matmul" in k)


def test_a_fusion_across_plain_blocks_tvm_cannot_build_costs_speed_not_the_build(monkeypatch):
    from buildsys.compiler.compile import compile_for_target

    def broken(_mod):
        raise RuntimeError("FuseTIR: VarRemapGet(source) == nullptr")

    monkeypatch.setattr(relax.transform, "ConvertToDataflow", lambda: broken)
    compiled = compile_for_target(_plain_conv_module(8, 16), {"kind": "llvm"})
    assert compiled.schedules_note.startswith("default schedules off: relax.build failed with them (")
    assert "VarRemapGet" in compiled.schedules_note
    assert not any("conv2d" in k and "relu" in k for k in compiled.kernel_flops)  # built unfused
