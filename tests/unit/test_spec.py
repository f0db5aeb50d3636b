import re
from pathlib import Path

import pytest

from buildsys.errors import ConfigError
from buildsys.config.spec import BuildSpec, load_specs, parse_specs

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "configs"

BASE = """
models:
  a: {source: "tests.fixtures.models:tiny_cnn"}
  b: {source: "tests.fixtures.models:tiny_cnn", kwargs: {classes: 3}}
"""


def labels(specs):
    return sorted((s.model.name, s.input_size, s.target_label, s.opt_level) for s in specs)


def test_cartesian_product_over_listed_axes_with_defaults():
    specs = parse_specs(BASE + """
defaults: {opt_level: 2}
matrix:
  model: [a, b]
  input_size: [32, "48x64"]
  opt_level: [0, 3]
""")
    assert len(specs) == 8
    assert all(isinstance(s, BuildSpec) for s in specs)
    assert ("b", (48, 64), "llvm", 0) in labels(specs)
    assert {s.target_label for s in specs} == {"llvm"}


def test_exclude_removes_every_matching_combination_and_include_adds_entries():
    specs = parse_specs(BASE + """
matrix:
  model: [a, b]
  input_size: [32, 48]
  exclude:
    - {model: b, input_size: 48}
  include:
    - {model: a, input_size: [40, 56], opt_level: 1}
    - {model: a, input_size: 32}        # duplicate of a product entry: kept once
""")
    assert labels(specs) == [
        ("a", (32, 32), "llvm", 3), ("a", (40, 56), "llvm", 1), ("a", (48, 48), "llvm", 3),
        ("b", (32, 32), "llvm", 3)]


def test_include_only_matrix():
    specs = parse_specs(BASE + """
matrix:
  include:
    - {model: b, input_size: 32}
""")
    assert labels(specs) == [("b", (32, 32), "llvm", 3)]


def test_exclude_matches_normalized_values():
    # "32" as 32 and "32x32" name the same size; a target string and its dict form are one target.
    specs = parse_specs(BASE + """
matrix:
  model: [a]
  input_size: [32, 48]
  target: ["llvm", {kind: llvm, num-cores: 2}]
  exclude:
    - {input_size: "32x32", target: "llvm -num-cores=2"}
""")
    assert labels(specs) == [("a", (32, 32), "llvm", 3), ("a", (48, 48), "llvm", 3),
                             ("a", (48, 48), "llvm -num-cores=2", 3)]


def test_specs_are_frozen_and_do_not_share_mutable_kwargs():
    spec = parse_specs(BASE + "matrix: {model: [b], input_size: [32]}")[0]
    with pytest.raises(AttributeError):
        spec.opt_level = 1
    with pytest.raises(TypeError, match="cannot be changed"):
        spec.model.kwargs["classes"] = 99
    given = spec.model.kwargs.thaw()  # what a builder function gets: its own copy
    given["classes"] = 99
    assert spec.model.kwargs == {"classes": 3} and type(given) is dict
    assert hash(spec) == hash(parse_specs(BASE + "matrix: {model: [b], input_size: [32]}")[0])


def test_disabled_passes_are_sorted_and_deduplicated():
    spec = parse_specs(BASE + """
matrix:
  model: [a]
  input_size: [32]
  disabled_passes: [[LegalizeOps, FoldConstant, FoldConstant]]
""")[0]
    assert spec.disabled_passes == ("FoldConstant", "LegalizeOps")


def test_origin_names_file_and_line(tmp_path):
    path = tmp_path / "builds.yaml"
    path.write_text(BASE + "matrix:\n  include:\n    - {model: a, input_size: 32}\n")
    spec = load_specs(path)[0]
    assert spec.origin == f"{path}:7"  # the include entry's line


def test_weights_file_resolves_relative_to_config(tmp_path):
    (tmp_path / "w.pth").write_bytes(b"not really weights")
    path = tmp_path / "builds.yaml"
    path.write_text("models:\n  a: {source: 'm:f', weights: w.pth}\nmatrix: {model: [a], input_size: [32]}\n")
    spec = load_specs(path)[0]
    assert spec.model.weights.source == "file"
    assert spec.model.weights.path == str(tmp_path / "w.pth")


