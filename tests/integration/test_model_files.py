"""Model files as sources, built (issue #26): an ONNX file with a dynamic batch, a BERT-style text
encoder's ONNX file, a torch.export program saved as .pt2, unsupported operators reported before
compiling, the bench of an ONNX source, and commands that resolve a user's module beside builds.yaml."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

from buildsys.artifacts import manifest as manifest_format
from buildsys.artifacts.store import Store
from buildsys.models.text import export_text_encoder, text_encoder
from buildsys.runtime import load_artifact
from tests.fixtures.models import tiny_cnn
from tests.fixtures.workspace import Workspace

pytestmark = pytest.mark.model


def _export_cnn(path):
    torch.manual_seed(1)
    with torch.no_grad():
        torch.onnx.export(tiny_cnn().eval(), (torch.rand(2, 3, 32, 32),), str(path), dynamo=False, opset_version=17,
                          input_names=["image"], output_names=["logits"],
                          dynamic_axes={"image": {0: "n"}, "logits": {0: "n"}})
    return path


def _artifact(ws, model):
    record = next(r for r in ws.registry.list() if r.model == model)
    return record, manifest_format.read_stored(Store(ws.store), record)


def _ort(path, feed):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feed)


ONNX_CONFIG = """
models:
  cnn: {source: cnn.onnx}
  text:
    source: text.onnx
    inputs:
      - {name: input_ids, shape: [batch, 16], range: [0, 999]}
      - {name: attention_mask, shape: [batch, 16]}
matrix:
  model: [cnn, text]
  batch: [{min: 1, max: 4}]
