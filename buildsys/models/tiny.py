"""Tiny torchvision detectors: the real architectures at toy width.

An 8-channel three-conv backbone, 5 classes, 64x64 inputs. They build in
seconds and, unlike random-weight full-size detectors (whose scores tie),
give distinct scores, so end-to-end parity after NMS is meaningful.
"""

from __future__ import annotations

from torch import nn

CHANNELS, CLASSES, SIZE = 8, 5, 64


class TinyBackbone(nn.Sequential):
    def __init__(self, channels: int = CHANNELS):
        super().__init__(
            nn.Conv2d(3, channels, 3, 2, 1), nn.ReLU(),
            nn.Conv2d(channels, channels, 3, 2, 1), nn.ReLU(),
            nn.Conv2d(channels, channels, 3, 2, 1), nn.ReLU())
        self.out_channels = channels


def _anchors():
    from torchvision.models.detection.anchor_utils import AnchorGenerator

    return AnchorGenerator(sizes=((16, 32),), aspect_ratios=((0.5, 1.0, 2.0),))


def _two_stage_options(size: int) -> dict:
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.ops import MultiScaleRoIAlign

    return dict(rpn_anchor_generator=_anchors(), box_roi_pool=MultiScaleRoIAlign(["0"], 7, 2),
                box_head=TwoMLPHead(CHANNELS * 49, 32), box_predictor=FastRCNNPredictor(32, CLASSES),
                rpn_pre_nms_top_n_test=100, rpn_post_nms_top_n_test=20, box_detections_per_img=10,
                box_score_thresh=0.0, min_size=size, max_size=size)


def tiny_fasterrcnn(size: int = SIZE):
    from torchvision.models.detection import FasterRCNN

    return FasterRCNN(TinyBackbone(), **_two_stage_options(size))


def tiny_maskrcnn(size: int = SIZE):
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
    from torchvision.ops import MultiScaleRoIAlign

    return MaskRCNN(TinyBackbone(), mask_roi_pool=MultiScaleRoIAlign(["0"], 14, 2),
                    mask_head=MaskRCNNHeads(CHANNELS, [CHANNELS, CHANNELS], 1),
                    mask_predictor=MaskRCNNPredictor(CHANNELS, CHANNELS, CLASSES), **_two_stage_options(size))


def tiny_retinanet(size: int = SIZE):
    from torchvision.models.detection import RetinaNet

    model = RetinaNet(TinyBackbone(), CLASSES, anchor_generator=_anchors(), score_thresh=0.0,
                      topk_candidates=50, detections_per_img=10, min_size=size, max_size=size)
    # The default init (std 0.01 + prior bias) scores every anchor 0.01: ties. Spread them.
    for module in model.head.classification_head.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.normal_(module.weight, std=0.3)
    return model


def tiny_keypointrcnn(size: int = SIZE, keypoints: int = 5):
    from torchvision.models.detection import KeypointRCNN
    from torchvision.models.detection.keypoint_rcnn import KeypointRCNNHeads, KeypointRCNNPredictor
    from torchvision.ops import MultiScaleRoIAlign

    options = _two_stage_options(size)
    options["box_predictor"] = type(options["box_predictor"])(32, 2)  # person / background, as in COCO
    return KeypointRCNN(TinyBackbone(), num_classes=None, keypoint_roi_pool=MultiScaleRoIAlign(["0"], 14, 2),
                        keypoint_head=KeypointRCNNHeads(CHANNELS, [CHANNELS, CHANNELS]),
                        keypoint_predictor=KeypointRCNNPredictor(CHANNELS, keypoints), **options)
