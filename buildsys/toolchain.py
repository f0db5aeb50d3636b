"""Versions of everything that shapes a build's output.

Read from package metadata, never by importing the packages: planning a build
must stay cheap (``import torch`` alone takes seconds).
"""

from __future__ import annotations

import functools
from importlib import metadata

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


def package_version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


@functools.lru_cache(maxsize=1)
def toolchain_versions() -> dict[str, str | None]:
    """``{"torch": "2.14.1", "torchvision": ..., "tvm": ..., "tvm_ffi": ..., "buildsys": ...}``."""
    return {short: package_version(dist) for dist, short in TOOLCHAIN_PACKAGES.items()}


def runtime_versions() -> dict[str, str | None]:
    """What a deployment needs to match: the TVM runtime and its FFI."""
    return {"tvm": package_version("apache-tvm"), "tvm_ffi": package_version("apache-tvm-ffi")}
