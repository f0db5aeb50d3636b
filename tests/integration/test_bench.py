"""`buildsys bench`: one process per run (thread counts are fixed before TVM starts)."""

import json
import os
import subprocess
import sys

import jsonschema
import pytest

from buildsys.ui.jsonout import load_schema

from tests.fixtures.workspace import Workspace

pytestmark = pytest.mark.model

CONFIG = """
models:
  tiny_cnn:
    source: tests.fixtures.models:tiny_cnn
matrix:
  model: [tiny_cnn]
  input_size: [32]
"""


def _buildsys(ws, *args):
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    return subprocess.run([sys.executable, "-m", "buildsys.cli", "-c", str(ws.config), "--store", str(ws.store),
                           *args], capture_output=True, text=True, env=env, timeout=600)


def _built(tmp_path, config: str = CONFIG) -> tuple[Workspace, str]:
    ws = Workspace(tmp_path, config)
    assert ws.cli("build") == 0
    return ws, ws.registry.list()[0].key


def _bench_json(ws, *args) -> dict:
    """``buildsys bench ARGS --json``: it succeeded, its document fits the schema; its one result."""
    done = _buildsys(ws, "bench", *args, "--json")
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    jsonschema.validate(document, load_schema("bench"))
    (result,) = document["results"]
    return result


def test_bench_times_every_runner_records_and_lists_the_ratio(tmp_path):
    ws, key = _built(tmp_path)
    result = _bench_json(ws, "--threads", "1", "--rounds", "2", "--number", "3")
    assert result["key"] == key and result["threads"] == 1 and result["rounds"] == 2 and result["cpu_model"]
    runners = result["runners"]
    for name in ("artifact", "torch_eager", "torch_compile", "onnxruntime"):
        assert runners[name]["ms"] > 0 and len(runners[name]["rounds_ms"]) == 2, name
    assert runners["torch_eager"]["ratio_vs_eager"] == pytest.approx(1.0)
    for name in ("artifact", "onnxruntime", "torch_compile"):  # measured, and right
        assert runners[name]["max_rel_vs_eager"] < 1e-4, name
    assert runners["artifact"]["ratio_vs_onnxruntime"] > 0
    # each runner in a process of its own, set up with the thread count, none with another's runtime
    assert result["isolation"] == "process" and result["mode"] == "interleaved"
    processes = {name: runners[name]["process"] for name in ("artifact", "torch_eager", "torch_compile", "onnxruntime")}
    assert len({p["pid"] for p in processes.values()}) == 4 and os.getpid() not in {p["pid"] for p in processes.values()}
    assert processes["artifact"]["modules"] == ["tvm_ffi"] and processes["artifact"]["threads"] == {"TVM_NUM_THREADS": "1"}
    assert processes["onnxruntime"]["modules"] == ["onnxruntime"]
    assert processes["onnxruntime"]["threads"] == {"intra_op": 1, "inter_op": 1}
    for name in ("torch_eager", "torch_compile"):
        assert processes[name]["threads"] == {"torch": 1, "OMP_NUM_THREADS": "1"} and "torch" in processes[name]["modules"]
    assert runners["torch_compile"]["compile_s"] > 0

    (row,) = ws.registry.benchmarks(key)
    assert row.threads == 1 and row.cpu_model == result["cpu_model"] and row.results["runners"].keys() == runners.keys()
    metrics = ws.registry.get(key).metrics
    assert metrics["bench_ratio_vs_eager"] == pytest.approx(runners["artifact"]["ratio_vs_eager"])
    listing = _buildsys(ws, "ls").stdout
    assert f"{runners['artifact']['ratio_vs_eager']:.2f}x" in listing and "VS_ORT" in listing


def test_bench_refuses_unknown_refs_and_an_empty_registry(tmp_path):
    ws = Workspace(tmp_path, CONFIG)
    done = _buildsys(ws, "bench", "--no-ort")
    assert done.returncode == 2 and "nothing to benchmark" in done.stderr
    done = _buildsys(ws, "bench", "nosuchalias")
    assert done.returncode != 0 and "nosuchalias" in done.stderr


def test_bench_times_a_batch_range_at_each_size_against_the_same_dynamic_shapes(tmp_path):
    ws = Workspace(tmp_path, CONFIG + "  batch: [{min: 1, max: 6}]\n")
    assert ws.cli("build") == 0
    done = _buildsys(ws, "bench", "--rounds", "1", "--number", "2", "--no-compile", "--batch", "1,4", "--json")
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    jsonschema.validate(document, load_schema("bench"))
    (result,) = document["results"]
    assert [b["batch"] for b in result["batches"]] == [1, 4] and result["runners"] == result["batches"][0]["runners"]
    for entry in result["batches"]:
        for name in ("artifact", "torch_eager", "onnxruntime"):  # onnxruntime: one model, a dynamic batch axis
            figures = entry["runners"][name]
            assert figures["items_per_s"] == pytest.approx(entry["batch"] * 1e3 / figures["ms"])
            assert name == "torch_eager" or figures["max_rel_vs_eager"] < 1e-4, (entry["batch"], name)
    table = _buildsys(ws, "bench", "--rounds", "1", "--number", "1", "--no-compile", "--no-ort")
    assert table.returncode == 0 and "TVM items/s" in table.stdout
    rows = [line.split() for line in table.stdout.splitlines() if line.startswith("tiny_cnn") and "(" not in line]
    assert [cells[5] for cells in rows if cells[5].isdigit()] == ["1", "3", "6"]  # min, opt, max by default
    refused = _buildsys(ws, "bench", "--batch", "7")
    assert refused.returncode == 2 and "takes batch 1 to 6" in refused.stderr


def test_bench_alone_times_each_runner_by_itself_and_records_nothing(tmp_path):
    ws, key = _built(tmp_path)
    result = _bench_json(ws, "--alone", "--no-compile", "--rounds", "2", "--number", "2")
    assert result["mode"] == "alone"
    for name in ("artifact", "torch_eager", "onnxruntime"):
        assert len(result["runners"][name]["rounds_ms"]) == 2, name
        assert name == "torch_eager" or result["runners"][name]["max_rel_vs_eager"] < 1e-4, name
    assert ws.registry.benchmarks(key) == []
