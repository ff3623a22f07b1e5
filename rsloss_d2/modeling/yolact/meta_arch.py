"""YOLACT and RS-YOLACT as a Detectron2 meta-architecture (Bolya et al., ICCV 2019; Oksuz et al.,
ICCV 2021 §5; ``mmdet/models/dense_heads/yolact_head.py`` and the RS-YOLACT head of the official
RankSortLoss repository).

One class, two losses (``MODEL.YOLACT.LOSS``):

* ``"softmax_ohem"`` — YOLACT: softmax CE with OHEM 3:1, SmoothL1 (×1.5), mask BCE (×6.125) on
  at most 100 random positives per image, semantic segmentation auxiliary loss;
* ``"rank_sort"`` — RS-YOLACT: RS Loss over every anchor × class of the per-process batch with
  IoU sorting targets, GIoU and dice losses averaged with the positives' score weights and
  value-balanced with two λ's; no OHEM, no semantic head, all positives' masks.

Images are resized (bilinear, no keep-ratio) to ``INPUT_SIZE``² inside the model (the official
test pipeline resizes the original image to 550×550; with ``INPUT.MIN_SIZE_TEST 0`` Detectron2's
test mapper and ``DefaultPredictor`` pass the original image). Outputs are in the frame of the
input dict's ``height`` / ``width``, with full-image ``pred_masks``.

Several processes: OHEM, every normaliser and RS-YOLACT's two λ's are per process, as in the
official code (README "Several GPUs"); the logged ``yolact/`` statistics are cross-process means.
"""
import logging
from typing import Dict, List

import torch
import torch.nn.functional as F

from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, build_backbone
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.meta_arch.dense_detector import DenseDetector

from ..events import put_scalars
from .head import YOLACTHead, YOLACTProtonet, YOLACTSemanticHead
from .inference import yolact_inference
from .losses import (
    ohem_classification_loss,
    rs_yolact_losses,
    sample_masks_to_train,
    semantic_segmentation_loss,
    smooth_l1_box_loss,
    yolact_mask_loss,
)
from .masks import assemble_masks_batched, boxes_to_mask_frame, crop_masks
from .targets import assign_anchors, prepare_targets, yolact_anchors

__all__ = ["LOSSES", "YOLACT"]

logger = logging.getLogger(__name__)
LOSSES = ("softmax_ohem", "rank_sort")


