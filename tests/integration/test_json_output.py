"""--json output validates against the documented schemas (buildsys/schemas/)."""

import json

import jsonschema
import pytest

from buildsys.ui.jsonout import COMMANDS, load_schema

from tests.fixtures.workspace import Workspace

pytestmark = pytest.mark.model


def _json(ws, capsys, *args, code=0):
    capsys.readouterr()
    assert ws.cli(*args, "--json") == code
    captured = capsys.readouterr()
    document = json.loads(captured.out)  # stdout holds the document and nothing else
    command = args[0]
    jsonschema.validate(document, load_schema(command))
    assert document["schema"] == f"buildsys.{command}/1"
    return document, captured.err


def test_every_schema_is_a_valid_json_schema():
    for command in COMMANDS:
        jsonschema.Draft202012Validator.check_schema(load_schema(command))


def test_plan_ls_show_verify(built, capsys):
    plan, _ = _json(built, capsys, "plan")
    assert plan["counts"] == {"build": 0, "cached": 3, "skip": 0}
    assert {e["model"] for e in plan["entries"]} == {"tiny_cnn", "upsample"}
    listing, _ = _json(built, capsys, "ls")
    assert sorted(a["key"] for a in listing["artifacts"]) == sorted(e["key"] for e in plan["entries"])
    key = listing["artifacts"][0]["key"]
    shown, _ = _json(built, capsys, "show", key[:8])
    assert shown["manifest"]["key"] == key and shown["registry"]["status"] == "ok"
    verified, _ = _json(built, capsys, "verify")
    assert verified["ok"] and verified["checked"] == 9 and verified["problems"] == []


def test_build_json_reports_results_and_keeps_progress_on_stderr(tmp_path, capsys):
    ws = Workspace(tmp_path, """
models:
  tiny_cnn: {source: "tests.fixtures.models:tiny_cnn"}
  broken: {source: "tests.fixtures.models:raises_on_build"}
matrix:
  model: [tiny_cnn, broken]
  input_size: [32]
""")
    document, progress = _json(ws, capsys, "build", code=3)
    assert document["counts"] == {"built": 1, "cached": 0, "skipped": 0, "failed": 1}
    by_model = {r["model"]: r for r in document["results"]}
    assert by_model["tiny_cnn"]["status"] == "built" and by_model["tiny_cnn"]["parity_max_rel"] < 1e-4
    assert by_model["broken"]["status"] == "failed" and by_model["broken"]["error"]
    assert "building (log: " in progress and "FAILED" in progress
    again, _ = _json(ws, capsys, "build", "--only", "model=tiny_cnn")
    assert [r["status"] for r in again["results"]] == ["cached"]


def test_verify_json_names_a_damaged_file(tmp_path, capsys):
    ws = Workspace(tmp_path, """
models:
  tiny_cnn: {source: "tests.fixtures.models:tiny_cnn"}
matrix: {model: [tiny_cnn], input_size: [32]}
""")
    assert ws.cli("build") == 0
    record = ws.registry.list()[0]
    from buildsys.artifacts.store import Store
    params = Store(ws.store).object_path(record.file("params.npz").digest)
    params.chmod(0o644)
    params.write_bytes(b"not the weights")
    document, _ = _json(ws, capsys, "verify", code=5)
    assert not document["ok"]
    (problem,) = document["problems"]
    assert problem["key"] == record.key and problem["file"] == "params.npz" and problem["found"] != problem["expected"]
