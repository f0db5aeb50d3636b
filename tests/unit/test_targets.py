import pytest

from buildsys.errors import TargetError
from buildsys.targets import format_cli_target, normalize_target, parse_cli_target, to_tvm


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
    ("cuda", "not supported"),
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
    assert format_cli_target(normalized) == "llvm -mcpu=znver3 -num-cores=2"
    assert normalize_target(format_cli_target(normalized)) == normalized
