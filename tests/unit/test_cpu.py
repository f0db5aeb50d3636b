from buildsys.runtime.cpu import host_flags, missing_features
from buildsys.config.targets import required_features


def test_generic_target_needs_no_features():
    assert required_features({"kind": "llvm"}) == []


def test_mcpu_features_map_to_cpuinfo_flags():
    znver3 = required_features({"kind": "llvm", "mcpu": "znver3"})
    assert {"avx2", "fma", "sse4_2"} <= set(znver3) and "avx512f" not in znver3
    assert {"avx512f", "avx512_vnni"} <= set(required_features({"kind": "llvm", "mcpu": "icelake-server"}))


def test_missing_features(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor : 0\nflags\t\t: fpu sse4_2 avx avx2 fma\n")
    flags = host_flags(cpuinfo)
    assert missing_features(["avx2", "avx512f"], flags) == ["avx512f"]
    assert missing_features(["avx512f"], host_flags(tmp_path / "absent")) == []  # unknown host: no claim
