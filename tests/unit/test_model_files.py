"""Model files as sources (issue #26), without building: the bounded ONNX reader against files
onnx wrote and hostile ones, the signature a file gives and what the config may add or not,
the unsupported-operator report, and keys that follow the file's content."""

from __future__ import annotations

import os
import textwrap

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from buildsys.config import modelfiles
from buildsys.config.spec import parse_specs
from buildsys.errors import ConfigError
from buildsys.pipeline.importers.model_files import unsupported_operators


def _encoder_like(path, *, batch="batch", sequence="sequence", op="MatMul", external=False, opset=17):
    """input_ids [batch, sequence] int64 and mask -> a float output, a weight initializer."""
    weight = numpy_helper.from_array(np.arange(32, dtype=np.float32).reshape(4, 8), "embedding")
    nodes = [helper.make_node("Gather", ["embedding", "input_ids"], ["embedded"], name="lookup"),
             helper.make_node("Cast", ["attention_mask"], ["mask_f"], to=TensorProto.FLOAT, name="cast"),
             helper.make_node("Unsqueeze", ["mask_f", "axis"], ["mask3"], name="unsqueeze"),
             helper.make_node("Mul", ["embedded", "mask3"], ["masked"], name="apply_mask"),
             helper.make_node(op, ["masked", "proj"], ["out"], name="project")]
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [batch, sequence]),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT64, [batch, sequence])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [batch, sequence, 2])],
        [weight, numpy_helper.from_array(np.ones((8, 2), np.float32), "proj"),
         numpy_helper.from_array(np.array([2], np.int64), "axis")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    if external:
        onnx.save(model, str(path), save_as_external_data=True, location=path.name + ".data", size_threshold=0)
    else:
        onnx.save(model, str(path))
    return path


def test_reader_gives_inputs_opsets_nodes_and_external_data(tmp_path):
    info = modelfiles.read_onnx_file(_encoder_like(tmp_path / "m.onnx", external=True))
    assert [(i.name, i.dims, i.dtype) for i in info.inputs] == [
        ("input_ids", ("batch", "sequence"), "int64"), ("attention_mask", ("batch", "sequence"), "int64")]
    assert info.opset == 17 and info.outputs == ("out",)
    assert [n.op_type for n in info.nodes] == ["Gather", "Cast", "Unsqueeze", "Mul", "MatMul"]
    assert info.external_data == (str(tmp_path / "m.onnx.data"),)
    # what onnx itself reads back agrees
    model = onnx.load(str(tmp_path / "m.onnx"), load_external_data=False)
    assert [i.name for i in model.graph.input] == [i.name for i in info.inputs]


def test_reader_finds_nodes_inside_subgraphs(tmp_path):
    branch = helper.make_graph([helper.make_node("Frobnicate", ["x"], ["y"], name="inner", domain="")], "then",
                               [], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    graph = helper.make_graph(
        [helper.make_node("If", ["c"], ["y"], name="choose", then_branch=branch, else_branch=branch)], "g",
        [helper.make_tensor_value_info("c", TensorProto.BOOL, [1, 1]),
         helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    path = tmp_path / "if.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    info = modelfiles.read_onnx_file(path)
    assert sorted((n.op_type, n.graph) for n in info.nodes) == [
        ("Frobnicate", "main/choose.else_branch"), ("Frobnicate", "main/choose.then_branch"), ("If", "main")]


def test_unsupported_operators_are_listed_together_with_nodes_domain_and_opset(tmp_path):
    path = _encoder_like(tmp_path / "m.onnx", op="FancyProjection")
    model = onnx.load(str(path))
    model.graph.node.append(helper.make_node("Attention", ["out"], ["z"], name="ms_attention",
                                             domain="com.microsoft"))
    model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    onnx.save(model, str(path))
    supported = {"Gather", "Cast", "Unsqueeze", "Mul", "MatMul", "Attention"}
    lines = unsupported_operators(modelfiles.read_onnx_file(path), supported)
    # a default-domain name in another domain is not the default op
    assert lines == ["Attention (domain com.microsoft opset 1): 1 node: 'ms_attention'",
                     "FancyProjection (ai.onnx opset 17): 1 node: 'project'"]
    assert unsupported_operators(modelfiles.read_onnx_file(_encoder_like(tmp_path / "ok.onnx")), supported) == []


HOSTILE = {
    "truncated": lambda good: good[: len(good) // 2],
    "wrong_magic_zip": lambda good: b"PK\x03\x04" + good,
    "random_bytes": lambda good: bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)),
    "text": lambda good: b"this is not a model\n" * 50,
    "huge_declared_field": lambda good: b"\x08\x08\x3a\xff\xff\xff\xff\x07" + b"\0" * 64,
    "overlong_varint": lambda good: b"\x08" + b"\xff" * 20,
    "empty": lambda good: b"",
    "no_graph": lambda good: b"\x08\x08",
}


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_hostile_onnx_files_get_a_config_error_naming_the_file(tmp_path, kind):
    good = _encoder_like(tmp_path / "good.onnx").read_bytes()
    path = tmp_path / f"{kind}.onnx"
    path.write_bytes(HOSTILE[kind](good))
    with pytest.raises(modelfiles.ModelFileError) as caught:
        modelfiles.read_onnx_file(path)
    assert str(path) in str(caught.value)


def test_subgraph_nesting_bomb_is_bounded(tmp_path, monkeypatch):
    monkeypatch.setattr(modelfiles, "MAX_DEPTH", 3)  # protobuf's writer stops at about 30 levels of If
    leaf = helper.make_graph([], "leaf", [], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    graph = leaf
    for depth in range(modelfiles.MAX_DEPTH + 2):  # one branch deeper each time (a file linear in depth)
        node = helper.make_node("If", ["c"], ["y"], name=f"if{depth}", then_branch=graph, else_branch=leaf)
        graph = helper.make_graph([node], f"g{depth}", [], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    path = tmp_path / "deep.onnx"
    onnx.save(helper.make_model(graph), str(path))
    with pytest.raises(modelfiles.ModelFileError, match="nested deeper"):
        modelfiles.read_onnx_file(path)


def test_a_file_over_protobufs_limit_is_refused_before_reading(tmp_path, monkeypatch):
    path = _encoder_like(tmp_path / "m.onnx")
    monkeypatch.setattr(modelfiles, "MAX_PROTOBUF_BYTES", 100)
    with pytest.raises(modelfiles.ModelFileError, match="external data"):
        modelfiles.read_onnx_file(path)


def _set_location(path, location):
    """Every initializer of the file at ``path`` points its external data at ``location``."""
    model = onnx.load(str(path), load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    onnx.save(model, str(path))


def test_external_data_outside_the_models_folder_or_missing_is_refused(tmp_path):
    path = _encoder_like(tmp_path / "m.onnx", external=True)
    (tmp_path / "m.onnx.data").unlink()
    with pytest.raises(modelfiles.ModelFileError, match="external data file .* is missing"):
        modelfiles.read_onnx_file(path)
    _set_location(path, "../../etc/passwd")
    with pytest.raises(modelfiles.ModelFileError, match="points outside the model's folder"):
        modelfiles.read_onnx_file(path)


def test_pt2_file_must_be_a_zip_archive(tmp_path):
    path = tmp_path / "p.pt2"
    path.write_bytes(b"\x80\x04 not a zip")
    with pytest.raises(modelfiles.ModelFileError, match="wrong magic"):
        modelfiles.check_pt2_file(path)
    path.write_bytes(b"PK\x03\x04 cut short")
    with pytest.raises(modelfiles.ModelFileError, match="damaged zip"):
        modelfiles.check_pt2_file(path)


# ---------------------------------------------------------------- the signature in builds.yaml


def _specs(tmp_path, model_lines: str, matrix: str = "  model: [m]\n"):
    text = "models:\n  m:\n" + textwrap.indent(textwrap.dedent(model_lines), "    ") + "matrix:\n" + matrix
    (tmp_path / "builds.yaml").write_text(text)
    return parse_specs(text, filename=str(tmp_path / "builds.yaml"), base_dir=tmp_path)


def test_signature_comes_from_the_file_completed_by_the_config(tmp_path):
    _encoder_like(tmp_path / "enc.onnx")
    specs = _specs(tmp_path, """\
        source: enc.onnx
        inputs:
          - {name: attention_mask, shape: [batch, 16]}
          - {name: input_ids, shape: [batch, 16], range: [0, 3]}
        """, "  model: [m]\n  batch: [{min: 1, max: 8}]\n")
    (spec,) = specs
    assert [(i.name, i.shape, i.dtype, i.range) for i in spec.inputs] == [  # the file's order and dtypes
        ("input_ids", ("batch", 16), "int64", (0, 3)), ("attention_mask", ("batch", 16), "int64", (0, 1))]
    assert spec.model.file_kind == "onnx" and spec.model.file_path == tmp_path / "enc.onnx"
    assert spec.batch.dynamic and spec.input_size is None


@pytest.mark.parametrize("model_lines, matrix, message", [
    ("source: enc.onnx\n", "  model: [m]\n", "leaves dimension 1 \\(sequence\\) of input 'input_ids' open"),
    ("source: enc.onnx\ninputs:\n  - {name: input_ids, shape: [batch, 16], dtype: int32, range: [0, 3]}\n",
     "  model: [m]\n", "declared int32 but enc.onnx says int64"),
    ("source: enc.onnx\ninputs:\n  - {name: inputs_ids, shape: [batch, 16]}\n", "  model: [m]\n",
     "has no input 'inputs_ids'"),
    ("source: fixed.onnx\ninputs:\n  - {name: input_ids, shape: [batch, 16], range: [0, 3]}\n", "  model: [m]\n",
     "dimension 1 is declared 16 but fixed.onnx says 12"),
    ("source: fixed.onnx\ninputs:\n  - {name: input_ids, range: [0, 3]}\n", "  model: [m]\n  batch: [4]\n",
     "fixes the batch at 2"),
    ("source: enc.onnx\nweights: weights.pth\n", "  model: [m]\n", "weights does not apply to a model file"),
    ("source: missing.onnx\n", "  model: [m]\n", "cannot read the model file"),
    ("source: enc.onnx\ninputs:\n  - {name: input_ids, shape: [batch, 16], range: [0, 3]}\n"
     "  - {name: attention_mask, shape: [batch, 16]}\n", "  model: [m]\n  input_size: [32]\n",
     "input_size 32x32 does not apply"),
])
def test_file_and_config_that_disagree_give_a_config_error(tmp_path, model_lines, matrix, message):
    _encoder_like(tmp_path / "enc.onnx")
    _encoder_like(tmp_path / "fixed.onnx", batch=2, sequence=12)
    (tmp_path / "weights.pth").write_bytes(b"x")
    with pytest.raises(ConfigError, match=message) as caught:
        _specs(tmp_path, model_lines, matrix)
    assert caught.value.file == str(tmp_path / "builds.yaml") and caught.value.line


def test_a_hostile_file_named_by_the_config_is_a_config_error_with_its_line(tmp_path):
    (tmp_path / "bad.onnx").write_bytes(b"\x08\x08\x3a\xff\xff\xff\xff\x07")
    with pytest.raises(ConfigError, match="bad.onnx: not a readable ONNX file") as caught:
        _specs(tmp_path, "source: bad.onnx\n")
    assert caught.value.line == 3 and caught.value.field == "models.m.source"


def test_the_key_follows_the_files_content_and_its_external_data(tmp_path):
    from buildsys.artifacts.store import Store
    from buildsys.pipeline.plan import plan_builds
    from tests.fixtures.workspace import registry_at

    path = _encoder_like(tmp_path / "enc.onnx", sequence=8, external=True)
    config = "source: enc.onnx\ninputs:\n  - {name: input_ids, range: [0, 3]}\n"
    store = Store(tmp_path / "artifacts")

    def key():
        (job,) = plan_builds(_specs(tmp_path, config), registry_at(tmp_path / "artifacts"), store)
        return job.key

    first = key()
    assert key() == first
    data = tmp_path / "enc.onnx.data"
    before = data.read_bytes()
    data.write_bytes(before[:-4] + b"\x00\x00\x80\x3f")  # the last weight becomes 1.0: same graph file
    changed = key()
    assert changed != first
    data.write_bytes(before)
    os.utime(path)  # the graph file touched, its content the same
    assert key() == first


# ---------------------------------------------------------------- review findings (attack26)


def test_nul_bytes_in_a_source_or_an_external_data_location_are_config_errors(tmp_path):
    # os.path.realpath raised ValueError (a traceback, exit 1) for both
    with pytest.raises(ConfigError, match="cannot hold a NUL byte") as caught:
        _specs(tmp_path, 'source: "m\\0x.onnx"\n')
    assert caught.value.line == 3 and caught.value.field == "models.m.source"
    path = _encoder_like(tmp_path / "m.onnx", external=True)
    _set_location(path, "a\0b.data")
    with pytest.raises(modelfiles.ModelFileError, match="NUL byte"):
        modelfiles.read_onnx_file(path)


def _constant_with_external_value(path, location):
    value = TensorProto(name="c", data_type=TensorProto.FLOAT, dims=[2], data_location=TensorProto.EXTERNAL)
    value.external_data.add(key="location", value=location)
    graph = helper.make_graph([helper.make_node("Constant", [], ["w"], value=value, name="const"),
                               helper.make_node("Add", ["x", "w"], ["y"], name="add")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2])])
    path.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
    return path


def test_a_constants_external_data_is_checked_and_in_the_key(tmp_path):
    # only initializers were walked: a Constant node's value kept outside the file (onnx.load reads
    # it) was neither confined to the model's folder nor part of the key (an edit left plan "cached")
    (tmp_path / "c.bin").write_bytes(np.ones(2, np.float32).tobytes())
    info = modelfiles.read_onnx_file(_constant_with_external_value(tmp_path / "m.onnx", "c.bin"))
    assert info.external_data == (str(tmp_path / "c.bin"),)
    with pytest.raises(modelfiles.ModelFileError, match="points outside the model's folder"):
        modelfiles.read_onnx_file(_constant_with_external_value(tmp_path / "m.onnx", "../c.bin"))


def test_many_graph_inputs_or_fields_are_bounded(tmp_path, monkeypatch):
    # 10 MB of empty graph inputs (two bytes each) took 640 MB and 10 s: 2 GiB would exhaust memory
    empty_inputs = b"\x5a\x00" * 1000
    path = tmp_path / "inputs.onnx"
    path.write_bytes(b"\x08\x08\x3a" + bytes([0xd0, 0x0f]) + empty_inputs)  # graph: 2000 bytes
    monkeypatch.setattr(modelfiles, "MAX_VALUES", 100)
    with pytest.raises(modelfiles.ModelFileError, match="more than 100 graph inputs"):
        modelfiles.read_onnx_file(path)
    monkeypatch.setattr(modelfiles, "MAX_VALUES", 10_000)
    monkeypatch.setattr(modelfiles, "MAX_FIELDS", 500)
    with pytest.raises(modelfiles.ModelFileError, match="more than 500 protobuf fields"):
        modelfiles.read_onnx_file(path)


def test_a_negative_dimension_is_open_not_two_to_the_64(tmp_path):
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [-1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [-1, 4])])
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph), str(path))
    assert modelfiles.read_onnx_file(path).inputs[0].dims == (None, 4)  # was 18446744073709551615


