import numpy as np
import pytest

from buildsys.errors import ParityError
from buildsys.pipeline.parity import compare_detector_outputs, compare_outputs, match_detections


def dets(boxes, scores, labels):
    return [np.array(boxes, np.float32), np.array(scores, np.float32), np.array(labels, np.int64)]


def test_compare_outputs_measures_relative_error():
    parity = compare_outputs([np.array([1.0, -2.0])], [np.array([1.0, -2.002])], tolerance=1e-2)
    assert parity.max_abs == pytest.approx(0.002)
    assert parity.max_rel == pytest.approx(0.001)
    assert parity.passed
    assert not compare_outputs([np.array([1.0])], [np.array([1.5])], tolerance=1e-2).passed


def test_compare_outputs_refuses_shape_and_count_mismatch_and_nan():
    with pytest.raises(ParityError, match="shape"):
        compare_outputs([np.zeros((2, 3))], [np.zeros((3, 2))], 1e-4)
    with pytest.raises(ParityError, match="1 outputs, the artifact 2"):
        compare_outputs([np.zeros(2)], [np.zeros(2), np.zeros(2)], 1e-4)
    with pytest.raises(ParityError, match="NaN"):
        compare_outputs([np.zeros(2)], [np.array([0.0, np.nan])], 1e-4)


def test_detections_match_regardless_of_order():
    ref = dets([[0, 0, 10, 10], [5, 5, 20, 20], [1, 1, 4, 4]], [0.9, 0.8, 0.7], [1, 2, 1])
    out = dets([[1, 1, 4, 4], [0, 0, 10, 10.001], [5, 5, 20, 20]], [0.7, 0.9, 0.8], [1, 1, 2])
    assert match_detections(ref, out).tolist() == [1, 2, 0]
    parity = compare_detector_outputs(ref, out, 3, tolerance=1e-3)
    assert parity.passed and parity.matched_fraction == 1.0 and parity.detections == 3
    assert parity.max_abs == pytest.approx(0.001, rel=1e-3)


def test_different_labels_or_counts_fail_with_the_matched_fraction():
    ref = dets([[0, 0, 10, 10]], [0.9], [1])
    wrong_label = compare_detector_outputs(ref, dets([[0, 0, 10, 10]], [0.9], [2]), 3, 1e-3)
    assert not wrong_label.passed and wrong_label.matched_fraction == 0.0
    extra = compare_detector_outputs(ref, dets([[0, 0, 10, 10], [1, 1, 2, 2]], [0.9, 0.5], [1, 1]), 3, 1e-3)
    assert not extra.passed and extra.matched_fraction == 0.5
    assert match_detections(ref, dets([[0, 0, 10, 10]], [0.9], [2])) is None


def test_wrong_box_is_measured_not_hidden():
    ref = dets([[0, 0, 10, 10]], [0.9], [1])
    parity = compare_detector_outputs(ref, dets([[0, 0, 10, 15]], [0.9], [1]), 3, 1e-3)
    assert not parity.passed and parity.max_abs == 5


def test_pre_nms_tensors_gate_and_ties_make_final_order_informational():
    ref = dets([[0, 0, 10, 10], [0, 0, 12, 12]], [0.5, 0.5], [1, 1]) + [np.array([1.0, 2.0])]
    # a tie: the artifact kept the other box of two equal scores; its pre-NMS tensors agree
    swapped = dets([[0, 0, 10, 10], [20, 20, 30, 30]], [0.5, 0.5], [1, 1]) + [np.array([1.0, 2.0])]
    parity = compare_detector_outputs(ref, swapped, 3, 1e-3)
    assert parity.tied_scores and parity.passed and parity.pre_nms_max_rel == 0.0
    # but pre-NMS tensors that disagree fail, ties or not
    bad = dets([[0, 0, 10, 10], [0, 0, 12, 12]], [0.5, 0.5], [1, 1]) + [np.array([1.0, 2.5])]
    parity = compare_detector_outputs(ref, bad, 3, 1e-3)
    assert not parity.passed and parity.pre_nms_max_rel == pytest.approx(0.25)


