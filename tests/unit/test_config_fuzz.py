"""Mutated configs: every one either parses or is refused with a ConfigError (exit code 2).
Nothing else may escape: no traceback for bad input."""

import copy
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from buildsys.cli import main
from buildsys.errors import ConfigError
from buildsys.config.spec import BuildSpec, parse_specs
from tests.fixtures.fuzz import examples, paths, suite_timeout

pytestmark = suite_timeout(600)  # a hang guard for the whole generated suite

BASE = {
    "version": 1,
    "models": {
        "tiny": {"source": "tests.fixtures.models:tiny_cnn", "task": "classification", "weights": "none",
                 "seed": 0, "kwargs": {"classes": 3}, "tolerance": 1e-4},
        "det": {"source": "buildsys.models.tiny:tiny_fasterrcnn", "task": "detection", "skip": "later"},
        "text": {"source": "tests.fixtures.models:token_classifier",
                 "inputs": [{"name": "input_ids", "shape": ["batch", 16], "dtype": "int64", "range": [0, 99]},
                            {"name": "attention_mask", "shape": ["batch", 16], "dtype": "int64"}]},
    },
    "defaults": {"target": "llvm", "opt_level": 3, "disabled_passes": []},
    "matrix": {
        "model": ["tiny", "det"], "input_size": [32, "48x64", [40, 56]],
        "target": ["llvm -mcpu=znver3", {"kind": "llvm", "num-cores": 2}], "opt_level": [2, 3],
        "disabled_passes": [[], ["FoldConstant"]],
        "batch": [1, 4],
        "include": [{"model": "tiny", "input_size": 40, "batch": {"min": 1, "max": 16}},
                    {"model": "text", "batch": {"min": 1, "max": 8, "opt": 2}}],
        "exclude": [{"opt_level": 2, "input_size": 32}, {"model": "det", "batch": 4}],
    },
}

scalars = (st.none() | st.booleans() | st.integers(-10**6, 10**9) | st.floats(allow_nan=True)
           | st.text(max_size=20) | st.sampled_from(["llvm", "cuda", "-mcpu=", "x", "1x1", "FoldScaleAxis",
                                                     "tiny", "none", "DEFAULT", "../", "llvm -mcpu=native", "batch",
                                                     "int64", "float32"]))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
    st.text(max_size=8) | st.sampled_from(["model", "input_size", "target", "kind", "mcpu", "batch", "min", "max",
                                           "opt", "inputs", "shape", "dtype", "range", "name"]), inner, max_size=3),
    max_leaves=6)


@st.composite
def mutated_configs(draw):
    doc = copy.deepcopy(BASE)
    for _ in range(draw(st.integers(1, 3))):
        places = list(paths(doc))
        if not places:
            break
        path = draw(st.sampled_from(places))
        parent = doc
        for part in path[:-1]:
            parent = parent[part]
        action = draw(st.sampled_from(["replace", "delete", "add", "rename"]))
        last = path[-1]
        if action == "replace":
            parent[last] = draw(values)
        elif action == "delete":
            del parent[last]
        elif action == "add" and isinstance(parent, dict):
            parent[draw(st.text(max_size=10))] = draw(values)
        elif action == "rename" and isinstance(parent, dict):
            parent[str(last) + draw(st.sampled_from(["s", "_", "x"]))] = parent.pop(last)
    text = yaml.safe_dump(doc, sort_keys=False)
    if draw(st.booleans()):  # damage the text itself
        pos = draw(st.integers(0, max(0, len(text) - 1)))
        text = text[:pos] + draw(st.sampled_from(["", ":", "[", "{", "\t", "'", "- ", "\n  x: 1\n", "\x00"])) \
            + text[pos + draw(st.integers(0, 3)):]
    return text


@settings(max_examples=examples(1000), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_configs())
def test_mutated_configs_parse_or_fail_cleanly(tmp_path_factory, text):
    try:
        specs = parse_specs(text, filename="fuzz.yaml", base_dir=Path("/nonexistent-config-dir"))
    except ConfigError as exc:
        assert exc.exit_code == 2
        assert str(exc).startswith("fuzz.yaml")
        assert "\n" not in exc.message.strip() or len(str(exc).splitlines()) < 25  # one screen
    else:
        assert specs and all(isinstance(s, BuildSpec) for s in specs)


FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "configs"


@pytest.mark.parametrize("fixture", sorted(FIXTURES.glob("*.yaml")), ids=lambda p: p.stem)
def test_bad_config_through_the_cli_exits_2_and_writes_nothing(fixture, tmp_path, capsys):
    store = tmp_path / "store"
    assert main(["-c", str(fixture), "--store", str(store), "build"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {fixture}") and "Traceback" not in err
    assert not store.exists()


@pytest.mark.parametrize("text, message", [
    ('models:\n  a: {source: "m:f", weights: "a\\0b"}\nmatrix: {model: [a], input_size: [32]}\n',
     "not a usable file path"),
    ('models:\n  a: {source: "m:f"}\nmatrix: {model: [a], input_size: [32], target: ["llvm -mcpu=zn\\0ver3"]}\n',
     "LLVM does not know CPU"),
    ("\x00models: {}", "is not allowed"),
    ('models:\n  a: {source: "m:f"}\nmatrix: {model: [a], input_size: [32], disabled_passes: [[[x]]]}\n',
     "a pass name must be a non-empty string"),
])
def test_inputs_the_fuzzer_found_or_might_find(text, message):
    with pytest.raises(ConfigError, match=message):
        parse_specs(text, filename="f.yaml")
