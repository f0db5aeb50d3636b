"""Route ONNX, for detectors: ``torch.onnx.export`` -> onnxsim -> ``from_onnx``.

Why this route (see docs/toolchain.md): full-model ``torch.export`` fails for
every torchvision detector (data-dependent guards in ``batched_nms``, no
importer for ``nms``/``roi_align``); the TorchScript-based ONNX exporter
turns NMS, RoIAlign and top-k into ONNX ops that the Relax importer maps to
``all_class_non_max_suppression``, ``roi_align`` and ``topk``, so the whole
detector, data-dependent parts included, runs inside the VM. The simplifier
is required (without it: ``Type <class 'tvm.ir.expr.Call'> for size is
currently unsupported`` in Resize). Importer bugs are patched in
``onnx_fixes.py``.

Mask and keypoint models stop before the parts that export to an ONNX
``Loop`` (pasting masks into the image, decoding keypoint heatmaps): the
artifact returns boxes in the resized image plus 28x28 mask probabilities /
keypoint logits, and the runtime finishes in numpy.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import time
import warnings

import numpy as np

from buildsys.errors import BuildError
from buildsys.pipeline.importers.torch_export import ExportedModel

OPSET = 17
INPUT_NAME = "input0"
SMALL_INITIALIZER = 16  # elements; see initializers_as_constants


def _detector_wrapper(model):
    import torch

    class DetectorOutputs(torch.nn.Module):
        """A batch-of-one tensor in, a flat tuple of tensors out (ONNX takes no dicts)."""

        def __init__(self, detector):
            super().__init__()
            self.detector = detector
            heads = getattr(detector, "roi_heads", None)
            self.masks = bool(heads is not None and heads.has_mask())
            self.keypoints = bool(heads is not None and heads.has_keypoint())
            # Pre-NMS tensors are returned too: with random weights, scores tie and the final
            # detections depend on tie order, so parity is measured on these first.
            self._captured: list[tuple[str, torch.Tensor]] = []
            self.pre_nms_names: list[str] = []
            pre_nms = {"backbone": detector.backbone}
            rpn = getattr(detector, "rpn", None)
            pre_nms["head"] = rpn.head if rpn is not None else detector.head
            for name, module in pre_nms.items():
                module.register_forward_hook(self._capture(name))

        def _capture(self, prefix):
            def hook(_module, _inputs, output):
                self._captured.extend((f"pre_nms/{prefix}{suffix}", t) for suffix, t in _flatten(output))
            return hook

        def describe(self, example) -> dict:
            """What the runtime needs to map outputs back to the image: the frame boxes are in."""
            if self.masks or self.keypoints:  # boxes come out in the detector's resized image
                images, _ = self.detector.transform([example[0]])
                frame = list(images.image_sizes[0])
            else:  # torchvision's own post-processing already maps them to the input
                frame = list(example.shape[-2:])
            return {"boxes_frame": frame}

        @property
        def final_names(self) -> list[str]:
            names = ["boxes", "scores", "labels"]
            if self.masks:
                names.append("mask_probs")
            if self.keypoints:
                names.append("keypoint_logits")
            return names

        @property
        def output_names(self) -> list[str]:
            return self.final_names + self.pre_nms_names

        def forward(self, x):
            self._captured = []
            if not (self.masks or self.keypoints):
                result = self.detector([x[0]])[0]
                final = (result["boxes"], result["scores"], result["labels"])
            else:
                final = self._two_stage_without_loops(x)
            self.pre_nms_names = [name for name, _ in self._captured]
            return tuple(final) + tuple(t for _, t in self._captured)

        def _features(self, x):
            import collections

            images, _ = self.detector.transform([x[0]])
            features = self.detector.backbone(images.tensors)
            if isinstance(features, torch.Tensor):
                features = collections.OrderedDict([("0", features)])
            return images, features

        def _second_stage(self, features, image_sizes, boxes, labels) -> list:
            """Mask probabilities / keypoint logits for given final boxes (a list of one tensor)."""
            from torchvision.models.detection.roi_heads import maskrcnn_inference

            heads = self.detector.roi_heads
            outputs = []
            if self.masks:
                mask_logits = heads.mask_predictor(heads.mask_head(heads.mask_roi_pool(features, boxes, image_sizes)))
                outputs.append(maskrcnn_inference(mask_logits, labels)[0])
            if self.keypoints:
                outputs.append(heads.keypoint_predictor(heads.keypoint_head(
                    heads.keypoint_roi_pool(features, boxes, image_sizes))))
            return outputs

        def second_stage_given_boxes(self, x, boxes, labels) -> list:
            """PyTorch's mask / keypoint heads run on the artifact's boxes (numpy in, numpy out).

            Those heads are steep (random-weight mask logits reach hundreds), so boxes that
            agree to 0.02 px give mask probabilities 5e-3 apart; measured on the same boxes,
            the heads themselves agree to 2e-4. verify.py gates on this comparison.
            """
            with torch.no_grad():
                images, features = self._features(x)
                outs = self._second_stage(features, images.image_sizes, [torch.from_numpy(boxes)],
                                          [torch.from_numpy(labels)])
            return [o.numpy() for o in outs]

        def _two_stage_without_loops(self, x):
            m = self.detector
            heads = m.roi_heads
            images, features = self._features(x)
            proposals, _ = m.rpn(images, features)
            box_features = heads.box_head(heads.box_roi_pool(features, proposals, images.image_sizes))
            logits, regression = heads.box_predictor(box_features)
            boxes, scores, labels = heads.postprocess_detections(logits, regression, proposals, images.image_sizes)
            return (boxes[0], scores[0], labels[0], *self._second_stage(features, images.image_sizes, boxes, labels))

    return DetectorOutputs(model).eval()


def _flatten(value, suffix=""):
    """(suffix, tensor) pairs of a module output: tensors, lists/tuples and dicts of them."""
    if hasattr(value, "shape"):
        return [(suffix, value)]
    items = value.items() if isinstance(value, dict) else enumerate(value)
    pairs = []
    for key, item in items:
        pairs.extend(_flatten(item, f"{suffix}.{key}"))
    return pairs


def initializers_as_constants(model) -> None:
    """Cures ``Reshape requires the input new shape to be Shape. However, the given
    one is relax.TensorType`` when weights are kept as inputs.

    With ``keep_params_in_input`` every initializer becomes a run-time input,
    including the int64 shape tensors and tiny constants that the importer
    must see as constants. Only float weights with more than a few elements
    stay initializers (and so become ``params``); the rest become Constant nodes.
    """
    from onnx import TensorProto, helper

    keep, constants = [], []
    for init in model.graph.initializer:
        elements = int(np.prod(init.dims)) if len(init.dims) else 1
        if init.data_type == TensorProto.FLOAT and elements > SMALL_INITIALIZER:
            keep.append(init)
        else:
            constants.append(helper.make_node("Constant", [], [init.name], value=init))
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)
    for i, node in enumerate(constants):
        model.graph.node.insert(i, node)


@contextlib.contextmanager
def quiet_native_output():
    """Silence what native code writes to file descriptors 1 and 2 (Python's own streams too)."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with open(os.devnull, "wb") as devnull:
        os.dup2(devnull.fileno(), 1)
        os.dup2(devnull.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)


def import_onnx_graph(graph, shape_dict: dict, dtype_dict: dict | None = None, what: str = ""):
    """An ONNX ModelProto into Relax, weights as parameters (``initializers_as_constants``, the
    importer fixes): (module, the weights as numpy arrays). ``what`` names the model in errors."""
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx

    from buildsys.pipeline.importers.onnx_fixes import apply_onnx_importer_fixes

    initializers_as_constants(graph)
    try:
        apply_onnx_importer_fixes()
        mod = from_onnx(graph, shape_dict=shape_dict, keep_params_in_input=True,
                        **({"dtype_dict": dtype_dict} if dtype_dict else {}))
        mod, params = relax.frontend.detach_params(mod)
    except BuildError:
        raise
    except Exception as exc:
        raise BuildError(f"Relax ONNX import{what} failed: {type(exc).__name__}: {str(exc)[:2000]}",
                         stage="import") from None
    return mod, [p.numpy() for p in params.get("main", [])]


def export_detector(module, example, on_import=lambda: None) -> ExportedModel:
    import onnx
    import onnxsim
    import torch

    wrapper = _detector_wrapper(module)
    start = time.perf_counter()
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(wrapper, (example,), buffer, dynamo=False, opset_version=OPSET,
                              input_names=[INPUT_NAME], do_constant_folding=True)
        graph = onnx.load_from_string(buffer.getvalue())
        with quiet_native_output():  # onnxsim's C++ prints a line per op it cannot fold
            graph, ok = onnxsim.simplify(graph, check_n=0)
    except Exception as exc:
        raise BuildError(f"ONNX export failed: {type(exc).__name__}: {str(exc)[:2000]}", stage="export") from None
    if not ok:
        raise BuildError("onnxsim could not validate the simplified graph", stage="export")
    exported = time.perf_counter()
    on_import()
    mod, params = import_onnx_graph(graph, {INPUT_NAME: list(example.shape)})
    return ExportedModel(mod=mod, params=params, route="onnx",
                         seconds_export=exported - start, seconds_import=time.perf_counter() - exported,
                         reference=wrapper, output_names=wrapper.output_names,
                         details={"onnx_nodes": len(graph.graph.node), "opset": OPSET},
                         detection={**wrapper.describe(example), "final_outputs": len(wrapper.final_names)})