def test_a_pt2_that_is_not_a_regular_file_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "p.pt2"
    os.mkfifo(fifo)  # open() waited for a writer forever
    with pytest.raises(modelfiles.ModelFileError, match="not a regular file"):
        modelfiles.check_pt2_file(fifo)


@pytest.mark.parametrize("model_lines, message", [
    # the same symbolic dimension given two sizes: the graph adds the inputs, the build failed late
    ("source: enc.onnx\ninputs:\n  - {name: input_ids, shape: [batch, 8], range: [0, 3]}\n"
     "  - {name: attention_mask, shape: [batch, 16]}\n", "'sequence', as input 'input_ids' dimension 1"),
    ("source: twice.onnx\ninputs:\n  - {name: x, shape: [batch, 4]}\n", "names two inputs 'x'"),
])
def test_inputs_the_file_ties_together_cannot_be_declared_apart(tmp_path, model_lines, message):
    _encoder_like(tmp_path / "enc.onnx")
    graph = helper.make_graph([helper.make_node("Add", ["x", "x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])] * 2,
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])])
    (tmp_path / "twice.onnx").write_bytes(helper.make_model(graph).SerializeToString())
    with pytest.raises(ConfigError, match=message) as caught:
        _specs(tmp_path, model_lines)
    assert caught.value.file == str(tmp_path / "builds.yaml")


