"""The target type every layer asks its questions of (buildsys/format/target.py)."""

from __future__ import annotations

import json
import pickle

import pytest

from buildsys import platforms
from buildsys.errors import TargetError
from buildsys.format.target import Target

A72 = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a72", "mattr": ["+dotprod", "+neon"]}
CUDA = {"kind": "cuda", "arch": ["sm_80", "sm_90"], "ptx": True, "host": A72}


def test_a_cpu_target_answers_for_itself():
    target = Target(A72)
    assert target.kind == "llvm" and not target.is_cuda and target.host is target
    assert (target.triple, target.arch, target.mcpu, target.mattr) == (
        "aarch64-linux-gnu", "aarch64", "cortex-a72", ("+dotprod", "+neon"))
    assert target.cuda_archs == () and target.ptx is False
    assert target.is_cross("x86_64") and not target.is_cross("aarch64")
    assert target.platform() is platforms.PLATFORMS["aarch64"] and target.gnu_triple == "aarch64-linux-gnu"
    assert target.cli() == "llvm -mattr=+dotprod,+neon -mcpu=cortex-a72 -mtriple=aarch64-linux-gnu"


def test_a_plain_target_is_this_hosts():
    target = Target({"kind": "llvm"})
    assert target.triple is None and target.arch is None and not target.is_cross()
    assert target.platform() is platforms.for_arch(platforms.host_arch())
    assert target.gnu_triple == target.platform().triple and target.mattr == ()


def test_a_cuda_target_answers_for_its_host_code():
    target = Target(CUDA)
    assert target.is_cuda and isinstance(target.host, Target) and target.host == A72
    assert target.cuda_archs == ("sm_80", "sm_90") and target.ptx
    assert target.arch == "aarch64" and target.mcpu == "cortex-a72" and target.is_cross("x86_64")
    assert target.cli() == ("cuda -arch=sm_80,sm_90 "
                            "-host='llvm -mattr=+dotprod,+neon -mcpu=cortex-a72 -mtriple=aarch64-linux-gnu' -ptx=1")


def test_its_json_is_the_dict_it_was_made_from():
    """The key's JSON and equality with plain dicts hold: keys do not change with the type."""
    for raw in (A72, CUDA, {"kind": "llvm"}):
        target = Target(raw)
        assert target == raw and json.dumps(target, sort_keys=True) == json.dumps(raw, sort_keys=True)
        assert hash(target) == hash(Target(json.loads(json.dumps(raw))))
        again = pickle.loads(pickle.dumps(target))
        assert type(again) is Target and again == target and isinstance(again.host, Target)


def test_it_cannot_be_changed():
    target = Target(CUDA)
    with pytest.raises(TypeError):
        target["mcpu"] = "native"
    with pytest.raises(TypeError):
        target.host["mcpu"] = "native"
    with pytest.raises(TypeError):
        target["arch"].append("sm_100")


def test_an_architecture_without_a_row_is_a_target_error():
    target = Target({"kind": "llvm", "mtriple": "mips-linux-gnu"})
    assert target.arch == "mips" and target.is_cross("x86_64")
    with pytest.raises(TargetError, match="no platform row for architecture 'mips'"):
        target.platform()


@pytest.mark.parametrize("value, message", [
    ("llvm", "is not a target"), ([1, 2], "is not a target"), ({"nokind": 1}, "is not a target"),
    ({"kind": "cuda"}, "names its architectures"), ({"kind": "cuda", "arch": ["sm_80"]}, "is not a target"),
])
def test_a_target_read_from_outside_is_refused_unless_it_has_the_normalized_shape(value, message):
    with pytest.raises(ValueError, match=message):
        Target.read(value)
    assert Target.read(CUDA) == CUDA and isinstance(Target.read(CUDA).host, Target)


def test_a_damaged_target_column_is_a_registry_error_not_a_traceback(tmp_path):
    from buildsys.artifacts.registry.api import _artifact_record
    from buildsys.artifacts.registry.tables import Artifact
    from buildsys.errors import RegistryError

    row = Artifact(key="ab" * 32, target='"llvm"')
    with pytest.raises(RegistryError, match="artifact abababababab: the registry's target column is damaged"):
        _artifact_record(row)
