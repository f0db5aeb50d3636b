"""Installed package versions, from metadata (no import): what a deployment's runtime must match."""

from __future__ import annotations

from importlib import metadata


def package_version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def runtime_versions() -> dict[str, str | None]:
    """What a deployment needs to match: the TVM runtime and its FFI."""
    return {"tvm": package_version("apache-tvm"), "tvm_ffi": package_version("apache-tvm-ffi")}
