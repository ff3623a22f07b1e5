"""RS R-CNN box predictor: sigmoid classifier without background + RS Loss + balanced GIoU.

Official counterpart: ``RankBasedShared2FCBBoxHead`` of the RankSortLoss repository (RS Loss paper,
Oksuz et al., ICCV 2021, Sec. 4). The box trunk stays Detectron2's ``FastRCNNConvFCHead``; this
module only replaces the last two linear layers and their loss / inference.

* ``cls_score``: C outputs (no background logit), init normal std 0.01, bias 0; ``bbox_pred``
  class-specific (or class-agnostic in the Cascade) with std 0.001.
* Loss over **all** RoIs of the per-process batch (the RS ROI heads do not sample): RS Loss over
  R × C entries, sorting target of a positive = IoU of its decoded prediction (GT-class row, or the
  class-agnostic box) with its GT; GIoU of the decoded boxes averaged with the max-sigmoid score
  of each positive and value-balanced. Loss names ``loss_roi_rank``, ``loss_roi_sort``,
  ``loss_roi_bbox``.
* Inference: ``sigmoid`` scores (padded with a dummy background column for Detectron2's
  ``fast_rcnn_inference``), ``score_thresh`` = ``MODEL.ROI_HEADS.SCORE_THRESH_TEST`` (the paper
  configs use 0.40, "for efficiency"), NMS ``MODEL.ROI_HEADS.NMS_THRESH_TEST`` (0.5),
  ``TEST.DETECTIONS_PER_IMAGE`` (100) per image. ``MODEL.RS_ROI_HEADS.CLS_ACTIVATION: "gumbel"``
  gives Gumbel scores ``exp(−exp(−x))`` instead (RS-Mask R-CNN + Gumbel, GOL; training unchanged:
  RS Loss ranks the logits, and the GIoU / mask score weights stay max-sigmoid).
"""
from typing import Dict, List, Tuple

import torch
from detectron2.config import configurable
from detectron2.layers import ShapeSpec, cat
from detectron2.modeling.roi_heads.fast_rcnn import FastRCNNOutputLayers
from detectron2.structures import Instances
from torch import nn

from rsloss_d2.losses import gumbel_activation

from ..box_losses import (
    RSDetectionLosses,
    aligned_iou,
    foreground_indices,
    rs_detection_losses,
    rs_scalars,
)
from ..events import put_scalars

__all__ = ["RSFastRCNNOutputLayers"]


