"""``buildsys profile``: an artifact's kernels with calls, time, share and GFLOP/s, through the thin runtime."""

import json

import pytest

pytestmark = pytest.mark.model


def test_profile_names_the_artifacts_kernels_with_their_time_and_work(built, capsys):
    key = built.registry.list()[0].key
    assert built.cli("show", key) == 0
    flops = json.loads(capsys.readouterr().out)["kernels"]["flops"]
    assert built.cli("profile", key, "--runs", "3", "--json") == 0
    profile = json.loads(capsys.readouterr().out)
    kernels = profile["kernels"]
    # the names the builder counted, and the VM's own builtins (allocation, shape checks) beside them
    assert kernels and all(k["name"] in flops or k["name"].startswith("vm.builtin.") for k in kernels)
    assert abs(sum(k["share"] for k in kernels) - 1) < 0.01
    assert [k["ms"] for k in kernels] == sorted((k["ms"] for k in kernels), reverse=True)
    assert 0 < profile["kernel_ms"] <= profile["total_ms"] * 1.05
    conv = next(k for k in kernels if "conv2d" in k["name"])
    assert flops[conv["name"]] > 0 and conv["gflops"] > 0  # a static convolution: its work is known
    assert conv["gflops"] == pytest.approx(flops[conv["name"]] * conv["calls"] / (conv["ms"] / 1e3) / 1e9, rel=0.02)

    assert built.cli("profile", key, "--runs", "2", "--top", "1") == 0
    out = capsys.readouterr().out
    assert "KERNEL" in out and "GFLOP/s" in out and "more)" in out


def test_profile_of_an_unknown_ref_is_a_usage_error(built, capsys):
    assert built.cli("profile", "no-such-artifact") != 0
    assert "no-such-artifact" in capsys.readouterr().err
