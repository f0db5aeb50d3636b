"""The build matrices shipped at the top of the repository load, and the aarch64 one builds the
default matrix's detectors as builds.yaml defines them (a copy that drifted would build another model)."""

from __future__ import annotations

from pathlib import Path

import pytest

from buildsys.config.spec import load_specs

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", ["builds.yaml", "builds.tune.yaml", "builds.aarch64.yaml"])
def test_the_shipped_matrices_load(name):
    assert load_specs(ROOT / name)


def test_the_aarch64_matrix_is_every_detector_of_the_default_one_for_aarch64():
    default = {s.model.name: s for s in load_specs(ROOT / "builds.yaml")
               if s.model.task == "detection" and not s.target.is_cross() and s.model.name != "tiny_fasterrcnn"}
    aarch64 = {s.model.name: s for s in load_specs(ROOT / "builds.aarch64.yaml")}
    assert sorted(aarch64) == sorted(default) and len(aarch64) == 8
    for name, spec in aarch64.items():
        assert spec.target.arch == "aarch64" and spec.target.mcpu == "cortex-a72"
        assert spec.model.to_dict() == default[name].model.to_dict(), name
        assert spec.model.tolerance == default[name].model.tolerance and spec.input_size == default[name].input_size