def test_hub_weights_name():
    spec = parse_specs("models:\n  a: {source: 'torchvision.models:resnet18', weights: DEFAULT}\n"
                       "matrix: {model: [a], input_size: [32]}\n")[0]
    assert (spec.model.weights.source, spec.model.weights.name) == ("hub", "DEFAULT")


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_specs(tmp_path / "nope.yaml")


def _expectations(path: Path):
    text = path.read_text()
    expected = re.findall(r"^# expect: (.+)$", text, re.M)
    line = re.search(r"^# expect-line: (\d+)$", text, re.M)
    return expected, int(line.group(1)) if line else None


@pytest.mark.parametrize("fixture", sorted(FIXTURES.glob("*.yaml")), ids=lambda p: p.stem)
def test_bad_config_fixture(fixture):
    expected, line = _expectations(fixture)
    assert expected, f"{fixture.name} names no expected message"
    with pytest.raises(ConfigError) as info:
        load_specs(fixture)
    message = str(info.value)
    for part in expected:
        assert part in message, message
    assert message.startswith(str(fixture)), message
    if line is not None:
        assert info.value.line == line, message
    assert info.value.exit_code == 2


def test_tuning_axis_off_budget_and_settings():
    from buildsys.pipeline.plan import spec_key

    specs = parse_specs(BASE + """
matrix:
  model: [a]
  input_size: [32]
  tuning: [off, 64, {trials: 0}, {trials: 320, per_task: 16, population: 64}]
""")
    off, budget, apply_only, full = specs
    assert off.tuning is None and "tuning" not in off.to_dict()
    assert budget.tuning.trials == 64 and budget.tuning.per_task is None
    assert budget.tuning.cap == 64  # no cap by default: the task scheduler spreads the budget
    assert apply_only.tuning.trials == 0
    assert (full.tuning.per_task, full.tuning.population, full.tuning.cap) == (16, 64, 16)
    assert "tuned:320" in full.describe() and "tuned" not in off.describe()
    keys = {spec_key(s)[0] for s in specs}
    assert len(keys) == 4  # the settings are part of the entry
    # an untuned entry's key is what it was before tuning existed (no "tuning" in its spec)
    (plain,) = parse_specs(BASE + "matrix: {model: [a], input_size: [32]}")
    assert spec_key(plain)[0] == spec_key(off)[0]


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf", "[1, .nan]", "{deep: {x: .inf}}"])
def test_kwargs_that_json_cannot_hold_are_refused_with_their_field(value):
    """The build key is canonical JSON without NaN or infinity: such kwargs failed at plan with a traceback."""
    text = f"""
models:
  m: {{source: "torchvision.models:resnet18", kwargs: {{x: {value}}}}}
matrix: {{model: [m], input_size: [32]}}
"""
    with pytest.raises(ConfigError, match="no NaN or infinity") as info:
        parse_specs(text)
    assert info.value.field == "models.m.kwargs" and info.value.line == 3


def test_only_target_filters_name_native_like_the_matrix_does():
    """`--only "target=llvm -mcpu=native"` matches the entries whose target says native (the matrix
    records this host's CPU by name)."""
    from buildsys.config import tvmfacts
    from buildsys.pipeline.plan import _matches, parse_filters

    spec = parse_specs(BASE + 'matrix: {model: [b], input_size: [32], target: ["llvm -mcpu=native"]}')[0]
    assert _matches(spec, "0" * 64, parse_filters(["target=llvm -mcpu=native"]))
    assert _matches(spec, "0" * 64, parse_filters([f"target=llvm -mcpu={tvmfacts.facts()['system_cpu']}"]))
    assert not _matches(spec, "0" * 64, parse_filters(["target=llvm"]))


