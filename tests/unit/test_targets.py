import pytest

from buildsys.errors import TargetError
from buildsys.config.targets import normalize_target, parse_cli_target, to_tvm


def test_cli_string_translates_to_dict():
    assert parse_cli_target("llvm -mcpu=skylake-avx512 -num-cores=4") == {
        "kind": "llvm", "mcpu": "skylake-avx512", "num-cores": "4"}


@pytest.mark.parametrize("raw, expected", [
    ("llvm", {"kind": "llvm"}),
    ("llvm -mcpu=znver3 -num-cores=2", {"kind": "llvm", "mcpu": "znver3", "num-cores": 2}),
    ({"kind": "llvm", "mcpu": "znver3", "num-cores": 2}, {"kind": "llvm", "mcpu": "znver3", "num-cores": 2}),
    ("llvm -mattr=+avx2,+fma", {"kind": "llvm", "mattr": ["+avx2", "+fma"]}),
])
def test_normalize(raw, expected):
    assert normalize_target(raw) == expected


def test_string_and_dict_forms_normalize_identically():
    assert normalize_target("llvm -num-cores=2 -mcpu=znver4") == normalize_target(
        {"kind": "llvm", "mcpu": "znver4", "num-cores": "2"})


def test_native_resolves_to_this_host():
    from tvm.target import codegen
    assert normalize_target("llvm -mcpu=native")["mcpu"] == codegen.llvm_get_system_cpu()


@pytest.mark.parametrize("raw, message", [
    ("llvm -mcpu=skylake-avx512 -libs=mkl", "built without MKL"),
    ("vulkan", "vulkan targets are not supported yet"),
    ("lvm", "did you mean 'llvm'"),
    ("llvm -mcpu=bogus", "LLVM does not know CPU 'bogus'"),
    ("llvm -mcpu", "has no value"),
    ("llvm mcpu=znver3", "unexpected word"),
    ("llvm -num-cores=zero", "whole number"),
    ("llvm -num-cores=0", "between 1 and 1024"),
    ("llvm -mattr=avx2", "mattr entries look like"),
    ("llvm -mcpu=znver3 -mcpu=znver4", "given twice"),
    ("", "empty target string"),
    (42, "a target is a string"),
    ({"mcpu": "znver3"}, "has no kind"),
])
def test_bad_targets_are_refused_with_reason(raw, message):
    with pytest.raises(TargetError) as info:
        normalize_target(raw)
    assert message in str(info.value)


def test_normalized_target_is_accepted_by_tvm():
    target = to_tvm(normalize_target("llvm -mcpu=znver3 -num-cores=2 -mattr=+avx2"))
    assert target.kind.name == "llvm"
    assert str(target.attrs["mcpu"]) == "znver3"


def test_format_round_trips():
    normalized = normalize_target("llvm -num-cores=2 -mcpu=znver3")
    assert normalized.cli() == "llvm -mcpu=znver3 -num-cores=2"
    assert normalize_target(normalized.cli()) == normalized


@pytest.mark.parametrize("triple, message", [
    ("garbage", "is not an LLVM target triple"),
    ("garbage-unknown-linux", "LLVM has no architecture 'garbage'"),
    ("x86_64-linux-gnu; rm -rf /", "is not an LLVM target triple"),
    ("aarch6-linux-gnu", "did you mean 'aarch64'"),
])
def test_hostile_triples_are_refused_before_any_llvm_call(triple, message):
    """`mtriple: garbage` once made LLVM segfault the planner; now it never reaches LLVM."""
    for raw in ({"kind": "llvm", "mtriple": triple}, {"kind": "llvm", "mtriple": triple, "mcpu": "znver3"}):
        with pytest.raises(TargetError, match=message):
            normalize_target(raw)


def test_a_name_far_from_every_choice_gets_no_suggestion():
    """`-mtriple=garbage-...` was answered "did you mean 'armeb'?" (difflib found shared letters);
    a hint now needs a name a slip or two away."""
    with pytest.raises(TargetError) as info:
        normalize_target({"kind": "llvm", "mtriple": "garbage-unknown-linux"})
    assert "LLVM has no architecture 'garbage'" in str(info.value)
    assert "did you mean" not in str(info.value) and "e.g. x86_64-linux-gnu" in str(info.value)
    from buildsys.errors import did_you_mean

    assert did_you_mean("garbage", ["armeb", "arm", "aarch64"]) is None
    assert did_you_mean("tyni", ["tiny", "upsample"]) == "did you mean 'tiny'?"
    assert did_you_mean("FoldConstnt", ["FoldConstant", "FuseOps"]) == "did you mean 'FoldConstant'?"


def test_cpus_of_a_foreign_triple_are_validated_too():
    assert normalize_target({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a72"})["mcpu"] == \
        "cortex-a72"
    with pytest.raises(TargetError, match="LLVM does not know CPU 'znver3' for triple aarch64-linux-gnu"):
        normalize_target({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "znver3"})
    with pytest.raises(TargetError, match="cannot run code for aarch64"):
        normalize_target({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "native"})


def test_tvm_facts_are_cached_per_tvm_version_and_regenerated_when_stale(tmp_path, monkeypatch):
    import json

    from buildsys.config import tvmfacts
    monkeypatch.setenv("BUILDSYS_CACHE_DIR", str(tmp_path))
    tvmfacts.facts.cache_clear()
    try:
        path = tvmfacts.facts_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        stale = {"format": tvmfacts.FACTS_FORMAT, "tvm": "0.0.1", "system_cpu": "stale", "system_triple": "x",
                 "archs": [], "cpus": {}, "passes": []}
        path.write_text(json.dumps(stale))
        fresh = tvmfacts.facts()
        assert fresh["system_cpu"] != "stale" and "x86_64" in fresh["archs"] and "FuseOps" in fresh["passes"]
        assert json.loads(path.read_text())["tvm"] == fresh["tvm"]
        tvmfacts.facts.cache_clear()
        path.write_text(json.dumps({**fresh, "system_cpu": "from-cache"}))
        assert tvmfacts.facts()["system_cpu"] == "from-cache"  # read, not regenerated
        tvmfacts.facts.cache_clear()
        path.write_text("{not json")
        assert tvmfacts.facts()["system_cpu"] == fresh["system_cpu"]  # a broken cache is regenerated
    finally:
        tvmfacts.facts.cache_clear()
