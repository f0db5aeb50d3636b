"""Building on one architecture for another: the linker for the target, host code for the build.

``relax.build`` compiles for any architecture its LLVM has; ``export_library`` then links the
objects with a C++ driver, by default the host's g++, which fails or mislinks aarch64 objects. The
driver comes from the target's row in ``buildsys/platforms.py`` (``aarch64-linux-gnu-g++``, Debian
``g++-aarch64-linux-gnu``); a missing one is a build error that names the package.

Nothing built for the target runs on the build host: the weights are packed (and batch norms
folded) by ``main_transform_params``, which the build runs once, so that function is built a
second time for the host (``host_transform``) from the very module the target's build lifted it
into: same layouts, same arithmetic. Kernel FLOP counts are TVM's static estimate (no code runs).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Mapping

from buildsys.format.target import Target
from buildsys.errors import BuildError
from buildsys.platforms import elf_header, describe_elf

TRANSFORM = "main_transform_params"
HOST_TARGET = {"kind": "llvm"}  # generic host code: it runs once, at build time


def linker_for(target: Mapping, which=shutil.which, key: str | None = None) -> str | None:
    """Path of the C++ driver that links a library for ``target``; None for this host's own
    architecture (TVM's default). BuildError naming the Debian package when it is missing."""
    target = Target(target)
    if not target.is_cross():
        return None
    row = target.platform()
    found = which(row.compiler)
    if found is None:
        raise BuildError(
            f"building for {target.gnu_triple} needs the cross compiler {row.compiler}, which is not on PATH; "
            f"install the Debian package {row.compiler_package} (`apt-get install {row.compiler_package}`)",
            key=key, stage="serialize")
    return found


def export_library(executable, path: str, target: Mapping, key: str | None = None) -> None:
    """``executable.export_library(path)`` linked for ``target``, then checked: the ELF header must
    name the target's architecture (a host g++ given aarch64 objects can produce a host library)."""
    target = Target(target)
    linker = linker_for(target, key=key)
    try:
        if linker is None:
            executable.export_library(path)
        else:
            executable.export_library(path, cc=linker)
    except Exception as exc:  # noqa: BLE001 - TVM raises its own error types
        raise _serialize_error(exc, Path(path), key) from None
    machine, elf_class = elf_header(path)
    row = target.platform()
    if machine != row.elf_machine:
        raise BuildError(f"the library linked for {target.gnu_triple} is {describe_elf(machine, elf_class)} "
                         f"code, not {row.arch}: check the linker ({linker or 'the default'})", key=key, stage="serialize")


def host_transform(lifted_mod):
    """A host executable of ``main_transform_params`` alone, from the module the target's build
    lifted it into (None when there is none)."""
    import tvm
    from tvm import relax

    if lifted_mod is None or TRANSFORM not in {g.name_hint for g in lifted_mod.get_global_vars()}:
        return None
    functions = {gv: func for gv, func in lifted_mod.functions_items() if gv.name_hint != "main"}
    mod = tvm.IRModule(functions, attrs=lifted_mod.attrs)
    mod = relax.transform.DeadCodeElimination([TRANSFORM])(mod)
    try:
        return relax.build(mod, target=tvm.target.Target(HOST_TARGET))
    except Exception as exc:  # noqa: BLE001 - TVM raises its own error types
        raise BuildError(f"building {TRANSFORM} for the build host failed: {type(exc).__name__}: "
                         f"{str(exc)[-1000:]}", stage="compile") from None


def _serialize_error(exc: Exception, library: Path, key: str | None) -> BuildError:
    """export_library's failure in words. TVM says "Compilation error" whatever stopped the
    compiler or linker; when their output names a full disk (or a read-only one), that is the
    error, with the folder it concerns: the library's, or the temporary folder where TVM writes
    the object files, whichever has less room left (the linker removed its partial output)."""
    from buildsys.artifacts.space import describe_os_error, free_bytes, storage_errno_in

    text = f"{type(exc).__name__}: {exc}"
    code = storage_errno_in(text)
    if code is None:
        return BuildError(f"export_library failed: {text}", key=key, stage="serialize")
    where = min((library, Path(tempfile.gettempdir())), key=lambda p: free_bytes(p) or 0)
    return BuildError(f"writing the library: {describe_os_error(OSError(code, os.strerror(code)), where)}",
                      key=key, stage="serialize")