class RSFastRCNNOutputLayers(FastRCNNOutputLayers):
    """Fast R-CNN output layers for RS Loss (C sigmoid logits, no background column).

    ``forward(x)`` returns ``(scores (R, C) logits, deltas (R, C·4) or (R, 4))``.
    Built by :class:`RSStandardROIHeads` / :class:`RSCascadeROIHeads`, not registered.
    """

    @configurable
    def __init__(self, input_shape: ShapeSpec, *, rs_delta: float = 0.5,
                 cls_activation: str = "sigmoid", box_loss_on_gt_proposals: bool = True,
                 **kwargs):
        """
        Args:
            input_shape: shape of the box-trunk output.
            rs_delta: δ of RS Loss.
            cls_activation: test score activation, "sigmoid" (official) or "gumbel".
            box_loss_on_gt_proposals: True (official): the GT boxes appended to the proposals
                are in the GIoU box loss like every positive. False: they are left out of the
                box loss and of λ (still ranked, with their IoU as sorting target). Their box
                loss is ≈ 0 while the regressor is untrained, so when they are most of the
                positives (untrained RPN) λ = (L_rank + L_sort) / L_box explodes (measured up to
                ~280 on `shapes`, configs/shapes/README.md).
            kwargs: arguments of :class:`FastRCNNOutputLayers` (``box2box_transform``,
                ``num_classes``, ``cls_agnostic_bbox_reg``, ``test_*``); its loss options
                (``box_reg_loss_type``, ``loss_weight``, federated / sigmoid CE) are unused.
        """
        kwargs["use_fed_loss"] = False
        super().__init__(input_shape, **kwargs)
        if isinstance(input_shape, int):
            input_shape = ShapeSpec(channels=input_shape)
        input_size = input_shape.channels * (input_shape.width or 1) * (input_shape.height or 1)
        self.cls_score = nn.Linear(input_size, self.num_classes)  # no background logit
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.constant_(self.cls_score.bias, 0)
        self.rs_delta = rs_delta
        if cls_activation not in ("sigmoid", "gumbel"):
            raise ValueError(f"cls_activation: 'sigmoid' or 'gumbel', not {cls_activation!r}")
        self.cls_activation = cls_activation
        self.box_loss_on_gt_proposals = box_loss_on_gt_proposals

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        ret["rs_delta"] = cfg.MODEL.RANK_LOSS.RS_DELTA
        ret["cls_activation"] = cfg.MODEL.RS_ROI_HEADS.CLS_ACTIVATION
        ret["box_loss_on_gt_proposals"] = cfg.MODEL.RS_ROI_HEADS.BOX_LOSS_ON_GT_PROPOSALS
        return ret

    def rs_losses(
        self, predictions: Tuple[torch.Tensor, torch.Tensor], proposals: List[Instances]
    ) -> Tuple[Dict[str, torch.Tensor], RSDetectionLosses]:
        """RS R-CNN losses and what the mask head needs (score weights, L_rank + L_sort).

        Args:
            predictions: ``(scores (R, C), deltas (R, C·4) or (R, 4))`` of :meth:`forward`.
            proposals: per-image Instances with ``proposal_boxes``, ``gt_classes`` (C =
                background, −1 ignored) and, for images with GT, ``gt_boxes``; R = Σ len.

        Returns:
            ``{"loss_roi_rank", "loss_roi_sort", "loss_roi_bbox"}`` and the
            :class:`RSDetectionLosses` (its ``score_weights`` follow the order of
            :func:`foreground_indices` over the concatenated proposals).
        """
        scores, deltas = predictions
        if len(proposals):
            gt_classes = cat([p.gt_classes for p in proposals], dim=0)
            proposal_boxes = cat([p.proposal_boxes.tensor for p in proposals], dim=0)
            # images without GT have no gt_boxes: their proposals are all negative, any box works
            gt_boxes = cat(
                [(p.gt_boxes if p.has("gt_boxes") else p.proposal_boxes).tensor for p in proposals],
                dim=0,
            )
        else:
            gt_classes = torch.empty(0, dtype=torch.int64, device=scores.device)
            proposal_boxes = gt_boxes = torch.empty((0, 4), device=scores.device)

        pos = foreground_indices(gt_classes, self.num_classes)
        box_dim = proposal_boxes.shape[1]
        if deltas.shape[1] == box_dim:  # class-agnostic (Cascade)
            pos_deltas = deltas[pos]
        else:  # class-specific: the GT-class row (official)
            pos_deltas = deltas.view(-1, self.num_classes, box_dim)[pos, gt_classes[pos]]
        pos_pred = self.box2box_transform.apply_deltas(pos_deltas, proposal_boxes[pos])

        # appended GT boxes: the proposal is its GT box (Detectron2 add_ground_truth_to_proposals)
        pos_is_gt = (proposal_boxes[pos] == gt_boxes[pos]).all(dim=1)
        out = rs_detection_losses(
            scores, gt_classes, pos_pred, gt_boxes[pos], delta=self.rs_delta,
            box_loss_mask=None if self.box_loss_on_gt_proposals else ~pos_is_gt,
        )
        self._log(scores, gt_classes, pos, out, num_images=max(len(proposals), 1),
                  pos_proposals=proposal_boxes[pos], pos_gt_boxes=gt_boxes[pos],
                  pos_is_gt=pos_is_gt)
        losses = {
            "loss_roi_rank": out.loss_rank,
            "loss_roi_sort": out.loss_sort,
            "loss_roi_bbox": out.loss_box,
        }
        return losses, out

    def losses(self, predictions, proposals) -> Dict[str, torch.Tensor]:
        """Detectron2 interface: the loss dict of :meth:`rs_losses`."""
        return self.rs_losses(predictions, proposals)[0]

    @staticmethod
    def _log(scores, gt_classes, pos, out: RSDetectionLosses, num_images: int,
             pos_proposals: torch.Tensor, pos_gt_boxes: torch.Tensor, pos_is_gt: torch.Tensor):
        """Number of positives (and of appended GT boxes among them), λ, unbalanced GIoU loss,
        mean IoU of the positives' proposals and of their regressed boxes, fg accuracy.

        ``pos_proposals`` / ``pos_gt_boxes``: (P, 4) proposal and matched GT box of each positive;
        ``pos_is_gt``: (P,) bool, the positive is an appended GT box.
        """
        proposal_ious = aligned_iou(pos_proposals, pos_gt_boxes)
        stats = rs_scalars(out, num_images)  # mean_pos_iou: of the regressed boxes
        # GT boxes appended to the proposals (Detectron2 / mmdet add_gt_as_proposals): their
        # proposal is their GT box, so their box loss starts at ≈ 0
        stats["num_gt_pos_rois"] = pos_is_gt.sum() / num_images
        stats["num_rois"] = gt_classes.numel() / num_images
        # the same names on every call (None: undefined here), as put_scalars all-reduces them
        stats["mean_pos_proposal_iou"] = stats["fg_cls_accuracy"] = None
        if out.num_pos > 0:
            pred = scores.detach()[pos].argmax(dim=1)
            stats["mean_pos_proposal_iou"] = proposal_ious.mean()
            stats["fg_cls_accuracy"] = (pred == gt_classes[pos]).float().mean()
        put_scalars("fast_rcnn/", stats)

    def predict_probs(
        self, predictions: Tuple[torch.Tensor, torch.Tensor], proposals: List[Instances]
    ):
        """Sigmoid (or Gumbel) scores, each (Ri, C + 1) with a zero dummy background column."""
        scores, _ = predictions
        probs = gumbel_activation(scores) if self.cls_activation == "gumbel" else scores.sigmoid()
        probs = torch.cat([probs, probs.new_zeros(probs.shape[0], 1)], dim=1)
        return probs.split([len(p) for p in proposals], dim=0)