def test_the_worst_output_is_named():
    parity = compare_outputs([np.ones(2), np.ones(2)], [np.ones(2), np.array([1.0, 1.1])], 1e-3)
    assert parity.worst_output == 1
    ref = dets([[0, 0, 10, 10]], [0.9], [1]) + [np.array([1.0]), np.array([2.0])]
    out = dets([[0, 0, 10, 10]], [0.9], [1]) + [np.array([1.0]), np.array([2.5])]
    assert compare_detector_outputs(ref, out, 3, 1e-3).worst_output == 4


def test_explain_locates_the_failure():
    ref = dets([[0, 0, 10, 10]], [0.9], [1]) + [np.array([1.0]), np.array([2.0])]
    out = dets([[0, 0, 10, 10]], [0.9], [1]) + [np.array([1.0]), np.array([2.5])]
    text = compare_detector_outputs(ref, out, 3, 1e-3).explain(["boxes", "scores", "labels", "pre_a", "pre_b"])
    assert text.startswith("max relative error 0.25 exceeds tolerance 0.001 (max abs 0.5)")
    assert "pre-NMS max_rel 0.25" in text and "worst output 'pre_b'" in text


def test_mask_heads_are_compared_on_the_artifacts_own_boxes():
    """Steep heads amplify box rounding (Mask R-CNN: 0.02 px in boxes -> 5e-3 in mask
    probabilities); the gate runs PyTorch's heads on the artifact's boxes instead."""
    def head(boxes, labels):  # a steep function of the box, like random-weight mask logits
        return [0.5 * (1 + np.tanh(100 * (boxes[:, :1, None] - 5.0))) * np.ones((len(boxes), 1, 4, 4))]  # sigmoid(200 x)

    ref_boxes = np.array([[5.0, 0, 10, 10], [0, 0, 3, 3]], np.float32)
    out_boxes = ref_boxes + np.float32(0.003)  # within tolerance as boxes
    ref = dets(ref_boxes, [0.9, 0.8], [1, 2]) + head(ref_boxes, None)
    good = dets(out_boxes, [0.9, 0.8], [1, 2]) + head(out_boxes, None)
    naive = compare_detector_outputs(ref, good, 4, tolerance=1e-3)
    assert not naive.passed and naive.worst_output == 3  # masks differ by ~0.15 through the steep head
    conditioned = compare_detector_outputs(ref, good, 4, tolerance=1e-3, second_stage=head)
    assert conditioned.passed and conditioned.second_stage_max_rel == 0.0
    assert conditioned.final_max_rel == pytest.approx(0.003 / 10, rel=1e-2)

    wrong = dets(out_boxes, [0.9, 0.8], [1, 2]) + [head(out_boxes, None)[0] * 0.9]
    failed = compare_detector_outputs(ref, wrong, 4, tolerance=1e-3, second_stage=head)
    assert not failed.passed and failed.worst_output == 3
    assert failed.second_stage_max_rel == pytest.approx(0.1, rel=1e-3)


def test_bench_compares_detections_by_match_not_by_position():
    """Two detections of nearly equal score may swap places; their boxes and masks are not wrong."""
    from buildsys.ops.bench import _max_rel
    from buildsys.pipeline.parity import matched_outputs

    rng = np.random.default_rng(0)
    boxes = rng.uniform(0, 300, (5, 4)).astype(np.float32)
    scores = np.array([0.9, 0.8, 0.80001, 0.5, 0.4], np.float32)
    labels = np.array([1, 2, 2, 3, 1])
    masks = rng.random((5, 1, 28, 28), dtype=np.float32)
    pre_nms = rng.random((1, 8, 10, 10), dtype=np.float32)
    reference = [boxes, scores, labels, masks, pre_nms]
    swap = np.array([0, 2, 1, 3, 4])
    actual = [boxes[swap], scores, labels[swap], masks[swap], pre_nms + 1e-7]
    assert _max_rel(reference, actual) > 0.1  # by position: the swapped pair looks wrong
    assert _max_rel(reference, matched_outputs(reference, actual, 4)) < 1e-4  # the swapped scores differ by 1e-5
    unmatched = [boxes, scores, np.array([1, 2, 2, 3, 9]), masks, pre_nms]  # a label nobody has
    assert matched_outputs(reference, unmatched, 4)[2] is unmatched[2]  # left as it was
