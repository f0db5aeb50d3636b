"""Input signatures end to end (issue #17): static and dynamic batches, two int64 inputs, refusals."""

import numpy as np
import pytest
import torch

from buildsys.artifacts import manifest as manifest_format
from buildsys.artifacts.store import Store
from buildsys.errors import InputError
from buildsys.runtime import load_artifact
from tests.fixtures.models import tiny_cnn, token_classifier
from tests.fixtures.workspace import Workspace

pytestmark = pytest.mark.model

CONFIG = """
models:
  tiny_cnn: {source: "tests.fixtures.models:tiny_cnn"}
  text:
    source: tests.fixtures.models:token_classifier
    inputs:
      - {name: input_ids, shape: [batch, 16], dtype: int64, range: [0, 99]}
      - {name: attention_mask, shape: [batch, 16], dtype: int64}
matrix:
  model: [tiny_cnn]
  input_size: [32]
  batch: [3, {min: 1, max: 7, opt: 3}]
  include:
    - {model: text, batch: {min: 1, max: 8}}
"""


@pytest.fixture(scope="module")
def signatures(tmp_path_factory):
    ws = Workspace(tmp_path_factory.mktemp("signatures"), CONFIG)
    assert ws.cli("build") == 0
    return ws


def _artifact(ws, model, batch):
    record = next(r for r in ws.registry.list() if r.model == model and r.spec.get("batch", 1) == batch)
    manifest = manifest_format.read_stored(Store(ws.store), record)
    return record, manifest, load_artifact(record.key, registry=ws.registry, store=Store(ws.store))


def _eager(module, *inputs):
    with torch.no_grad():
        return module(*map(torch.from_numpy, inputs)).numpy()


def test_dynamic_batch_passes_parity_at_each_size_and_runs_any_batch_in_range(signatures, capsys):
    record, manifest, predictor = _artifact(signatures, "tiny_cnn", {"min": 1, "max": 7, "opt": 3})
    assert manifest["parity"]["batch_sizes"] == [1, 3, 7]
    assert all(manifest["parity"]["batches"][str(b)]["passed"] for b in (1, 3, 7))
    assert manifest["io"]["batch"] == {"min": 1, "max": 7, "opt": 3}
    assert manifest["io"]["inputs"] == [{"name": "input", "shape": ["batch", 3, 32, 32], "dtype": "float32",
                                         "range": [0.0, 1.0]}]
    assert manifest["io"]["outputs"][0]["shape"] == ["batch", 10]
    assert predictor.batch_range == (1, 7)
    torch.manual_seed(0)  # weights: none, seed 0: the weights the build had
    model = tiny_cnn().eval()
    for batch in (1, 3, 5, 7):
        x = np.random.default_rng(batch).random((batch, 3, 32, 32), dtype=np.float32)
        out = predictor(x)[0]
        assert out.shape == (batch, 10)
        np.testing.assert_allclose(out, _eager(model, x), rtol=1e-4, atol=1e-5)
    assert signatures.cli("ls") == 0
    assert "1-7" in capsys.readouterr().out


def test_static_batch_takes_that_batch_only(signatures):
    _, manifest, predictor = _artifact(signatures, "tiny_cnn", 3)
    assert manifest["io"]["input"]["shape"] == [3, 3, 32, 32] and manifest["parity"]["batch_sizes"] == [3]
    assert predictor(np.zeros((3, 3, 32, 32), np.float32))[0].shape == (3, 10)
    with pytest.raises(InputError, match="has batch 2; the artifact takes batch 3"):
        predictor(np.zeros((2, 3, 32, 32), np.float32))


def test_loader_refuses_a_batch_out_of_range_and_a_wrong_dtype(signatures):
    _, _, predictor = _artifact(signatures, "tiny_cnn", {"min": 1, "max": 7, "opt": 3})
    with pytest.raises(InputError, match="has batch 8; the artifact takes a batch of 1 to 7") as info:
        predictor(np.zeros((8, 3, 32, 32), np.float32))
    assert isinstance(info.value, ValueError) and info.value.exit_code == 2
    with pytest.raises(InputError, match="has batch 0"):
        predictor(np.zeros((0, 3, 32, 32), np.float32))
    _, _, text = _artifact(signatures, "text", {"min": 1, "max": 8, "opt": 4})
    ids = np.zeros((2, 16), np.int64)
    with pytest.raises(InputError, match="input 'input_ids' takes int64, got float32"):
        text(ids.astype(np.float32), ids)
    with pytest.raises(InputError, match="holds values 0..100; the artifact takes 0..99"):
        text(ids + np.arange(16) * 100 // 15, ids)  # 100 is past the embedding table
    with pytest.raises(InputError, match="missing input"):
        text(input_ids=ids)
    assert text(ids, ids)[0].shape == (2, 4)  # the process is fine after all that


def test_two_int64_inputs_build_pass_parity_and_load(signatures):
    _, manifest, predictor = _artifact(signatures, "text", {"min": 1, "max": 8, "opt": 4})
    assert [i["name"] for i in manifest["io"]["inputs"]] == ["input_ids", "attention_mask"]
    assert [i["dtype"] for i in manifest["io"]["inputs"]] == ["int64", "int64"]
    assert manifest["parity"]["batch_sizes"] == [1, 4, 8] and manifest["parity"]["passed"]
    torch.manual_seed(0)  # weights: none, seed 0
    model = token_classifier().eval()
    rng = np.random.default_rng(1)
    for batch in (1, 6):
        ids = rng.integers(0, 100, (batch, 16))
        mask = (rng.random((batch, 16)) < 0.7).astype(np.int64)
        named = predictor(input_ids=ids, attention_mask=mask)[0]
        positional = predictor(ids, mask)[0]
        np.testing.assert_array_equal(named, positional)
        assert named.shape == (batch, 4)
        np.testing.assert_allclose(named, _eager(model, ids, mask), rtol=1e-4, atol=1e-5)


def test_a_detector_with_a_dynamic_batch_is_refused_at_plan_time(fresh, capsys):
    ws = fresh("""
models:
  tiny_fasterrcnn: {source: "buildsys.models.tiny:tiny_fasterrcnn", task: detection}
matrix:
  model: [tiny_fasterrcnn]
  input_size: [64]
  batch: [{min: 1, max: 4}]
""")
    assert ws.cli("plan") == 2
    err = capsys.readouterr().err
    assert "model 'tiny_fasterrcnn' is a detector" in err and "batch 1-4" in err and "builds.yaml:7" in err
    assert not ws.store.exists()


def test_profile_feeds_every_declared_input(signatures, capsys):
    """`buildsys profile` runs an artifact on the samples `buildsys run` uses: two int64 inputs too."""
    import json

    record, _, _ = _artifact(signatures, "text", {"min": 1, "max": 8, "opt": 4})
    assert signatures.cli("profile", record.key, "--runs", "2", "--json") == 0
    profile = json.loads(capsys.readouterr().out)
    assert profile["kernels"] and profile["total_ms"] > 0
