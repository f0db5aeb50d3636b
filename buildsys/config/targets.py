"""Classic TVM target strings -> the normalized ``Target`` (``format/target.py``) -> TVM's target.

TVM 0.27 rejects ``"llvm -mcpu=skylake-avx512"`` ("CLI target string form ...
is no longer supported"), yet every tutorial writes it. We accept both forms,
validate every option (TVM prints an error line for an unknown ``mcpu`` and
silently falls back to generic x86-64, which runs tuned code 8x slower), and
keep one normalized dict that goes into the build key.
"""

from __future__ import annotations

import json
import shlex
from typing import Any, Mapping

from buildsys import platforms
from buildsys.errors import TargetError, did_you_mean
from buildsys.format.target import Target

SUPPORTED_KINDS = ("llvm", "cuda")
# The architectures CUDA 13's NVRTC compiles for (nvrtcGetSupportedArchs; planning does not load it).
CUDA_ARCHS = ("sm_75", "sm_80", "sm_86", "sm_87", "sm_88", "sm_89", "sm_90", "sm_90a", "sm_100", "sm_100a",
              "sm_103", "sm_103a", "sm_110", "sm_110a", "sm_120", "sm_120a", "sm_121", "sm_121a")
_CUDA_OPTIONS = ("arch", "host", "ptx")
# option name -> parser of its value
_OPTIONS = ("mcpu", "mtriple", "mattr", "num-cores", "mabi", "opt-level")
_UNSUPPORTED = {
    "libs": "this TVM wheel is built without MKL, BLAS, cuDNN or DNNL, so no -libs value can be honoured; "
            "drop the option",
    "device": "device options are for GPU targets other than cuda, which buildsys does not build",
    "host": "a separate host target is only meaningful for GPU targets (kind: cuda)",
}
_KNOWN_NON_CPU_KINDS = ("rocm", "vulkan", "metal", "opencl", "webgpu", "hexagon", "c")


def _int_option(name: str, value: Any, where: str) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise TargetError(f"option {name!r} needs a whole number, got {value!r}", field=where) from None
    if number < 1 or number > 1024:
        raise TargetError(f"option {name!r} must be between 1 and 1024, got {number}", field=where)
    return number


def parse_cli_target(text: str, where: str = "target") -> dict:
    """``"llvm -mcpu=znver3 -num-cores=2"`` -> ``{"kind": "llvm", "mcpu": "znver3", "num-cores": 2}``.

    Syntax only; see ``normalize_target`` for validation against this TVM.
    """
    try:
        words = shlex.split(text)
    except ValueError as exc:
        raise TargetError(f"cannot parse target string {text!r}: {exc}", field=where) from None
    if not words:
        raise TargetError("empty target string", field=where, hint='write e.g. "llvm" or "llvm -mcpu=znver3"')
    result: dict[str, Any] = {"kind": words[0]}
    for word in words[1:]:
        if not word.startswith("-"):
            raise TargetError(f"unexpected word {word!r} in target string {text!r}", field=where,
                              hint="options look like -name=value, e.g. -mcpu=znver3")
        name, sep, value = word.lstrip("-").partition("=")
        if not sep:
            raise TargetError(f"option {word!r} has no value in target string {text!r}", field=where,
                              hint=f"write -{name}=VALUE")
        if name in result:
            raise TargetError(f"option {name!r} given twice in target string {text!r}", field=where)
        result[name] = value
    return result


