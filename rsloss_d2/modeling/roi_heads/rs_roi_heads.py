"""RS-Faster / RS-Mask R-CNN ROI heads (``RSStandardROIHeads``).

Official counterpart: ``RankBasedStandardRoIHead`` + ``RankBasedShared2FCBBoxHead`` +
``RankBasedFCNMaskHead`` of the RankSortLoss repository. Differences from Detectron2's
``StandardROIHeads``:

* **no proposal sampler**: every proposal of every image plus the GT boxes (``PROPOSAL_APPEND_GT``)
  is used (official ``RandomSampler(num=1e10)``); labels from an IoU-0.5 ``MaxIoUMatcher``
  (``match_low_quality``: ``MODEL.RS_ROI_HEADS.ALLOW_LOW_QUALITY_MATCHES``, False for Faster /
  Cascade, True for Mask R-CNN, with ``min_pos_iou`` = the IoU threshold, as mmdet);
* box predictor :class:`RSFastRCNNOutputLayers` (RS Loss over all RoIs × C, balanced GIoU);
* mask head (``RSMaskRCNNConvUpsampleHead``) trained on the positive RoIs with the box head's score
  weights (field ``rs_score_weight``, carried by each RoI so weights and RoIs stay aligned) and
  ``L_roi_rank + L_roi_sort`` for its λ; at most ``MODEL.RS_ROI_HEADS.MASK_MAX_POSITIVES`` (200)
  positives of the per-process batch, drawn at random when there are more (official
  ``resample_for_mask_head``, whose weight/RoI misalignment is deliberately not reproduced).

All RS quantities are per process (per GPU): its images' RoIs are ranked together.
"""
from typing import Dict, List, Optional

import torch
from detectron2.config import configurable
from detectron2.modeling.roi_heads.roi_heads import (
    ROI_HEADS_REGISTRY,
    StandardROIHeads,
    select_foreground_proposals,
)
from detectron2.structures import Boxes, Instances

from ..box_losses import RSDetectionLosses, foreground_indices
from ..matchers import MaxIoUMatcher
from .rs_fast_rcnn import RSFastRCNNOutputLayers
from .rs_mask_head import SCORE_WEIGHT_FIELD, RSMaskRCNNConvUpsampleHead

__all__ = ["RSStandardROIHeads", "RSROIHeadsMixin"]


class RSROIHeadsMixin:
    """What the RS standard and cascade ROI heads share: no sampling, mask-head plumbing.

    Expects ``self.num_classes``, ``self.mask_on`` (and mask pooler / head) from Detectron2's
    ``StandardROIHeads`` and ``self.mask_max_positives`` from the subclass.
    """

    def _sample_proposals(self, matched_idxs, matched_labels, gt_classes):
        """Label every proposal, keep all of them (no 512 / 0.25 sampling).

        Args:
            matched_idxs: (N,) matched GT index per proposal.  matched_labels: (N,) in {-1, 0, 1}.
            gt_classes: (M,) GT classes of the image.

        Returns:
            ``arange(N)`` and the (N,) labels: GT class, ``num_classes`` (background) or −1.
        """
        if gt_classes.numel() > 0:
            labels = gt_classes[matched_idxs]
            labels[matched_labels == 0] = self.num_classes
            labels[matched_labels == -1] = -1
        else:
            labels = torch.zeros_like(matched_idxs) + self.num_classes
        return torch.arange(matched_idxs.numel(), device=matched_idxs.device), labels

    def _attach_score_weights(self, proposals: List[Instances], out: RSDetectionLosses):
        """Store each positive's score weight on its RoI (``rs_score_weight``; 0 for others)."""
        if not proposals:
            return
        gt_classes = torch.cat([p.gt_classes for p in proposals])
        full = torch.zeros(gt_classes.numel(), device=gt_classes.device)
        if out.num_pos > 0:
            full[foreground_indices(gt_classes, self.num_classes)] = out.score_weights.to(full)
        for p, w in zip(proposals, full.split([len(p) for p in proposals])):
            p.set(SCORE_WEIGHT_FIELD, w)

    def _limit_mask_positives(self, instances: List[Instances]) -> List[Instances]:
        """Random subset of at most ``mask_max_positives`` positives over the batch (aligned)."""
        counts = [len(x) for x in instances]
        total = sum(counts)
        if self.mask_max_positives <= 0 or total <= self.mask_max_positives:
            return instances
        device = instances[0].gt_classes.device
        keep = torch.zeros(total, dtype=torch.bool, device=device)
        keep[torch.randperm(total, device=device)[: self.mask_max_positives]] = True
        return [x[k] for x, k in zip(instances, keep.split(counts))]

    def _forward_mask(
        self,
        features: Dict[str, torch.Tensor],
        instances: List[Instances],
        cls_loss_value: Optional[torch.Tensor] = None,
    ):
        """Mask branch; in training on the (capped) positives with RS weights and λ reference.

        Args:
            features: FPN features.  instances: training: the labelled proposals (with
                ``rs_score_weight``); inference: the detections.
            cls_loss_value: ``L_roi_rank + L_roi_sort`` (training).
        """
        if not self.mask_on:
            return {} if self.training else instances
        if self.training:
            instances, _ = select_foreground_proposals(instances, self.num_classes)
            instances = self._limit_mask_positives(instances)
        if self.mask_pooler is not None:
            feats = [features[f] for f in self.mask_in_features]
            boxes = [x.proposal_boxes if self.training else x.pred_boxes for x in instances]
            feats = self.mask_pooler(feats, boxes)
        else:
            feats = {f: features[f] for f in self.mask_in_features}
        if self.training and isinstance(self.mask_head, RSMaskRCNNConvUpsampleHead):
            return self.mask_head(feats, instances, cls_loss_value=cls_loss_value)
        return self.mask_head(feats, instances)

    @staticmethod
    def _cls_loss_value(losses: Dict[str, torch.Tensor], suffix: str = "") -> torch.Tensor:
        """``(L_roi_rank + L_roi_sort).detach()``, the reference of λ_mask."""
        return (losses["loss_roi_rank" + suffix] + losses["loss_roi_sort" + suffix]).detach()


