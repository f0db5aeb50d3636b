"""What planning needs to know about TVM and its LLVM, without importing TVM.

Validating a matrix needs three facts from TVM: which CPU names LLVM accepts
for a triple (TVM silently falls back to generic x86-64 on an unknown
``mcpu``), what ``-mcpu=native`` resolves to on this host, and which pass
names exist (``PassContext`` ignores unknown ones). Importing TVM to ask costs
about 3 s and 850 MB (it imports torch), which made ``buildsys plan`` slow.

So the facts are generated once per (TVM version, host CPU) in a child
process, which is the only process that imports TVM (it also keeps an LLVM
crash on a hostile triple out of the planner), and cached as JSON under
``$BUILDSYS_CACHE_DIR`` (default ``$XDG_CACHE_HOME/buildsys`` or
``~/.cache/buildsys``). A new TVM version or another CPU gets a new file.
CPU lists for a foreign triple are asked for on first use and added.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

from buildsys.errors import TargetError
from buildsys.format.files import atomic_write
from buildsys.platforms import ARCH_ALIASES, triple_arch  # noqa: F401 - part of this module's interface
from buildsys.config.toolchain import package_version

FACTS_FORMAT = 1
GENERATE_TIMEOUT_S = 300
# TVM registers each pass's constructor as a global function; these give the names PassContext compares.
_PREFIXES = {"tirx.transform.": "tirx.", "s_tir.transform.": "s_tir."}


def _pass_name(global_func: str) -> str | None:
    for prefix, pass_prefix in _PREFIXES.items():
        if global_func.startswith(prefix):
            return pass_prefix + global_func[len(prefix):]
    if global_func.startswith("relax.") and ".transform." in global_func:
        return global_func.rsplit(".", 1)[1]
    return None


def pass_names_from_registry(global_func_names) -> set[str]:
    """Pass names (as ``PassContext`` compares them) from TVM's registered global functions."""
    return {n for n in map(_pass_name, global_func_names) if n}


def cache_dir() -> Path:
    explicit = os.environ.get("BUILDSYS_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "buildsys"


def _host_fingerprint() -> str:
    """Changes when the CPU does (what -mcpu=native resolves to)."""
    model, flags = "", ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if line.startswith("model name") and not model:
                    model = line
                elif line.startswith(("flags", "Features")) and not flags:
                    flags = line
                if model and flags:
                    break
    except OSError:
        pass
    text = "\n".join((platform.machine(), model, flags))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def facts_path() -> Path:
    version = package_version("apache-tvm") or "none"
    return cache_dir() / f"tvm-facts-{version}-{_host_fingerprint()}.json"


@functools.lru_cache(maxsize=1)
def facts() -> dict:
    """The cached facts, generated in a child process when missing or stale."""
    path = facts_path()
    try:
        data = json.loads(path.read_text())
        if isinstance(data, dict) and data.get("format") == FACTS_FORMAT and \
                data.get("tvm") == package_version("apache-tvm"):
            return data
    except (OSError, ValueError):
        pass
    data = _generate([])
    _write(path, data)
    return data


def cpus_for_triple(triple: str) -> list[str]:
    """CPU names LLVM accepts for ``triple``; a new arch is asked for once and cached."""
    data = facts()
    arch = triple_arch(triple)
    if arch not in data["archs"]:
        raise TargetError(f"LLVM in TVM {data['tvm']} has no architecture {arch!r} (from triple {triple!r})",
                          hint=f"architectures: {', '.join(sorted(data['archs']))}")
    if arch not in data["cpus"]:
        extra = _generate([_canonical_triple(arch)])
        data = {**data, "cpus": {**data["cpus"], **extra["cpus"]}}
        _write(facts_path(), data)
        facts.cache_clear()
    return data["cpus"].get(arch, [])


def _canonical_triple(arch: str) -> str:
    return f"{arch}-unknown-linux-gnu"


def _write(path: Path, data: dict) -> None:
    """Atomic; a cache that cannot be written is only slower next time."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, json.dumps(data, sort_keys=True))
    except OSError:
        pass


def _generate(triples: list[str]) -> dict:
    """Run ``python -m buildsys.config.tvmfacts TRIPLE...`` and read its JSON."""
    command = [sys.executable, "-m", "buildsys.config.tvmfacts", *triples]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=GENERATE_TIMEOUT_S, env=env)
    except subprocess.TimeoutExpired:
        raise TargetError(f"asking TVM for its LLVM facts took over {GENERATE_TIMEOUT_S} s") from None
    if done.returncode != 0:
        how = f"signal {-done.returncode}" if done.returncode < 0 else f"exit code {done.returncode}"
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise TargetError(f"asking TVM for its LLVM facts failed ({how}): {last}",
                          hint="is apache-tvm installed? `make venv` installs it")
    try:
        return json.loads(done.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise TargetError("asking TVM for its LLVM facts returned no JSON") from None


def _emit(triples: list[str]) -> dict:  # runs in the child process: the only place that imports TVM here
    import tvm
    import tvm_ffi
    from tvm.target import codegen

    system_triple = str(codegen.llvm_get_system_triple())
    archs = sorted(str(a) for a in codegen.llvm_get_targets())
    cpus = {}
    for triple in [system_triple, *triples]:
        target = tvm.target.Target({"kind": "llvm", "mtriple": triple})
        cpus[triple_arch(triple)] = sorted(str(c) for c in codegen.llvm_get_cpu_archlist(target))
    return {"format": FACTS_FORMAT, "tvm": package_version("apache-tvm"),
            "llvm_major": int(codegen.llvm_version_major()), "system_triple": system_triple,
            "system_cpu": str(codegen.llvm_get_system_cpu()), "archs": archs, "cpus": cpus,
            "passes": sorted(pass_names_from_registry(tvm_ffi.registry.list_global_func_names()))}


if __name__ == "__main__":  # pragma: no cover - exercised through _generate
    print(json.dumps(_emit(sys.argv[1:]), sort_keys=True))
