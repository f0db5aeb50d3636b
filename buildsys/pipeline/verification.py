"""Where a build's parity runs: here, on a board over TVM's RPC, under qemu-user, or nowhere.

A library for this host runs here. One for another architecture runs on a board when builds.yaml
(``verify.rpc``) or the environment (``BUILDSYS_RPC_TRACKER``, ``BUILDSYS_RPC_KEY``) names a tracker:
that is the real hardware (``remote``); else under qemu-user in a sysroot of its architecture
(``emulation``); else nowhere, and the artifact is published ``unverified`` with the reason. A board
that cannot be had fails the build instead (``remote`` says why); a missing emulator does not, as
nothing on this host could ever run the library. The manifest's ``verification`` records which.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Mapping

from buildsys import platforms
from buildsys.config.spec import BuildSpec
from buildsys.config.verify import RpcRoute, rpc_route
from buildsys.format.status import Verification



def board_for(spec: BuildSpec) -> RpcRoute | None:
    """The board a build of ``spec`` verifies on, if any: read before minutes of work, so that a
    malformed ``BUILDSYS_RPC_*`` fails first. A library for this host never needs one."""
    return rpc_route(spec.rpc) if spec.target.is_cross() else None


def run_checks(spec: BuildSpec, key: str, library: Path, vm, params, checked: Mapping,
               board: RpcRoute | None = None):
    """Run the library on each parity input: here (``vm``), on ``board``, or under qemu-user.
    Returns ({batch: (outputs, ms)}, the manifest's ``verification``); no runs when nothing can run
    it (then the reason is in ``verification``)."""
    if spec.target.is_cuda:
        return {}, _gpu_unverified(spec, key)
    if vm is not None:
        return _run_here(vm, params, checked), {"status": Verification.VERIFIED, "how": "native", "host_arch": platforms.host_arch()}
    inputs = {size: [t.numpy() for t in inputs] for size, (inputs, _reference) in checked.items()}
    if board is not None:
        from buildsys.pipeline import remote

        print(f"[buildsys] {key[:12]}: verifying on a board over RPC (tracker {board.tracker}, key {board.key!r})",
              flush=True)
        ran, where = remote.run(board, library, params, inputs, key=key)
        return ran, {"status": Verification.VERIFIED, "how": "rpc", **board.to_dict(), **where, "host_arch": platforms.host_arch()}
    from buildsys.pipeline import emulation

    row = spec.target.platform()
    try:
        ran = emulation.run(row, library, params, inputs, key=key)
    except emulation.Unavailable as exc:
        print(f"[buildsys] {key[:12]}: built for {spec.target.gnu_triple}, NOT verified: {exc}", flush=True)
        return {}, {"status": Verification.UNVERIFIED, "how": None, "host_arch": platforms.host_arch(),
                    "reason": f"no way to run {row.arch} code on this {platforms.host_arch()} host: {exc}"}
    return ran, {"status": Verification.VERIFIED, "how": "qemu-user", "emulator": row.emulator, "host_arch": platforms.host_arch(),
                 "sysroot": emulation.sysroot_path(row).name}


def _gpu_unverified(spec: BuildSpec, key: str) -> dict:
    """A CUDA artifact's verification: nothing on this CPU builder runs it. (With a GPU here, parity
    on it is the next step of the CUDA work: README "CUDA targets".)"""
    from buildsys.compiler.cuda import driver_present

    archs = ", ".join(spec.target.cuda_archs)
    why = (f"CUDA code for {archs}: parity on this machine's GPU is not implemented yet" if driver_present()
           else f"CUDA code for {archs}: this builder has no NVIDIA GPU (no CUDA driver)")
    print(f"[buildsys] {key[:12]}: NOT verified: {why}", flush=True)
    return {"status": Verification.UNVERIFIED, "how": None, "host_arch": platforms.host_arch(), "reason": why}


def _run_here(vm, params, checked: Mapping) -> dict:
    from buildsys.runtime.ffi import outputs_to_numpy, to_device

    weights = [to_device(p) for p in params]
    ran = {}
    for size, (inputs, _reference) in checked.items():
        args = [to_device(t.numpy()) for t in inputs] + weights
        start = time.perf_counter()
        actual = outputs_to_numpy(vm["main"](*args))
        ran[size] = (actual, (time.perf_counter() - start) * 1e3)
    return ran
