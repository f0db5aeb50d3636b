"""Pass names this TVM really has, so a disabled pass can be checked.

``PassContext(disabled_pass=[...])`` silently ignores names that are no pass;
a typo would then change nothing while the build key says it did. We refuse
such names instead.
"""

from __future__ import annotations

import functools

from buildsys.errors import PassError, did_you_mean

# buildsys' own passes, names `disabled_passes` accepts like TVM's:
# the pass that applies the default CPU schedules (compiler/schedules/; disabled: nothing is scheduled so)
PASS_NAME = "buildsys.DefaultCPUSchedules"
# the pass that packs dense and convolution weights and folds batch norms at build time (disabled:
# weights stay as they are, and their kernels go to the schedules above)
PACK_PASS_NAME = "buildsys.PackWeights"
# the passes that let FuseOps fuse a module written in plain binding blocks (the ONNX route;
# compiler/compile.py): disabling the first leaves such a module unfused
TO_DATAFLOW_PASS_NAME = "buildsys.ToDataflow"
OPAQUE_DYNAMIC_PASS_NAME = "buildsys.OpaqueDynamicKernels"
BUILDSYS_PASSES = frozenset({PASS_NAME, PACK_PASS_NAME, TO_DATAFLOW_PASS_NAME, OPAQUE_DYNAMIC_PASS_NAME})

# Relay passes that users carry over from pre-Relax tutorials (TVM 0.27 has no Relay).
RELAY_ONLY_PASSES = frozenset({
    "FoldScaleAxis", "ForwardFoldScaleAxis", "BackwardFoldScaleAxis", "SimplifyInference",
    "AlterOpLayout", "CombineParallelConv2D", "CombineParallelDense", "CombineParallelBatchMatmul",
    "FastMath", "DefuseOps", "PartialEvaluate", "CanonicalizeOps", "CanonicalizeCast",
    "DynamicToStatic", "InferType", "Legalize", "SimplifyExpr", "FirstOrderGradient",
    "EtaExpand", "LazyGradientInit", "ToANormalForm", "ToGraphNormalForm", "ManifestAlloc",
    "MemoryPlan", "PlanDevices", "FuseOps.relay",
})


@functools.lru_cache(maxsize=1)
def known_pass_names() -> frozenset[str]:
    """Names of the passes this TVM registers, from the cached TVM facts (no TVM import here)."""
    from buildsys.config.tvmfacts import facts

    return frozenset(facts()["passes"]) | BUILDSYS_PASSES


def validate_disabled_passes(names, field: str = "disabled_passes") -> tuple[str, ...]:
    """Refuse names TVM does not have; return them sorted and deduplicated."""
    cleaned = []
    for name in names:
        if not isinstance(name, str) or not name.strip():
            raise PassError(f"a pass name must be a non-empty string, got {name!r}", field=field)
        cleaned.append(name.strip())
    if not cleaned:
        return ()
    known = known_pass_names()
    for name in cleaned:
        if name in known:
            continue
        if name in RELAY_ONLY_PASSES:
            raise PassError(
                f"{name!r} is a Relay pass; TVM 0.27 has no Relay and Relax has no counterpart, so disabling "
                "it would change nothing", field=field, hint="remove it from disabled_passes")
        raise PassError(f"TVM {_tvm_version()} has no pass named {name!r}", field=field,
                        hint=did_you_mean(name, known) or "`buildsys passes` lists the pass names")
    return tuple(sorted(set(cleaned)))


def _tvm_version() -> str:
    from buildsys.config.toolchain import package_version

    return package_version("apache-tvm") or "?"


def matching_pass_names(pattern: str | None = None) -> list[str]:
    """``buildsys passes [PATTERN]``: the known pass names, sorted, matching a glob."""
    import fnmatch

    return [name for name in sorted(known_pass_names()) if not pattern or fnmatch.fnmatchcase(name, pattern)]