@pytest.mark.parametrize("kind, message", [
    ("header_bomb", "mmap length is greater than file size"),  # was numpy's MemoryError, a traceback
    ("npz", "NpzFile, not one array"),  # was "input 'x' takes float32, got <U1"
    ("pickled", "Object arrays cannot be loaded|can't be memory-mapped"),
])
def test_run_input_refuses_arrays_it_cannot_map(tmp_path, monkeypatch, kind, message):
    import buildsys.runtime
    from buildsys.errors import UsageError
    from buildsys.ui.runs import run_artifact

    path = tmp_path / "x.npy"
    if kind == "header_bomb":  # a 100-byte file whose header declares 373 GiB
        header = b"{'descr': '<f4', 'fortran_order': False, 'shape': (100000000000,), }"
        header = header.ljust(117) + b"\n"
        path.write_bytes(b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + b"\0" * 16)
    elif kind == "npz":
        with open(path, "wb") as handle:
            np.savez(handle, x=np.ones((1, 4), np.float32))
    else:
        np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    called = []
    monkeypatch.setattr(buildsys.runtime, "load_artifact",
                        lambda *a, **k: type("P", (), {"signature": None, "run": lambda *a, **k: called.append(a)})())
    with pytest.raises(UsageError, match=message):
        run_artifact("k", None, None, input_paths=(str(path),))
    assert not called