SIGNATURES = """
models:
  tiny: {source: "tests.fixtures.models:tiny_cnn"}
  det: {source: "buildsys.models.tiny:tiny_fasterrcnn", task: detection}
  text:
    source: tests.fixtures.models:token_classifier
    inputs:
      - {name: input_ids, shape: [batch, 16], dtype: int64, range: [0, 99]}
      - {name: attention_mask, shape: [batch, 16], dtype: int64}
      - {name: scale, shape: [batch, 1], range: [0.5, 2]}
matrix:
  model: [tiny, det]
  input_size: [32]
  batch: [1, 4, {min: 1, max: 7, opt: 3}]
  exclude: [{model: det, batch: 4}, {model: det, batch: {min: 1, max: 7, opt: 3}}]
  include:
    - {model: text, batch: {min: 2, max: 32}}
"""


def test_batch_axis_and_declared_inputs():
    from buildsys.format.signature import Batch
    from buildsys.config.spec import spec_from_dict

    specs = parse_specs(SIGNATURES)
    assert [(s.model.name, s.batch) for s in specs] == [
        ("tiny", Batch(1, 1, 1)), ("tiny", Batch(4, 4, 4)), ("tiny", Batch(1, 7, 3)), ("det", Batch(1, 1, 1)),
        ("text", Batch(2, 32, 17))]
    assert "batch" not in specs[0].to_dict() and specs[1].to_dict()["batch"] == 4
    assert specs[2].to_dict()["batch"] == {"min": 1, "max": 7, "opt": 3}
    assert specs[2].batch.parity_sizes == (1, 3, 7) and specs[2].describe() == "tiny 32x32 batch:1-7 [llvm] O3"
    text = specs[-1]
    assert text.input_size is None and "input_shape" not in text.to_dict() and text.size_label == "16,1"
    assert [(i.name, i.shape_at(5), i.dtype, i.range) for i in text.inputs] == [
        ("input_ids", (5, 16), "int64", (0, 99)), ("attention_mask", (5, 16), "int64", (0, 1)),
        ("scale", (5, 1), "float32", (0.5, 2.0))]
    assert [i.name for i in specs[0].inputs] == ["input"] and specs[0].inputs[0].shape_at(3) == (3, 3, 32, 32)
    for spec in specs:  # the registry keeps to_dict; the spec comes back from it
        assert spec_from_dict(spec.to_dict()).to_dict() == spec.to_dict()


@pytest.mark.parametrize("value, message", [
    ("0", "a batch size is 1..4096"), ("true", "batch is a whole number or a range"),
    ("{min: 1}", "a batch range needs max"), ("{min: 1, max: 4, opt: 9}", "batch opt 9 is outside min..max"),
    ("{min: 1, max: 4, top: 2}", "unknown field 'top'"), ("{min: 1.5, max: 4}", "batch min must be a whole number"),
    ("{min: 4, max: 4}", "must be less than max"), ("[1, 2]", "batch is a whole number or a range"),
])
def test_bad_batch_values_name_their_line_and_field(value, message):
    text = f'models:\n  t: {{source: "m:f"}}\nmatrix:\n  model: [t]\n  input_size: [32]\n  batch:\n    - {value}\n'
    with pytest.raises(ConfigError, match=re.escape(message)) as info:
        parse_specs(text, filename="b.yaml")
    assert info.value.line == 7 and info.value.field.startswith("matrix.batch[0]")


@pytest.mark.parametrize("inputs, message", [
    ("[]", "a model has 1..16 inputs"), ("x", "expected a list"),
    ("[{name: a, shape: [16, batch], range: [0, 1]}]", "the first dimension (and only it) is 'batch'"),
    ("[{name: a, shape: [batch, 0]}]", "a dimension is a whole number"),
    ("[{name: a, shape: [batch, 4]}, {name: a, shape: [batch, 4]}]", "two inputs are named 'a'"),
    ("[{name: 1a, shape: [batch, 4]}]", "an input name is an identifier"),
    ("[{name: a, shape: [batch, 4], dtype: int32, range: [0, 3000000000]}]", "within"),
    ("[{name: a, shape: [batch, 4], range: [1, 1]}]", "low < high"),
    ("[{name: a, shape: [batch, 4], size: 3}]", "unknown field 'size'"),
])
def test_bad_inputs_name_their_field(inputs, message):
    text = f'models:\n  t:\n    source: "m:f"\n    inputs: {inputs}\nmatrix:\n  include: [{{model: t}}]\n'
    with pytest.raises(ConfigError, match=re.escape(message)) as info:
        parse_specs(text, filename="i.yaml")
    assert info.value.line == 4 and info.value.field.startswith("models.t.inputs"), str(info.value)


