import dataclasses

import pytest

from buildsys.artifacts.digests import canonical_json, digest_bytes, digest_file, split_digest

from buildsys.pipeline.keys import build_key, key_material
from buildsys.pipeline.plan import spec_key
from buildsys.config.spec import parse_specs

TOOLCHAIN = {"torch": "2.14.1", "torchvision": "0.29.1", "tvm": "0.27.0.post1", "tvm_ffi": "0.1.14.post1",
             "buildsys": "0.1.0"}
REFERENCE = """
models:
  resnet18: {source: "torchvision.models:resnet18", weights: none, seed: 0}
matrix:
  model: [resnet18]
  input_size: [224]
  target: ["llvm -mcpu=znver3"]
  opt_level: [3]
  disabled_passes: [[FoldConstant]]
"""
# Pinned: if this changes, every cached artifact is rebuilt. Change it only with KEY_FORMAT.
REFERENCE_KEY = "605bb2594683e16d3f413e8e8f5b5b5760176d1a0d56147374028e08f3fba770"


def reference_spec():
    return parse_specs(REFERENCE)[0]


def test_canonical_json_is_sorted_and_compact():
    assert canonical_json({"b": 1, "a": [1, 2]}) == b'{"a":[1,2],"b":1}'


def test_digests_name_their_algorithm(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"abc")
    expected = "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert digest_file(path) == digest_bytes(b"abc") == expected
    assert split_digest(expected)[0] == "sha256"
    with pytest.raises(ValueError):
        split_digest("md5:abc")


REFERENCE_MATERIAL = (
    '{"key_format":1,"spec":{"disabled_passes":["FoldConstant"],"input_shape":[1,3,224,224],"model":{"kwargs":{},'
    '"name":"resnet18","source":"torchvision.models:resnet18","task":"classification","weights":{"name":null,'
    '"seed":0,"source":"none"}},"opt_level":3,"target":{"kind":"llvm","mcpu":"znver3"}},"toolchain":{"buildsys":'
    '"0.1.0","torch":"2.14.1","torchvision":"0.29.1","tvm":"0.27.0.post1","tvm_ffi":"0.1.14.post1"},"tuning":null,'
    '"weights":"seeded:0"}')


def test_reference_key_is_pinned():
    key, material = spec_key(reference_spec(), TOOLCHAIN)
    assert canonical_json(material).decode() == REFERENCE_MATERIAL
    assert key == REFERENCE_KEY


def _key(text, toolchain=TOOLCHAIN):
    return spec_key(parse_specs(text)[0], toolchain)[0]


@pytest.mark.parametrize("old, new", [
    ('input_size: [224]', 'input_size: [[224, 256]]'),
    ('target: ["llvm -mcpu=znver3"]', 'target: ["llvm -mcpu=znver4"]'),
    ('target: ["llvm -mcpu=znver3"]', 'target: ["llvm -mcpu=znver3 -num-cores=2"]'),
    ('opt_level: [3]', 'opt_level: [2]'),
    ('disabled_passes: [[FoldConstant]]', 'disabled_passes: [[]]'),
    ('seed: 0', 'seed: 1'),
    ('weights: none, seed: 0}', 'weights: none, seed: 0, kwargs: {num_classes: 10}}'),
    ('source: "torchvision.models:resnet18"', 'source: "torchvision.models:resnet34"'),
    ('opt_level: [3]', 'opt_level: [3]\n  batch: [8]'),
    ('opt_level: [3]', 'opt_level: [3]\n  batch: [{min: 1, max: 32}]'),
])
def test_each_axis_changes_the_key(old, new):
    assert old in REFERENCE
    assert _key(REFERENCE.replace(old, new)) != REFERENCE_KEY


def test_batch_one_keeps_the_keys_of_entries_without_a_batch():
    assert _key(REFERENCE.replace("opt_level: [3]", "opt_level: [3]\n  batch: [1]")) == REFERENCE_KEY
    dynamic = REFERENCE.replace("opt_level: [3]", "opt_level: [3]\n  batch: [{min: 1, max: 32}]")
    assert _key(dynamic) != _key(dynamic.replace("max: 32}", "max: 32, opt: 8}"))  # opt: what tuning measures


@pytest.mark.parametrize("package", sorted(TOOLCHAIN))
def test_each_toolchain_version_changes_the_key(package):
    assert _key(REFERENCE, {**TOOLCHAIN, package: "9.9.9"}) != REFERENCE_KEY


def test_weights_file_digest_is_in_the_key_not_its_path(tmp_path):
    for name, content in (("a.pth", b"one"), ("b.pth", b"one"), ("c.pth", b"two")):
        (tmp_path / name).write_bytes(content)
    text = "models:\n  m: {source: 'x:y', weights: %s}\nmatrix: {model: [m], input_size: [32]}\n"
    keys = {}
    for name in ("a.pth", "b.pth", "c.pth"):
        spec = parse_specs(text % name, base_dir=tmp_path)[0]
        keys[name] = spec_key(spec, TOOLCHAIN)[0]
    assert keys["a.pth"] == keys["b.pth"] != keys["c.pth"]


def test_tolerance_and_origin_do_not_change_the_key():
    spec = reference_spec()
    model = dataclasses.replace(spec.model, tolerance=0.5)
    changed = dataclasses.replace(spec, model=model, origin="elsewhere.yaml:99")
    assert spec_key(changed, TOOLCHAIN)[0] == REFERENCE_KEY


def test_key_material_has_documented_fields():
    material = key_material({"x": 1}, "seeded:0", TOOLCHAIN)
    assert set(material) == {"key_format", "spec", "weights", "toolchain", "tuning"}
    assert len(build_key(material)) == 64
