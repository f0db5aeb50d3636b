"""Running code built for another architecture: qemu-user in a sysroot of that architecture.

A sysroot holds the target's Debian ``python3`` and ``libstdc++6`` (``mmdebstrap --variant=extract``,
no maintainer scripts, about 76 MB for arm64) and, under ``/opt/pysite``, the target's wheels of
TVM's runtime, its FFI and numpy, pinned to the builder's versions. It is made once and cached
under ``$BUILDSYS_CACHE_DIR/sysroots/<debian arch>-<digest>``, the digest being that of its recipe
(suite, packages, wheels and their versions, wheel platform), so a TVM upgrade makes a new one.
``qemu-<arch>-static -L ROOT ROOT/usr/bin/python3 -S -m buildsys.runtime.oneshot DIR`` then runs
the library: ``-S`` keeps the host's site-packages out, and buildsys' own (pure Python) package
is copied beside the inputs for each run, so the cached sysroot never holds a stale runtime.

What is missing (qemu, mmdebstrap, a wheel for the architecture, the network for the first
sysroot) is ``Unavailable``, with the package to install: the build is then recorded as built
but not verified. A library that fails under emulation is a failed build.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from buildsys.config.toolchain import package_version
from buildsys.config.tvmfacts import cache_dir
from buildsys.errors import BuildError
from buildsys.format.files import file_lock
from buildsys.platforms import Platform

SUITE = "bookworm"
SUITE_PYTHON = {"bookworm": "3.11"}
DEBIAN_PACKAGES = ("python3", "libstdc++6")
WHEELS = ("apache-tvm", "apache-tvm-ffi", "numpy")  # pinned to the builder's own versions
SITE = "opt/pysite"
RECIPE = "buildsys-sysroot.json"
SYSROOT_FORMAT = 1
TIMEOUT_S = int(os.environ.get("BUILDSYS_EMULATION_TIMEOUT", 3600))
PREPARE_TIMEOUT_S = 900


class Unavailable(Exception):
    """Emulation cannot run here; the text says why and what to install."""


def recipe(row: Platform) -> dict:
    """What a sysroot for ``row`` is made of; its digest names the directory."""
    if row.wheel_platform is None:
        raise Unavailable(f"PyPI has no apache-tvm wheel for {row.arch}: no sysroot with TVM's runtime can be made")
    pins = {name: package_version(name) for name in WHEELS}
    missing = [name for name, version in pins.items() if version is None]
    if missing:
        raise Unavailable(f"{', '.join(missing)} not installed in the builder: cannot pin the sysroot's wheels")
    return {"format": SYSROOT_FORMAT, "suite": SUITE, "debian_arch": row.debian_arch,
            "packages": list(DEBIAN_PACKAGES), "python": SUITE_PYTHON[SUITE], "wheel_platform": row.wheel_platform,
            "wheels": [f"{name}=={version}" for name, version in sorted(pins.items())]}


def sysroot_path(row: Platform) -> Path:
    text = json.dumps(recipe(row), sort_keys=True)
    return cache_dir() / "sysroots" / f"{row.debian_arch}-{hashlib.sha256(text.encode()).hexdigest()[:16]}"


def emulator(row: Platform) -> str:
    found = shutil.which(row.emulator) if row.emulator else None
    if found is None:
        raise Unavailable(f"{row.emulator or 'no qemu-user emulator'} is not installed: install the Debian package "
                          f"{row.emulator_package} (`apt-get install {row.emulator_package}`)")
    return found


def _run(command: list[str], what: str, timeout: int, **kwargs) -> None:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, **kwargs)
    except subprocess.TimeoutExpired:
        raise Unavailable(f"{what} took over {timeout} s") from None
    if done.returncode != 0:
        tail = " | ".join((done.stderr or done.stdout).strip().splitlines()[-3:])
        raise Unavailable(f"{what} failed (exit code {done.returncode}): {tail[-600:]}")


def sysroot(row: Platform, log=lambda text: print(text, file=sys.stderr, flush=True)) -> Path:
    """The cached sysroot for ``row``, made on first use (about 45 s; one maker at a time)."""
    root = sysroot_path(row)
    if (root / RECIPE).is_file():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(root.parent / f".{root.name}.lock"):
        if (root / RECIPE).is_file():  # made by another builder meanwhile
            return root
        if shutil.which("mmdebstrap") is None:
            raise Unavailable("mmdebstrap is not installed (it makes the sysroot emulated verification runs in): "
                              "install the Debian package mmdebstrap (`apt-get install mmdebstrap`)")
        plan = recipe(row)
        staging = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
        try:
            start = time.perf_counter()
            log(f"[buildsys] making a {row.debian_arch} sysroot for emulated verification: {root}")
            _run(["mmdebstrap", "--quiet", f"--arch={row.debian_arch}", "--variant=extract",
                  f"--include={','.join(DEBIAN_PACKAGES)}", SUITE, str(staging / "root")],
                 f"mmdebstrap ({row.debian_arch}, {SUITE})", PREPARE_TIMEOUT_S)
            _run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-compile",
                  "--target", str(staging / "root" / SITE), "--only-binary=:all:", "--platform", row.wheel_platform,
                  "--python-version", plan["python"], "--implementation", "cp", *plan["wheels"]],
                 f"pip install of {', '.join(plan['wheels'])} for {row.wheel_platform}", PREPARE_TIMEOUT_S)
            (staging / "root" / RECIPE).write_text(json.dumps(plan, indent=2, sort_keys=True) + "\n")
            os.replace(staging / "root", root)
            log(f"[buildsys] sysroot ready in {time.perf_counter() - start:.0f} s")
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return root


def runtime_copy(dest: Path) -> None:
    """buildsys' own package (pure Python) for the emulated interpreter, without caches."""
    import buildsys

    shutil.copytree(Path(buildsys.__file__).parent, dest / "buildsys",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "schemas"))


