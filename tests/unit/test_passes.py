import pytest

from buildsys.errors import PassError
from buildsys.config.passes import known_pass_names, validate_disabled_passes


def test_known_names_include_relax_and_tir_passes():
    names = known_pass_names()
    assert {"FoldConstant", "LegalizeOps", "FuseOps", "tirx.UnrollLoop"} <= names
    assert "FoldScaleAxis" not in names


def test_unknown_pass_is_refused_with_close_names():
    with pytest.raises(PassError, match="did you mean 'FoldConstant'"):
        validate_disabled_passes(["FoldConstnt"])


def test_relay_pass_gets_its_own_message():
    with pytest.raises(PassError, match="Relay pass"):
        validate_disabled_passes(["FoldScaleAxis"])


def test_valid_names_are_sorted_and_deduplicated():
    assert validate_disabled_passes(["LegalizeOps", "FoldConstant", "LegalizeOps"]) == ("FoldConstant",
                                                                                         "LegalizeOps")


@pytest.mark.parametrize("bad", ["", "  ", 3, None])
def test_non_names_are_refused(bad):
    with pytest.raises(PassError):
        validate_disabled_passes([bad])