def normalize_target(raw: Any, where: str = "target") -> Target:
    """Validate a target (CLI string or dict) and return it normalized (``format/target.Target``).

    ``-mcpu=native`` resolves to this host's CPU name, so the key records the
    CPU that the code was really compiled for.
    """
    if isinstance(raw, str):
        target = parse_cli_target(raw, where)
    elif isinstance(raw, Mapping):
        target = dict(raw)
    else:
        raise TargetError(f"a target is a string such as \"llvm -mcpu=znver3\" or a mapping, got {type(raw).__name__}",
                          field=where)

    kind = target.pop("kind", None)
    if kind is None:
        raise TargetError("the target has no kind", field=where, hint='add kind: llvm')
    if kind == "cuda":
        return _normalize_cuda(target, where)
    if kind not in SUPPORTED_KINDS:
        why = (f"{kind} targets are not supported yet" if kind in _KNOWN_NON_CPU_KINDS
               else f"unknown target kind {kind!r}")
        raise TargetError(f"{why}; buildsys builds for: {', '.join(SUPPORTED_KINDS)}", field=where,
                          hint=did_you_mean(str(kind), SUPPORTED_KINDS))

    normalized: dict[str, Any] = {"kind": kind}
    for name, value in target.items():
        if name in _UNSUPPORTED:
            raise TargetError(f"option {name!r} is not supported: {_UNSUPPORTED[name]}", field=where)
        if name not in _OPTIONS:
            raise TargetError(f"unknown target option {name!r}", field=where,
                              hint=did_you_mean(name, _OPTIONS) or f"known options: {', '.join(_OPTIONS)}")
        if name in ("num-cores", "opt-level"):
            normalized[name] = _int_option(name, value, where)
        elif name == "mattr":
            attrs = value.split(",") if isinstance(value, str) else list(value)
            bad = [a for a in attrs if not a or a[0] not in "+-"]
            if bad:
                raise TargetError(f"mattr entries look like +avx2 or -avx512f, got {bad}", field=where)
            normalized[name] = sorted(attrs)
        else:
            if not isinstance(value, str) or not value:
                raise TargetError(f"option {name!r} needs a non-empty string", field=where)
            normalized[name] = value

    if "mtriple" in normalized:
        normalized["mtriple"] = _validate_mtriple(normalized["mtriple"], where)
    if "mcpu" in normalized:
        normalized["mcpu"] = _validate_mcpu(normalized["mcpu"], normalized.get("mtriple"), where)
    return Target(normalized)


def _normalize_cuda(options: dict, where: str) -> Target:
    """``{kind: cuda, arch: [sm_80, sm_90], ptx: true, host: {kind: llvm, ...}}``: device code for
    each architecture (sorted), PTX of the newest for GPUs newer than all of them when ``ptx``, and
    the host code's CPU target (default: plain ``llvm``, this host's architecture)."""
    for name in options:
        if name not in _CUDA_OPTIONS:
            where_to = (f"; {name} is a CPU option: give it to the host code, host: {{kind: llvm, {name}: ...}}"
                        if name in _OPTIONS else "")
            raise TargetError(f"option {name!r} is not a CUDA target option{where_to}", field=where,
                              hint=did_you_mean(name, _CUDA_OPTIONS) or f"CUDA options: {', '.join(_CUDA_OPTIONS)}")
    raw = options.get("arch")
    if raw is None:
        raise TargetError("a CUDA target names the GPU architectures it is for", field=where,
                          hint="e.g. cuda -arch=sm_80 (A100), -arch=sm_80,sm_90 (A100 and H100)")
    archs = raw.split(",") if isinstance(raw, str) else raw
    if not isinstance(archs, (list, tuple)) or not archs or not all(isinstance(a, str) for a in archs):
        raise TargetError(f"arch is an architecture name or a list of them, got {raw!r}", field=where)
    for arch in archs:
        if arch not in CUDA_ARCHS:
            raise TargetError(f"unknown CUDA architecture {arch!r} (CUDA 13 builds {', '.join(CUDA_ARCHS)})",
                              field=where, hint=did_you_mean(arch, CUDA_ARCHS) or "e.g. sm_80 for A100, sm_90 for H100")
    if len(set(archs)) != len(archs):
        raise TargetError(f"arch lists an architecture twice: {archs}", field=where)
    normalized: dict[str, Any] = {"kind": "cuda", "arch": sorted(archs, key=platforms.cuda_arch_number)}
    ptx = options.get("ptx", False)
    if isinstance(ptx, str) and ptx.lower() in ("1", "true", "yes", "0", "false", "no"):
        ptx = ptx.lower() in ("1", "true", "yes")
    if not isinstance(ptx, bool):
        raise TargetError(f"ptx is true or false, got {ptx!r}", field=where)
    if ptx:
        normalized["ptx"] = True
    host = normalize_target(options.get("host", "llvm"), f"{where}.host")
    if host["kind"] != "llvm":
        raise TargetError(f"the host code of a CUDA target is CPU code (kind: llvm), got {host['kind']!r}",
                          field=f"{where}.host")
    normalized["host"] = host
    return Target(normalized)