def python_command(row: Platform, root: Path, guest_path: list[str]) -> tuple[list[str], dict]:
    """(argv prefix, environment) of the sysroot's python3 under qemu with ``guest_path`` first."""
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": "/tmp",
           "PYTHONPATH": ":".join([*guest_path, "/" + SITE]), "PYTHONDONTWRITEBYTECODE": "1",
           "TVM_NUM_THREADS": os.environ.get("TVM_NUM_THREADS", str(min(os.cpu_count() or 1, 4)))}
    return [emulator(row), "-L", str(root), str(root / "usr" / "bin" / "python3"), "-S"], env


def run(row: Platform, library: Path, params, inputs: dict[int, list], key: str = "?",
        timeout: int = TIMEOUT_S) -> dict[int, tuple[list, float]]:
    """Run ``library`` on each batch's ``inputs`` under emulation: batch -> (outputs, emulated ms)."""
    from buildsys.runtime.oneshot import RESULT, collected, lay_out

    emulator(row)  # say what is missing before making a sysroot
    root = sysroot(row)
    # A host directory the sysroot has no counterpart of: qemu -L maps a guest path into the sysroot
    # only where that path exists there, so files created here land beside the inputs.
    work = Path(tempfile.mkdtemp(prefix="buildsys-run-"))
    try:
        lay_out(work, library, params, inputs)
        runtime_copy(work / "py")
        guest = str(work)
        command, env = python_command(row, root, [f"{guest}/py"])
        try:
            done = subprocess.run([*command, "-m", "buildsys.runtime.oneshot", guest], capture_output=True,
                                  text=True, timeout=timeout, env=env)
        except subprocess.TimeoutExpired:
            raise BuildError(f"the emulated run ({row.emulator}) took over {timeout} s "
                             "(BUILDSYS_EMULATION_TIMEOUT)", key=key, stage="verify") from None
        if done.returncode != 0:
            tail = "\n".join((done.stdout.strip() + "\n" + done.stderr.strip()).strip().splitlines()[-12:])
            raise BuildError(f"the library failed under {row.emulator} (exit code {done.returncode}):\n{tail}",
                             key=key, stage="verify")
        return collected(work, json.loads((work / RESULT).read_text())["ms"], inputs)
    finally:
        shutil.rmtree(work, ignore_errors=True)