@ROI_HEADS_REGISTRY.register()
class RSStandardROIHeads(RSROIHeadsMixin, StandardROIHeads):
    """Standard ROI heads of RS-Faster / RS-Mask R-CNN (see the module docstring).

    Losses: ``loss_roi_rank``, ``loss_roi_sort``, ``loss_roi_bbox`` (+ ``loss_mask``).
    Logged: ``roi_head/num_fg_samples``, ``roi_head/num_bg_samples`` (per image, all RoIs),
    ``fast_rcnn/`` + :func:`~rsloss_d2.modeling.box_losses.rs_scalars`' names,
    ``num_gt_pos_rois``, ``num_rois``, ``mean_pos_proposal_iou``, ``fg_cls_accuracy``;
    ``mask_rcnn/{num_masks}`` + :func:`~rsloss_d2.modeling.box_losses.rs_mask_scalars`' names.
    """

    @configurable
    def __init__(self, *, mask_max_positives: int = 200, **kwargs):
        """
        Args:
            mask_max_positives: cap on positive RoIs fed to the mask head per process batch
                (≤ 0: no cap).
            kwargs: arguments of :class:`StandardROIHeads`; ``box_predictor`` must be an
                :class:`RSFastRCNNOutputLayers`; ``batch_size_per_image`` /
                ``positive_fraction`` are unused.
        """
        super().__init__(**kwargs)
        self.mask_max_positives = mask_max_positives

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        iou = cfg.MODEL.ROI_HEADS.IOU_THRESHOLDS
        ret["proposal_matcher"] = MaxIoUMatcher(
            iou,
            cfg.MODEL.ROI_HEADS.IOU_LABELS,
            allow_low_quality_matches=cfg.MODEL.RS_ROI_HEADS.ALLOW_LOW_QUALITY_MATCHES,
            min_pos_iou=iou[-1],  # mmdet rcnn assigner: min_pos_iou = pos_iou_thr = 0.5
        )
        ret["mask_max_positives"] = cfg.MODEL.RS_ROI_HEADS.MASK_MAX_POSITIVES
        return ret

    @classmethod
    def _init_box_head(cls, cfg, input_shape):
        ret = super()._init_box_head(cfg, input_shape)
        ret["box_predictor"] = RSFastRCNNOutputLayers(cfg, ret["box_head"].output_shape)
        return ret

    def forward(self, images, features, proposals, targets=None):
        """See :meth:`StandardROIHeads.forward`; training passes the RS weights to the mask head."""
        del images
        if not self.training:
            pred_instances = self._forward_box(features, proposals)
            return self.forward_with_given_boxes(features, pred_instances), {}
        assert targets, "'targets' argument is required during training"
        proposals = self.label_and_sample_proposals(proposals, targets)
        del targets
        losses = self._forward_box(features, proposals)
        losses.update(self._forward_mask(features, proposals, self._cls_loss_value(losses)))
        losses.update(self._forward_keypoint(features, proposals))
        return proposals, losses

    def _forward_box(self, features: Dict[str, torch.Tensor], proposals: List[Instances]):
        """Box branch over all RoIs; in training also sets ``rs_score_weight`` on the RoIs.

        Returns:
            training: the RS loss dict; inference: per-image detections.
        """
        feats = [features[f] for f in self.box_in_features]
        box_features = self.box_pooler(feats, [x.proposal_boxes for x in proposals])
        box_features = self.box_head(box_features)
        predictions = self.box_predictor(box_features)
        del box_features
        if not self.training:
            return self.box_predictor.inference(predictions, proposals)[0]
        losses, out = self.box_predictor.rs_losses(predictions, proposals)
        self._attach_score_weights(proposals, out)
        if self.train_on_pred_boxes:
            with torch.no_grad():
                pred_boxes = self.box_predictor.predict_boxes_for_gt_classes(predictions, proposals)
                for p, b in zip(proposals, pred_boxes):
                    p.proposal_boxes = Boxes(b)
        return losses
