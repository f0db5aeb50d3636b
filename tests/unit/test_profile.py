"""``buildsys profile`` on a stand-in predictor: the VM's instrument calls, summed per kernel."""

from __future__ import annotations

import numpy as np
import pytest

from buildsys.ops.profile import profile_predictor


class FakePredictor:
    """Calls two kernels a run (the second twice) through the instrument hook, like the VM."""

    key = "ab" * 32

    def __init__(self, manifest):
        self.manifest = manifest
        self.instrument = None
        self.runs = 0

    def set_instrument(self, callback):
        self.instrument = callback

    def run(self, *inputs):
        self.runs += 1
        for name in ("conv", "add", "add"):
            if self.instrument is not None:
                assert self.instrument(None, name, True, None) == 0
                assert self.instrument(None, name, False, None) == 0
        return []


def test_kernels_are_summed_per_run_and_the_hook_is_removed():
    predictor = FakePredictor({"label": "fake", "kernels": {"flops": {"conv": 2e6, "add": None}}})
    profile = profile_predictor(predictor, [np.zeros(1, np.float32)], runs=3)
    assert predictor.runs == 4 and predictor.instrument is None  # a warm-up, 3 timed runs, then off
    by_name = {k.name: k for k in profile.kernels}
    assert by_name["conv"].calls == 1 and by_name["add"].calls == 2
    assert by_name["conv"].gflops > 0 and by_name["add"].gflops is None
    assert sum(k.share for k in profile.kernels) == pytest.approx(1)


@pytest.mark.parametrize("kernels", [None, "flops", [1, 2], {"flops": "many"}, {"flops": [3]},
                                     {"flops": {"conv": "1e9"}}, {"flops": {"conv": True}},
                                     {"flops": {"conv": float("nan")}}, {"flops": {"conv": -5}},
                                     {"flops": {"conv": float("inf")}}, {"flops": {"conv": {"x": 1}}}])
def test_a_hostile_or_missing_flops_record_costs_the_figure_not_the_profile(kernels):
    manifest = {"label": "fake"} if kernels is None else {"label": "fake", "kernels": kernels}
    profile = profile_predictor(FakePredictor(manifest), [], runs=2)
    assert {k.name for k in profile.kernels} == {"conv", "add"}
    assert all(k.gflops is None for k in profile.kernels)