def test_a_detector_cannot_declare_inputs():
    text = ('models:\n  d:\n    source: "m:f"\n    task: detection\n    inputs: [{name: a, shape: [batch, 4]}]\n'
            'matrix:\n  include: [{model: d}]\n')
    with pytest.raises(ConfigError, match="a detector takes one image"):
        parse_specs(text)


EVERY_FIELD = """
version: 1
models:
  tiny:
    source: tests.fixtures.models:tiny_cnn
    seed: 7
    kwargs: {classes: 3, width: 4}
    tolerance: 2.5e-3
  text:
    source: tests.fixtures.models:text_classifier
    tolerance: 1.0e-2
    inputs:
      - {name: input_ids, shape: [batch, 16], dtype: int64, range: [0, 99]}
      - {name: attention_mask, shape: [batch, 16], dtype: int64}
      - {name: scale, shape: [batch, 1], dtype: float32, range: [0.5, 2.0]}
matrix:
  model: [tiny]
  input_size: ["48x32"]
  target: ["llvm -mcpu=znver3 -num-cores=2"]
  opt_level: [2]
  disabled_passes: [[FoldConstant, LegalizeOps]]
  tuning: [{trials: 64, per_task: 16}]
  batch: [{min: 2, max: 9, opt: 5}]
  include:
    - {model: text, batch: 4}
"""


def test_a_spec_with_every_field_survives_manifest_to_spec_to_manifest():
    """What the build writes (the key's spec, parity with its tolerance, io) reads back into the
    same spec, tolerance included (the key leaves it out), and the same signature."""
    from buildsys.artifacts.manifest import check_loadable
    from buildsys.config.spec import spec_from_manifest
    from buildsys.format.signature import Signature
    from buildsys.pipeline.build import io_signature
    from buildsys.pipeline.parity import Parity

    specs = parse_specs(EVERY_FIELD)
    assert {s.model.tolerance for s in specs} == {2.5e-3, 1.0e-2}
    for spec in specs:
        manifest = {"spec": spec.to_dict(), "io": io_signature(spec),
                    "parity": Parity(0.0, 0.0, 1, spec.model.tolerance).to_dict()}
        back = spec_from_manifest(manifest)
        assert back == spec, (back, spec)
        assert back.model.tolerance == spec.model.tolerance and back.tuning == spec.tuning
        assert {"spec": back.to_dict(), "io": io_signature(back)} == {"spec": manifest["spec"], "io": manifest["io"]}
        assert Signature.from_io(manifest["io"]) == Signature(spec.inputs, spec.batch)
        check_loadable({**manifest, "key": "ab" * 32, "label": "x", "runtime": {"tvm": "0.27"},
                        "files": {n: {"digest": "sha256:" + "0" * 64, "size": 1} for n in ("lib.so", "params.npz")},
                        "io": {**manifest["io"], "outputs": [{"name": "out"}]}}, "test")


def test_a_manifest_without_a_usable_tolerance_reads_back_the_default():
    from buildsys.config.spec import DEFAULT_TOLERANCE, spec_from_manifest

    spec = parse_specs(EVERY_FIELD)[0]
    for parity in ({}, {"tolerance": None}, {"tolerance": True}, {"tolerance": float("nan")}, {"tolerance": -1}, "x"):
        assert spec_from_manifest({"spec": spec.to_dict(), "parity": parity}).model.tolerance == DEFAULT_TOLERANCE
