"""A tiny CNN built for two NVIDIA GPU architectures on this CPU-only machine: real device code for
each (inspected with cuobjdump from pip, not taken from the manifest's word), recorded unverified
with the reason, refused by the loader here before any kernel is loaded, and nothing of the
build-time driver stand-in in what is shipped."""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from buildsys.artifacts import manifest as manifest_format
from buildsys.artifacts.store import Store
from tests.fixtures.capabilities import missing, need_module
from tests.fixtures.workspace import Workspace, tiny_cnn_config

pytestmark = pytest.mark.model

CONFIG = tiny_cnn_config('target: ["cuda -arch=sm_90,sm_80 -ptx=1"]')
FATBIN_MAGIC = bytes.fromhex("50ed55ba")  # 0xBA55ED50, little-endian


def _cuobjdump() -> str:
    nvidia = need_module("nvidia.cu13", "pip install 'buildsys[cuda]' (make venv installs it)")
    tool = Path(list(nvidia.__path__)[0]) / "bin" / "cuobjdump"
    if not tool.is_file():
        missing(f"no cuobjdump at {tool}: pip install nvidia-cuda-cuobjdump (the test extra)")
    return str(tool)


@pytest.fixture(scope="module")
def cuda_built(tmp_path_factory):
    need_module("cuda.bindings.nvfatbin", "pip install 'buildsys[cuda]' (make venv installs it)")
    ws = Workspace(tmp_path_factory.mktemp("cuda"), CONFIG)
    assert ws.cli("build") == 0
    (record,) = ws.registry.list()
    return ws, record


def _fatbins(library: bytes) -> list[bytes]:
    """Every fatbin embedded in a library: magic, version, header size, then the payload's size."""
    found, at = [], library.find(FATBIN_MAGIC)
    while at != -1:
        _magic, _version, header, size = struct.unpack_from("<IHHQ", library, at)
        found.append(library[at:at + header + size])
        at = library.find(FATBIN_MAGIC, at + header + size)
    return found


def test_device_code_for_each_architecture_is_in_the_library(cuda_built, tmp_path):
    ws, record = cuda_built
    library = Store(ws.store).object_path(record.file("lib.so").digest).read_bytes()
    (fatbin,) = _fatbins(library)
    (tmp_path / "kernels.fatbin").write_bytes(fatbin)
    listed = subprocess.run([_cuobjdump(), "--list-elf", "--list-ptx", str(tmp_path / "kernels.fatbin")],
                            capture_output=True, text=True, check=True).stdout
    assert ".sm_80.cubin" in listed and ".sm_90.cubin" in listed and ".sm_90.ptx" in listed, listed
    elf = subprocess.run([_cuobjdump(), "--dump-elf", str(tmp_path / "kernels.fatbin")],
                         capture_output=True, text=True, check=True).stdout
    for arch in ("sm_80", "sm_90"):  # each image holds the kernels' machine code (.text.<kernel> sections)
        image = elf.split(f"arch = {arch}", 1)[1].split("arch = ", 1)[0]
        assert ".text." in image and "_kernel" in image, image[:2000]
    assert b"build-time stub" not in library and b"libcuda.so.1" not in library  # the stand-in never ships


def test_the_manifest_says_what_gpus_it_needs_and_that_nothing_ran_it(cuda_built):
    ws, record = cuda_built
    manifest = manifest_format.read_stored(Store(ws.store), record)
    cuda = manifest["cuda"]
    assert cuda["archs"] == ["sm_80", "sm_90"] and cuda["ptx"] is True
    assert [(i["kind"], i["arch"]) for i in cuda["images"]] == [("cubin", "sm_80"), ("cubin", "sm_90"),
                                                               ("ptx", "compute_90")]
    assert all(i["bytes"] > 1000 for i in cuda["images"]) and cuda["fatbin_bytes"] > sum(
        i["bytes"] for i in cuda["images"][:2])
    assert cuda["cuda_version"] == "13.0" and cuda["min_driver"] == "580.65.06"
    assert cuda["compiler"]["nvidia-cuda-nvrtc"].startswith("13.0")
    assert manifest["toolchain"]["nvrtc"] == cuda["compiler"]["nvidia-cuda-nvrtc"]
    assert manifest["verification"]["status"] == "unverified"
    assert "no NVIDIA GPU" in manifest["verification"]["reason"]
    assert manifest["parity"]["max_rel"] is None and manifest["latency"]["artifact_ms"] is None
    assert record.status == "unverified"


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="machine-dependent: this machine has a GPU")
def test_the_loader_refuses_it_here_before_loading_anything(cuda_built, capsys):
    ws, record = cuda_built
    capsys.readouterr()
    assert ws.cli("run", record.key[:10]) == 7
    err = capsys.readouterr().err
    assert "is CUDA code for sm_80, sm_90 (+PTX)" in err and "this machine has no CUDA driver" in err, err
    assert ws.cli("keygen", "-o", str(ws.root / "release.key")) == 0
    capsys.readouterr()
    assert ws.cli("export", record.key[:10], "-o", str(ws.root / "out"), "--sign-key", str(ws.root / "release.key")) == 2
    err = capsys.readouterr().err  # a signature vouches for what it signs: never run, not signed without a word
    assert "never verified" in err and "cuda sm_80,sm_90" in err and "on a GPU" in err, err
