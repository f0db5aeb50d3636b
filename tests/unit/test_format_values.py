"""FrozenDict / FrozenList (buildsys/format/values.py): what a spec holds cannot change, hashes,
pickles for the build process, and writes the same JSON (so the same key) as the plain value."""

from __future__ import annotations

import copy
import json
import pickle

import pytest

from buildsys.format.values import FrozenDict, freeze

PLAIN = {"kind": "llvm", "mattr": ["+neon", "+dotprod"], "nested": {"a": [1, {"b": 2}]}, "num-cores": 2}


def test_same_json_same_equality_and_a_stable_hash():
    frozen = freeze(PLAIN)
    assert isinstance(frozen, FrozenDict) and frozen == PLAIN
    assert json.dumps(frozen, sort_keys=True) == json.dumps(PLAIN, sort_keys=True)
    assert hash(frozen) == hash(freeze(json.loads(json.dumps(PLAIN))))
    assert {frozen: 1}[freeze(PLAIN)] == 1


@pytest.mark.parametrize("change", [
    lambda d: d.__setitem__("kind", "cuda"), lambda d: d.pop("kind"), lambda d: d.update(x=1),
    lambda d: d.setdefault("x", 1), lambda d: d.clear(), lambda d: d["mattr"].append("+sve"),
    lambda d: d["nested"]["a"][1].__setitem__("b", 3), lambda d: d["mattr"].sort(),
])
def test_nothing_inside_can_change(change):
    frozen = freeze(PLAIN)
    with pytest.raises(TypeError, match="cannot be changed"):
        change(frozen)
    assert frozen == PLAIN


def test_thaw_gives_a_plain_copy_and_pickling_keeps_it_frozen():
    frozen = freeze(PLAIN)
    plain = frozen.thaw()
    assert plain == PLAIN and type(plain) is dict and type(plain["nested"]["a"]) is list
    plain["mattr"].append("+sve")
    assert frozen == PLAIN
    for back in (pickle.loads(pickle.dumps(frozen)), copy.deepcopy(frozen)):
        assert back == PLAIN and isinstance(back, FrozenDict) and isinstance(back["mattr"], list)
        with pytest.raises(TypeError):
            back["mattr"].append("+sve")