def _validate_mcpu(mcpu: str, mtriple: str | None, where: str) -> str:
    """Checked against the CPU names LLVM knows for the triple, from the cached TVM facts
    (``tvmfacts``): planning never imports TVM, and no LLVM call sees an unchecked triple."""
    from buildsys.config import tvmfacts
    data = tvmfacts.facts()
    triple = mtriple or data["system_triple"]
    if mcpu == "native":
        if mtriple is not None and tvmfacts.triple_arch(mtriple) != tvmfacts.triple_arch(data["system_triple"]):
            raise TargetError(f"-mcpu=native means this host's CPU, which cannot run code for {mtriple}",
                              field=where, hint="name the CPU of the target machine")
        return data["system_cpu"]
    try:
        choices = tvmfacts.cpus_for_triple(triple)
    except TargetError as exc:
        raise TargetError(exc.message, field=where, hint=exc.hint) from None
    if mcpu not in choices:
        raise TargetError(
            f"LLVM does not know CPU {mcpu!r} for triple {triple} (TVM would silently fall back to generic "
            "x86-64)", field=where,
            hint=did_you_mean(mcpu, choices) or f"this host is {data['system_cpu']!r}; -mcpu=native picks it")
    return mcpu


def _validate_mtriple(mtriple: str, where: str) -> str:
    from buildsys.config import tvmfacts
    if not all(c.isalnum() or c in "-_." for c in mtriple) or mtriple.count("-") < 1:
        raise TargetError(f"{mtriple!r} is not an LLVM target triple", field=where,
                          hint="triples look like x86_64-linux-gnu or aarch64-linux-gnu")
    archs = tvmfacts.facts()["archs"]
    arch = tvmfacts.triple_arch(mtriple)
    if arch not in archs:
        raise TargetError(f"LLVM has no architecture {arch!r} (from triple {mtriple!r})", field=where,
                          hint=did_you_mean(arch, archs) or "e.g. x86_64-linux-gnu")
    if platforms.for_arch(arch) is None:
        raise TargetError(f"buildsys cannot link or load code for architecture {arch!r} (from triple {mtriple!r})",
                          field=where, hint=f"architectures with a row in buildsys/platforms.py: "
                                            f"{', '.join(platforms.PLATFORMS)}")
    return mtriple


def _tvm_target(target: Mapping[str, Any]):
    import tvm

    return tvm.target.Target(dict(target))


def _tvm_dict(target: Mapping[str, Any]) -> dict:
    if target.get("kind") == "cuda":  # code generated for the oldest architecture runs on every one listed
        return {"kind": "cuda", "arch": target["arch"][0], "host": _tvm_dict(target["host"])}
    tvm_dict = {k: (",".join(v) if isinstance(v, list) else v) for k, v in target.items()}
    if "mattr" in target:
        tvm_dict["mattr"] = list(target["mattr"])
    return tvm_dict


def to_tvm(target: Mapping[str, Any]):
    """A ``tvm.target.Target`` for a normalized target."""
    tvm_dict = _tvm_dict(target)
    try:
        return _tvm_target(tvm_dict)
    except Exception as exc:  # TVM raises its own error types; report the target we tried
        raise TargetError(f"TVM rejected target {json.dumps(tvm_dict)}: {exc}") from None


def required_features(target: Mapping[str, Any]) -> list[str]:
    """/proc/cpuinfo names of the features the code compiled for ``target`` may use, from its
    platform's row. Build side (needs TVM)."""
    target = Target(target).host
    if "mcpu" not in target and "mattr" not in target:
        return []  # the architecture's baseline instructions only
    from tvm.target import codegen

    names = target.platform().features
    enabled = {str(f) for f in codegen.llvm_get_cpu_features(to_tvm(target))}
    return sorted({names[f] for f in enabled if f in names})
