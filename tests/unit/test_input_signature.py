"""The runtime's input checks (buildsys/format/signature.py Signature.bind), without a compiled artifact."""

import numpy as np
import pytest

from buildsys.errors import InputError
from buildsys.format.signature import Signature

TEXT = {"io": {"input": {"shape": [1, 16], "dtype": "int64"}, "batch": {"min": 1, "max": 8, "opt": 4},
               "inputs": [{"name": "input_ids", "shape": ["batch", 16], "dtype": "int64", "range": [0, 99]},
                          {"name": "attention_mask", "shape": ["batch", 16], "dtype": "int64", "range": [0, 1]}]}}


def test_a_manifest_without_inputs_is_one_float32_input_of_fixed_batch():
    signature = Signature.from_manifest({"io": {"input": {"shape": [1, 3, 32, 32], "dtype": "float32"}}})
    assert signature.names == ["input"] and (signature.batch_min, signature.batch_max) == (1, 1)
    (x,) = signature.bind([np.zeros((1, 3, 32, 32))], {})  # float64 is cast, as before signatures
    assert x.dtype == np.float32 and x.flags.c_contiguous
    with pytest.raises(InputError, match="has batch 2; the artifact takes batch 1$"):
        signature.bind([np.zeros((2, 3, 32, 32), np.float32)], {})


def test_named_and_positional_inputs_bind_in_signature_order():
    signature = Signature.from_manifest(TEXT)
    ids, mask = np.arange(32).reshape(2, 16), np.ones((2, 16), np.int32)
    for args, kwargs in (((ids, mask), {}), ((), {"attention_mask": mask, "input_ids": ids}),
                         ((ids,), {"attention_mask": mask})):
        bound = signature.bind(args, kwargs)
        assert [a.dtype for a in bound] == [np.int64, np.int64]
        np.testing.assert_array_equal(bound[0], ids)


@pytest.mark.parametrize("args, kwargs, message", [
    ((np.zeros((2, 16), np.float32), np.zeros((2, 16), np.int64)), {}, "takes int64, got float32"),
    ((np.zeros((9, 16), np.int64),) * 2, {}, "has batch 9; the artifact takes a batch of 1 to 8"),
    ((np.zeros((2, 15), np.int64),) * 2, {}, r"takes shape \[batch, 16\], got \(2, 15\)"),
    ((np.full((2, 16), -1),) * 2, {}, "holds values -1..-1; the artifact takes 0..99"),
    ((np.zeros((2, 16), np.int64), np.full((2, 16), 2)), {}, "'attention_mask' holds values 2..2"),
    ((np.zeros((2, 16), np.int64),), {}, "missing input"),
    ((np.zeros((2, 16), np.int64),) * 3, {}, "takes 2 input"),
    ((), {"ids": 1}, "no input 'ids'"),
    ((np.zeros((2, 16), np.int64), np.zeros((3, 16), np.int64)), {}, "different batch sizes"),
    ((np.array(["x"] * 16).reshape(1, 16),) * 2, {}, "takes int64, got <U1"),
    (([[1, 2], [3]], np.zeros((1, 16), np.int64)), {}, "is not an array"),
])
def test_inputs_that_do_not_fit_are_refused_with_a_value_error(args, kwargs, message):
    with pytest.raises(InputError, match=message) as info:
        Signature.from_manifest(TEXT).bind(args, kwargs, key="0123456789abcdef")
    assert isinstance(info.value, ValueError) and info.value.exit_code == 2
    assert "artifact 0123456789ab" in str(info.value)


def test_samples_fit_the_signature():
    signature = Signature.from_manifest(TEXT)
    ids, mask = signature.sample(5, seed=3)
    assert ids.shape == (5, 16) and 0 <= ids.min() and ids.max() <= 99 and set(np.unique(mask)) <= {0, 1}
    signature.bind([ids, mask], {})
