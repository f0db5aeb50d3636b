"""CUDA targets without a GPU: what a target may say, what goes into the key, and the loader's
refusals (a GPU machine's facts injected, runtime/gpu.py)."""

from __future__ import annotations

import pytest

from buildsys.config import toolchain
from buildsys.config.spec import parse_specs
from buildsys.config.targets import normalize_target, to_tvm
from buildsys.format.target import Target
from buildsys.errors import CompatibilityError, TargetError
from buildsys.pipeline.plan import spec_key
from buildsys.runtime.gpu import GpuFacts, check_gpu, runs_on

A100_H100 = {"kind": "cuda", "arch": ["sm_80", "sm_90"], "host": {"kind": "llvm"}}


@pytest.mark.parametrize("raw, expected", [
    ("cuda -arch=sm_90,sm_80", A100_H100),
    ({"kind": "cuda", "arch": ["sm_90", "sm_80"]}, A100_H100),
    ("cuda -arch=sm_80 -ptx=1", {"kind": "cuda", "arch": ["sm_80"], "ptx": True, "host": {"kind": "llvm"}}),
    ({"kind": "cuda", "arch": "sm_86", "ptx": False, "host": "llvm -mcpu=znver3"},
     {"kind": "cuda", "arch": ["sm_86"], "host": {"kind": "llvm", "mcpu": "znver3"}}),
])
def test_cuda_targets_normalize(raw, expected):
    assert normalize_target(raw) == expected


def test_the_tvm_target_is_for_the_oldest_architecture_with_its_host():
    target = to_tvm(normalize_target("cuda -arch=sm_90,sm_80"))
    assert target.kind.name == "cuda" and str(target.attrs["arch"]) == "sm_80"
    assert target.host.kind.name == "llvm"
    assert Target(A100_H100).cli() == "cuda -arch=sm_80,sm_90 -host=llvm"


@pytest.mark.parametrize("raw, message", [
    ("cuda", "names the GPU architectures it is for"),
    ("cuda -arch=sm_81", "unknown CUDA architecture 'sm_81'"),
    ("cuda -arch=sm_60", "unknown CUDA architecture 'sm_60'"),  # CUDA 13 dropped Pascal
    ("cuda -arch=sm_80,sm_80", "lists an architecture twice"),
    ("cuda -arch=sm_80 -mcpu=znver3", "mcpu is a CPU option: give it to the host code"),
    ("cuda -arch=sm_80 -device=a100", "option 'device' is not a CUDA target option"),
    ("cuda -arch=sm_80 -ptx=maybe", "ptx is true or false"),
    ({"kind": "cuda", "arch": "sm_80", "host": "cuda -arch=sm_80"}, "host code of a CUDA target is CPU code"),
    ({"kind": "cuda", "arch": [80]}, "arch is an architecture name or a list"),
    ("rocm", "rocm targets are not supported yet"),
])
def test_bad_cuda_targets_are_refused_with_reason(raw, message):
    with pytest.raises(TargetError, match=message):
        normalize_target(raw)


CONFIG = """
models:
  m: {source: "tests.fixtures.models:tiny_cnn"}
matrix: {model: [m], input_size: [32], target: [%s]}
"""


def test_the_device_compilers_versions_are_in_a_cuda_key_only(monkeypatch):
    cuda_spec, = parse_specs(CONFIG % '"cuda -arch=sm_80"')
    cpu_spec, = parse_specs(CONFIG % '"llvm"')
    versions = {"nvidia-cuda-nvrtc": "13.0.88", "nvidia-cuda-cccl": "13.0.85", "nvidia-nvfatbin": "13.0.85"}
    monkeypatch.setattr(toolchain, "package_version", lambda name: versions.get(name, "1.0"))
    base = {"torch": "2.14.1", "tvm": "0.27.0.post1"}
    key, material = spec_key(cuda_spec, base)
    assert material["toolchain"] == {**base, "nvrtc": "13.0.88", "cccl": "13.0.85", "nvfatbin": "13.0.85"}
    assert spec_key(cpu_spec, base)[1]["toolchain"] == base  # CPU keys stay what they were
    versions["nvidia-cuda-nvrtc"] = "13.0.99"
    assert spec_key(cuda_spec, base)[0] != key
    versions["nvidia-cuda-nvrtc"], versions["nvidia-cuda-cccl"] = "13.0.88", "13.0.86"
    assert spec_key(cuda_spec, base)[0] != key


def test_one_target_per_architecture_set_is_one_key():
    a, = parse_specs(CONFIG % '"cuda -arch=sm_90,sm_80"')
    b, = parse_specs(CONFIG % '{kind: cuda, arch: [sm_80, sm_90], host: llvm}')
    c, = parse_specs(CONFIG % '"cuda -arch=sm_80,sm_90 -ptx=1"')
    assert spec_key(a, {})[0] == spec_key(b, {})[0] != spec_key(c, {})[0]


BUILT = {"archs": ["sm_80", "sm_90"], "ptx": False, "cuda_version": "13.0", "min_driver": "580.65.06"}


@pytest.mark.parametrize("facts, message", [
    (GpuFacts(None), "this machine has no CUDA driver"),
    (GpuFacts(13000, ()), "driver sees no GPU"),
    (GpuFacts(13000, ("sm_75",)), "GPU 0 is sm_75, which none of that code runs on: add -arch=sm_75"),
    (GpuFacts(12080, ("sm_80",)), "this machine's driver supports CUDA 12.8: upgrade it"),
    (GpuFacts(13000, ("sm_86",)), "can run it, but buildsys' thin runtime does not launch CUDA kernels yet"),
])
def test_the_loader_refuses_what_this_machine_cannot_run(facts, message):
    with pytest.raises(CompatibilityError, match=message) as info:
        check_gpu(BUILT, "ab" * 32, facts)
    assert "CUDA code for sm_80, sm_90" in str(info.value) and info.value.exit_code == 7


@pytest.mark.parametrize("device, ptx, runs", [
    ("sm_80", False, True), ("sm_86", False, True), ("sm_89", False, True), ("sm_90", False, True),
    ("sm_75", False, False), ("sm_100", False, False), ("sm_100", True, True), ("sm_120", True, True),
    ("sm_75", True, False),
])
def test_which_gpus_run_which_code(device, ptx, runs):
    assert runs_on({**BUILT, "ptx": ptx}, device) is runs