@META_ARCH_REGISTRY.register()
class YOLACT(DenseDetector):
    """YOLACT / RS-YOLACT: backbone (P3–P7) → shared head (classes, boxes, tanh coefficients) +
    protonet on P3 → masks ``σ(P·c)`` cropped by the box; Fast NMS at test time.

    Detectron2's ``DenseDetector`` gives the backbone / head, pixel mean / std buffers and
    ``device``. ``preprocess_image`` and ``forward`` are YOLACT's own: the official pipeline
    resizes every image to S×S without keeping the ratio (no padding, no size divisibility), and
    the protonet and the anchors join the head's outputs.
    """

    @configurable
    def __init__(self, *, backbone, head: YOLACTHead, protonet: YOLACTProtonet,
                 semantic_head, in_features: List[str], num_classes: int, input_size: int,
                 anchor_base_sizes, anchor_scale: float, aspect_ratios, box_transform,
                 iou_thresholds, loss: str, neg_pos_ratio: int, smooth_l1_beta: float,
                 box_loss_weight: float, mask_loss_weight: float, semantic_loss_weight: float,
                 max_masks_to_train: int, rs_delta: float, topk_candidates_test: int,
                 nms_top_k: int, nms_thresh_test: float, score_thresh_test: float,
                 detections_per_image: int, mask_thresh_test: float, pixel_mean, pixel_std,
                 expect_ssd_augmentation: bool = False):
        super().__init__(backbone, head, list(in_features), pixel_mean=pixel_mean,
                         pixel_std=pixel_std)
        if loss not in LOSSES:
            raise ValueError(f"MODEL.YOLACT.LOSS must be one of {LOSSES}, got {loss!r}")
        self.protonet = protonet
        self.semantic_head = semantic_head
        self.num_classes = num_classes
        self.input_size = int(input_size)
        self.anchor_base_sizes = list(anchor_base_sizes)
        self.anchor_scale = anchor_scale
        self.aspect_ratios = list(aspect_ratios)
        self.box_transform = box_transform
        self.iou_thresholds = list(iou_thresholds)
        self.loss = loss
        self.neg_pos_ratio = neg_pos_ratio
        self.smooth_l1_beta = smooth_l1_beta
        self.box_loss_weight = box_loss_weight
        self.mask_loss_weight = mask_loss_weight
        self.semantic_loss_weight = semantic_loss_weight
        self.max_masks_to_train = max_masks_to_train
        self.rs_delta = rs_delta
        self.test_cfg = dict(topk_candidates=topk_candidates_test, nms_top_k=nms_top_k,
                             nms_thresh=nms_thresh_test, score_thresh=score_thresh_test,
                             max_det=detections_per_image, mask_thresh=mask_thresh_test)
        self.expect_ssd_augmentation = expect_ssd_augmentation
        self._anchor_cache = {}

    @classmethod
    def from_config(cls, cfg):
        c = cfg.MODEL.YOLACT
        backbone = build_backbone(cfg)
        shapes = backbone.output_shape()
        channels = shapes[c.IN_FEATURES[0]].channels
        return {
            "backbone": backbone,
            "head": YOLACTHead(cfg, channels),
            "protonet": YOLACTProtonet(cfg, channels),
            "semantic_head": YOLACTSemanticHead(cfg, channels)
            if c.SEMANTIC_HEAD and c.LOSS == "softmax_ohem" else None,
            "in_features": c.IN_FEATURES,
            "num_classes": c.NUM_CLASSES,
            "input_size": c.INPUT_SIZE,
            "anchor_base_sizes": c.ANCHOR_BASE_SIZES,
            "anchor_scale": c.ANCHOR_SCALE,
            "aspect_ratios": c.ASPECT_RATIOS,
            "box_transform": Box2BoxTransform(weights=c.BBOX_REG_WEIGHTS),
            "iou_thresholds": c.IOU_THRESHOLDS,
            "loss": c.LOSS,
            "neg_pos_ratio": c.NEG_POS_RATIO,
            "smooth_l1_beta": c.SMOOTH_L1_BETA,
            "box_loss_weight": c.BOX_LOSS_WEIGHT,
            "mask_loss_weight": c.MASK_LOSS_WEIGHT,
            "semantic_loss_weight": c.SEMANTIC_LOSS_WEIGHT,
            "max_masks_to_train": c.MAX_MASKS_TO_TRAIN,
            "rs_delta": cfg.MODEL.RANK_LOSS.RS_DELTA,
            "topk_candidates_test": c.TOPK_CANDIDATES_TEST,
            "nms_top_k": c.NMS_TOP_K,
            "nms_thresh_test": c.NMS_THRESH_TEST,
            "score_thresh_test": c.SCORE_THRESH_TEST,
            "detections_per_image": c.DETECTIONS_PER_IMAGE,
            "mask_thresh_test": c.MASK_THRESH_TEST,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "expect_ssd_augmentation": cfg.INPUT.SSD_AUGMENTATION.ENABLED,
        }

    @property
    def in_features(self) -> List[str]:
        """The FPN maps of the head (``DenseDetector.head_in_features``; the first feeds the
        protonet)."""
        return self.head_in_features

    # ------------------------------------------------------------------ input
    def preprocess_image(self, batched_inputs):
        """Normalise and resize every image to S×S: (B, C, S, S) and the (h, w) of each input."""
        s = self.input_size
        sizes = [tuple(x["image"].shape[-2:]) for x in batched_inputs]
        images = []
        for x in batched_inputs:  # one resize per image (sizes differ)
            img = (x["image"].to(self.device).float() - self.pixel_mean) / self.pixel_std
            if tuple(img.shape[-2:]) != (s, s):
                img = F.interpolate(img[None], size=(s, s), mode="bilinear",
                                    align_corners=False)[0]
            images.append(img)
        return torch.stack(images), sizes

    def anchors(self, feature_sizes):
        key = (tuple(feature_sizes), str(self.device))
        if key not in self._anchor_cache:
            self._anchor_cache[key] = yolact_anchors(
                feature_sizes, self.input_size, self.anchor_base_sizes, self.anchor_scale,
                self.aspect_ratios, device=self.device)
        return self._anchor_cache[key]

    # ------------------------------------------------------------------ forward
    def forward(self, batched_inputs: List[Dict]):
        images, sizes = self.preprocess_image(batched_inputs)
        features = self.backbone(images)
        feats = [features[f] for f in self.in_features]
        feature_sizes = [tuple(f.shape[-2:]) for f in feats]
        level_sizes = [h * w * len(self.aspect_ratios) for h, w in feature_sizes]
        logits, deltas, coeffs = self.head(feats)
        prototypes = self.protonet(feats[0])
        anchors = self.anchors(feature_sizes)
        if self.training:
            if self.expect_ssd_augmentation and "ssd_augmented" not in batched_inputs[0]:
                self._warn_no_ssd_augmentation()
            gt = [x["instances"].to(self.device) for x in batched_inputs]
            sem_size = tuple(feats[0].shape[-2:]) if self.semantic_head is not None else None
            targets = prepare_targets(gt, sizes, self.input_size, tuple(prototypes.shape[-2:]),
                                      sem_size)
            losses = self.losses(logits, deltas, coeffs, prototypes, anchors, targets)
            if self.semantic_head is not None:
                sem = semantic_segmentation_loss(self.semantic_head(feats[0]), targets)
                losses["loss_semantic"] = sem * self.semantic_loss_weight
            return losses
        if self.loss == "rank_sort":
            scores = torch.sigmoid(logits.float())
        else:
            scores = torch.softmax(logits.float(), dim=-1)[..., :-1]
        out_sizes = [(int(x.get("height", h)), int(x.get("width", w)))
                     for x, (h, w) in zip(batched_inputs, sizes)]
        results = yolact_inference(scores, deltas, coeffs, prototypes, anchors, level_sizes,
                                   self.box_transform, self.input_size, out_sizes,
                                   **self.test_cfg)
        return [{"instances": r} for r in results]

    def _warn_no_ssd_augmentation(self):
        if not getattr(self, "_warned_ssd", False):
            logger.warning("INPUT.SSD_AUGMENTATION.ENABLED is True but the training batches did "
                           "not come from SSDDatasetMapper: build the loader with "
                           "rsloss_d2.data.transforms.build_train_mapper(cfg).")
            self._warned_ssd = True

    # ------------------------------------------------------------------ losses
    def losses(self, logits, deltas, coeffs, prototypes, anchors, targets):
        """Assign anchors, then the YOLACT or RS-YOLACT losses (module docstring)."""
        b, r, _ = logits.shape
        state, matched = assign_anchors(anchors, targets, *self.iou_thresholds)
        labels = torch.gather(targets.classes, 1, matched) if targets.classes.shape[1] else \
            torch.zeros_like(matched)
        pos_flat = (state == 1).reshape(-1).nonzero().squeeze(1)  # image-major row order
        img_idx = pos_flat // r
        anchor_idx = pos_flat % r
        gt_idx = matched.reshape(-1)[pos_flat]
        pos_gt_boxes = targets.boxes[img_idx, gt_idx]
        pos_deltas = deltas.reshape(b * r, 4)[pos_flat]
        pos_coeffs = coeffs.reshape(b * r, -1)[pos_flat]
        hp, wp = prototypes.shape[-2:]

        if self.loss == "rank_sort":
            cls_labels = torch.where(state == 1, labels, torch.full_like(labels, self.num_classes))
            cls_labels = torch.where(state < 0, torch.full_like(labels, -1), cls_labels)
            pred_boxes = self.box_transform.apply_deltas(pos_deltas.float(), anchors[anchor_idx])
            masks = self._positive_masks(prototypes, pos_coeffs, img_idx, pos_gt_boxes, hp, wp)
            losses, stats = rs_yolact_losses(logits.reshape(b * r, -1), cls_labels.reshape(-1),
                                             pred_boxes, pos_gt_boxes, masks,
                                             targets.masks[img_idx, gt_idx],
                                             delta=self.rs_delta, num_images=b)
            put_scalars("yolact/", stats)
            return losses

        loss_cls, normaliser = ohem_classification_loss(logits, state, labels, self.neg_pos_ratio)
        target_deltas = self.box_transform.get_deltas(anchors[anchor_idx], pos_gt_boxes)
        loss_box = smooth_l1_box_loss(pos_deltas, target_deltas, self.smooth_l1_beta, normaliser)
        keep = sample_masks_to_train(img_idx, b, self.max_masks_to_train)
        masks = self._positive_masks(prototypes, pos_coeffs[keep], img_idx[keep],
                                     pos_gt_boxes[keep], hp, wp)
        loss_mask = yolact_mask_loss(masks, targets.masks[img_idx[keep], gt_idx[keep]],
                                     pos_gt_boxes[keep], self.input_size,
                                     keep.sum().to(masks.dtype))
        if pos_flat.numel() == 0:  # keep every branch in the graph (DDP), zero gradient
            loss_box = loss_box + deltas.sum() * 0
            loss_mask = loss_mask + coeffs.sum() * 0 + prototypes.sum() * 0
        put_scalars("yolact/", {"num_pos": pos_flat.numel() / b, "num_masks": int(keep.sum())})
        return {"loss_cls": loss_cls, "loss_bbox": loss_box * self.box_loss_weight,
                "loss_mask": loss_mask * self.mask_loss_weight}

    def _positive_masks(self, prototypes, coeffs, img_idx, gt_boxes, hp, wp):
        """(P, H_p, W_p) masks of the positives, cropped by their assigned GT boxes."""
        masks = assemble_masks_batched(prototypes, coeffs, img_idx)
        return crop_masks(masks, boxes_to_mask_frame(gt_boxes, self.input_size, hp, wp))