"""


@pytest.fixture(scope="module")
def onnx_built(tmp_path_factory):
    root = tmp_path_factory.mktemp("onnx_files")
    _export_cnn(root / "cnn.onnx")
    torch.manual_seed(0)
    export_text_encoder(text_encoder(), root / "text.onnx")
    ws = Workspace(root, ONNX_CONFIG)
    assert ws.cli("build") == 0
    return ws


def test_onnx_file_builds_with_its_signature_and_parity_against_onnxruntime(onnx_built):
    record, manifest = _artifact(onnx_built, "cnn")
    assert manifest["route"]["name"] == "onnx-file" and manifest["route"]["opset"] == 17
    assert manifest["parity"]["reference"] == "onnxruntime" and manifest["parity"]["passed"]
    assert manifest["parity"]["batch_sizes"] == [1, 2, 4]
    assert manifest["io"]["inputs"] == [{"name": "image", "shape": ["batch", 3, 32, 32], "dtype": "float32",
                                         "range": [0.0, 1.0]}]
    assert [s["name"] for s in manifest["sources"]] == ["cnn.onnx"]
    predictor = load_artifact(record.key, registry=onnx_built.registry, store=Store(onnx_built.store))
    for batch in (1, 3):
        x = np.random.default_rng(batch).random((batch, 3, 32, 32), dtype=np.float32)
        np.testing.assert_allclose(predictor(x)[0], _ort(onnx_built.root / "cnn.onnx", {"image": x})[0],
                                   rtol=1e-4, atol=1e-5)


def test_text_encoder_from_its_onnx_file_runs_with_named_npy_inputs(onnx_built, capsys):
    record, manifest = _artifact(onnx_built, "text")
    assert manifest["parity"]["passed"] and manifest["parity"]["max_rel"] < 1e-4
    assert [o["name"] for o in manifest["io"]["outputs"]] == ["last_hidden_state", "pooler_output"]
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 1000, (3, 16), dtype=np.int64)
    mask = np.ones((3, 16), np.int64)
    mask[1, 10:] = 0  # padding changes the other positions' attention: the mask must reach the model
    np.save(onnx_built.root / "ids.npy", ids)
    np.save(onnx_built.root / "mask.npy", mask)
    capsys.readouterr()
    assert onnx_built.cli("run", record.key[:12], "--input", f"attention_mask={onnx_built.root / 'mask.npy'}",
                          "--input", f"input_ids={onnx_built.root / 'ids.npy'}") == 0
    assert "output 0: shape (3, 16, 128)" in capsys.readouterr().out
    predictor = load_artifact(record.key, registry=onnx_built.registry, store=Store(onnx_built.store))
    expected = _ort(onnx_built.root / "text.onnx", {"input_ids": ids, "attention_mask": mask})
    for got, want in zip(predictor(ids, mask), expected):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    unmasked = predictor(ids, np.ones_like(mask))[0]
    assert not np.allclose(unmasked[1], expected[0][1], atol=1e-3)


def test_editing_the_onnx_file_makes_plan_rebuild_and_say_why(onnx_built, capsys):
    capsys.readouterr()
    assert onnx_built.cli("plan") == 0
    assert "model sources changed" not in capsys.readouterr().out
    path = onnx_built.root / "cnn.onnx"
    original = path.read_bytes()
    try:
        model = onnx.load(str(path))
        weight = next(t for t in model.graph.initializer if t.data_type == TensorProto.FLOAT)
        weight.raw_data = bytes(len(weight.raw_data))
        onnx.save(model, str(path))
        assert onnx_built.cli("plan") == 0
        out = capsys.readouterr().out
        assert f"model sources changed: cnn.onnx changed ({path})" in out
    finally:
        path.write_bytes(original)


def test_bench_of_an_onnx_source_runs_onnxruntime_on_the_file_and_skips_torch(onnx_built, capsys):
    record, _ = _artifact(onnx_built, "cnn")
    capsys.readouterr()
    assert onnx_built.cli("bench", record.key[:12], "--rounds", "1", "--number", "1", "--batch", "2",
                          "--json") == 0
    (result,) = json.loads(capsys.readouterr().out)["results"]
    runners = result["runners"]
    assert runners["torch_eager"]["error"] == "not run: the model is an ONNX file (cnn.onnx)"
    assert "error" in runners["torch_compile"] and "ms" in runners["onnxruntime"]
    assert runners["artifact"]["max_rel_vs_onnxruntime"] < 1e-4


def test_unsupported_operators_are_reported_together_before_compiling(tmp_path, capsys):
    path = _export_cnn(tmp_path / "odd.onnx")
    model = onnx.load(str(path))
    last = model.graph.node[-1].output[0]
    model.graph.node.append(helper.make_node("Frobnicate", [last], ["f1"], name="frob_a"))
    model.graph.node.append(helper.make_node("Frobnicate", ["f1"], ["f2"], name="frob_b"))
    model.graph.node.append(helper.make_node("FusedGemm", ["f2"], ["f3"], name="ms_gemm", domain="com.microsoft"))
    model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    model.graph.output[0].name = "f3"
    onnx.save(model, str(path))
    ws = Workspace(tmp_path, "models:\n  odd: {source: odd.onnx}\nmatrix:\n  model: [odd]\n")
    assert ws.cli("build") == 3
    assert ws.cli("plan") == 0
    run = ws.registry.last_runs([job_key(ws)])
    error = next(iter(run.values())).error
    assert "2 operators that TVM's ONNX importer does not convert (nothing was compiled)" in error
    assert "Frobnicate (ai.onnx opset 17): 2 nodes: 'frob_a', 'frob_b'" in error
    assert "FusedGemm (domain com.microsoft opset 1): 1 node: 'ms_gemm'" in error
    assert "Traceback" not in error


def job_key(ws):
    from buildsys.workspace import Workspace as Project

    (job,) = Project(str(ws.config), str(ws.store)).plan()
    return job.key


def test_pt2_program_builds_with_parity_against_the_programs_module(tmp_path):
    torch.manual_seed(2)
    module = tiny_cnn().eval()
    batch = torch.export.Dim("batch", min=1, max=8)
    program = torch.export.export(module, (torch.rand(2, 3, 32, 32),), dynamic_shapes=({0: batch},))
    torch.export.save(program, str(tmp_path / "cnn.pt2"))
    ws = Workspace(tmp_path, """
        models:
          cnn:
            source: cnn.pt2
            inputs: [{name: x, shape: [batch, 3, 32, 32]}]
        matrix:
          model: [cnn]
          batch: [{min: 1, max: 8}]
        """)
    assert ws.cli("build") == 0
    record, manifest = _artifact(ws, "cnn")
    assert manifest["route"]["name"] == "torch.export-file" and manifest["parity"]["passed"]
    assert manifest["parity"]["reference"] == "PyTorch"
    x = np.random.default_rng(0).random((5, 3, 32, 32), dtype=np.float32)
    predictor = load_artifact(record.key, registry=ws.registry, store=Store(ws.store))
    with torch.no_grad():
        np.testing.assert_allclose(predictor(x)[0], module(torch.from_numpy(x)).numpy(), rtol=1e-4, atol=1e-5)


USER_MODULE = """
import torch


def tiny():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 4))
"""


def test_commands_resolve_a_users_module_beside_builds_yaml_for_an_artifact_no_longer_in_the_matrix(
        tmp_path, capsys):
    (tmp_path / "textmodels.py").write_text(USER_MODULE)
    ws = Workspace(tmp_path, "models:\n  tiny: {source: 'textmodels:tiny'}\nmatrix:\n  model: [tiny]\n"
                             "  input_size: [16]\n")
    assert ws.cli("build") == 0
    (old,) = ws.registry.list()
    (tmp_path / "textmodels.py").write_text(USER_MODULE + "\n# edited: a new key\n")
    capsys.readouterr()
    assert ws.cli("bench", old.key[:12], "--rounds", "1", "--number", "1", "--no-compile") == 0
    captured = capsys.readouterr()
    assert "cannot import module" not in captured.err + captured.out
