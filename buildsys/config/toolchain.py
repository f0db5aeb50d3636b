"""Versions of everything that shapes a build's output.

Read from package metadata, never by importing the packages: planning a build
must stay cheap (``import torch`` alone takes seconds).
"""

from __future__ import annotations

import functools
from typing import Any, Mapping

from buildsys.format.versions import package_version

# distribution name -> short name used in keys and manifests
TOOLCHAIN_PACKAGES = {
    "torch": "torch",
    "torchvision": "torchvision",
    "apache-tvm": "tvm",
    "apache-tvm-ffi": "tvm_ffi",
    "onnx": "onnx",  # the detection route exports through ONNX
    "onnxsim": "onnxsim",
    "buildsys": "buildsys",
}


# What compiles a CUDA target's device code (buildsys[cuda]): in its entries' keys and manifests only,
# so CPU keys stay what they were.
CUDA_PACKAGES = {"nvidia-cuda-nvrtc": "nvrtc", "nvidia-cuda-cccl": "cccl", "nvidia-nvfatbin": "nvfatbin"}


def toolchain_for(target: Mapping[str, Any], versions: Mapping[str, str | None] | None = None) -> dict:
    """The toolchain that shapes an entry for ``target``: ``toolchain_versions()`` (or ``versions``),
    plus the CUDA device compiler for a CUDA target."""
    found = dict(versions if versions is not None else toolchain_versions())
    if target.get("kind") == "cuda":  # (targets.is_cuda; targets imports this module's users)
        found.update({short: package_version(dist) for dist, short in CUDA_PACKAGES.items()})
    return found


@functools.lru_cache(maxsize=1)
def toolchain_versions() -> dict[str, str | None]:
    """``{"torch": "2.14.1", "torchvision": ..., "tvm": ..., "tvm_ffi": ..., "buildsys": ...}``, and
    ``buildsys_tree`` when buildsys runs from a checkout (an editable install)."""
    versions = {short: package_version(dist) for dist, short in TOOLCHAIN_PACKAGES.items()}
    from buildsys import __version__

    versions["buildsys"] = __version__  # the code that runs, whatever metadata a checkout has lying around
    tree = _editable_tree_digest()
    if tree is not None:
        versions["buildsys_tree"] = tree
    return versions


def _editable_tree_digest() -> str | None:
    """In a checkout, buildsys' version does not move with each edit of its compiler code, so a
    build system developer's edit of a schedule would be answered from the cache: the key then
    holds the digest of buildsys' own Python files as well. An installed wheel needs none."""
    import hashlib
    import os

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # buildsys/
    if any(part in ("site-packages", "dist-packages") for part in root.split(os.sep)):
        return None  # an installed wheel: its version names its code
    digest = hashlib.sha256()
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for name in sorted(f for f in files if f.endswith(".py")):
            path = os.path.join(folder, name)
            with open(path, "rb") as handle:
                digest.update(os.path.relpath(path, root).encode() + b"\0" + handle.read() + b"\0")
    return f"sha256:{digest.hexdigest()}"
