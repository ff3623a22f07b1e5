"""RS-RPN: Detectron2's RPN with objectness trained by Rank & Sort Loss (``RSRPN``).

Official counterpart: ``RankBasedRPNHead`` of kemaloksuz/RankSortLoss
(RS Loss paper, Oksuz et al., ICCV 2021, Sec. 4). Differences from Detectron2's RPN:

* **no anchor sampling**: every anchor with IoU ≥ 0.7 (or that is the best anchor of a GT with
  IoU ≥ ``min_pos_iou`` 0.3, mmdet ``MaxIoUAssigner`` rule) is positive, IoU < 0.3 negative, the
  rest ignored (target −1); anchors crossing the image border by more than
  ``MODEL.RPN.BOUNDARY_THRESH`` are ignored when it is ≥ 0 (RS-Cascade uses 0);
* objectness: one RS Loss over all anchors of all images of the per-process batch (C = 1), the
  sorting target of a positive is the IoU of its (detached) decoded box with its GT;
* box regression: GIoU loss of the decoded boxes, averaged with the positives' sigmoid scores as
  weights and value-balanced (``λ = (L_rank + L_sort) / L_box``), no hand-tuned weight;
* all three losses are multiplied by ``head_weight`` (``MODEL.RS_RPN.HEAD_WEIGHT``, 0.2);
* assignment as mmdet's: anchors that cross the border (``BOUNDARY_THRESH`` ≥ 0) are removed
  **before** matching, so a GT whose best anchor crosses the border still gets its best inside
  anchor (Detectron2 matches all anchors and drops the outside ones afterwards, leaving such a
  GT without positive); anchors of cells in the batch padding (beyond the image padded alone to
  a multiple of 32, mmdet's ``valid_flags``) are ignored, not negatives.

The official box coder uses stds [0.1, 0.1, 0.2, 0.2] and decodes w.r.t. a unit box; decoding
w.r.t. the anchor gives the same IoU / GIoU, so Detectron2's ``Box2BoxTransform`` with
``MODEL.RPN.BBOX_REG_WEIGHTS = (10, 10, 5, 5)`` (the RS configs set it) is used. Proposal
generation (per-level top-k, per-level NMS 0.7, post-NMS top-k) is Detectron2's, unchanged.

Several processes: the ranking, the number of positives and λ are per process, as in the
official head (README "Several GPUs"); the logged ``rpn/`` statistics are cross-process means.
"""
from typing import Dict, List

import torch
from detectron2.config import configurable
from detectron2.layers import cat
from detectron2.modeling.proposal_generator.build import PROPOSAL_GENERATOR_REGISTRY
from detectron2.modeling.proposal_generator.rpn import RPN
from detectron2.structures import Boxes, Instances, pairwise_iou

from ..box_losses import rs_detection_losses, rs_scalars
from ..events import put_scalars
from ..matchers import OFFICIAL_PAD_DIVISOR, MaxIoUMatcher, valid_anchor_mask

__all__ = ["RSRPN"]

@PROPOSAL_GENERATOR_REGISTRY.register()
class RSRPN(RPN):
    """Region proposal network trained with RS Loss + score-weighted, value-balanced GIoU.

    Losses (per-process batch): ``loss_rpn_rank``, ``loss_rpn_sort``, ``loss_rpn_bbox``, each
    × ``head_weight``. Logged to EventStorage: ``rpn/`` + the names of
    :func:`~rsloss_d2.modeling.box_losses.rs_scalars` and ``num_neg`` (negatives per image).
    """

    @configurable
    def __init__(self, *, head_weight: float = 0.2, rs_delta: float = 0.5, **kwargs):
        """
        Args:
            head_weight: multiplier of all three RPN losses (official ``head_weight`` 0.2). Note a
                weight on ``loss_rpn_sort`` has no effect on the gradient (RS Loss attaches the
                whole gradient to ``loss_rpn_rank``); the one on ``loss_rpn_rank`` scales it.
            rs_delta: δ of RS Loss.
            kwargs: arguments of Detectron2's :class:`RPN` (``batch_size_per_image``,
                ``positive_fraction``, ``box_reg_loss_type``, ``loss_weight`` are unused).
        """
        super().__init__(**kwargs)
        self.head_weight = head_weight
        self.rs_delta = rs_delta

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        ret["anchor_matcher"] = MaxIoUMatcher(
            cfg.MODEL.RPN.IOU_THRESHOLDS,
            cfg.MODEL.RPN.IOU_LABELS,
            allow_low_quality_matches=True,
            min_pos_iou=cfg.MODEL.RS_RPN.MIN_POS_IOU,
        )
        ret["head_weight"] = cfg.MODEL.RS_RPN.HEAD_WEIGHT
        ret["rs_delta"] = cfg.MODEL.RANK_LOSS.RS_DELTA
        return ret

    def _subsample_labels(self, label: torch.Tensor) -> torch.Tensor:
        """No sampling (official ``PseudoSampler``): every assigned anchor is used."""
        return label

    @torch.jit.unused
    @torch.no_grad()
    def label_and_sample_anchors(self, anchors: List[Boxes], gt_instances: List[Instances]):
        """Detectron2's per-image labelling with the official anchor validity (module doc).

        Returns:
            N label tensors (R,) in {1, 0, −1} and N matched-GT-box tensors (R, 4).
        """
        all_anchors = Boxes.cat(anchors)
        valid = valid_anchor_mask([a.tensor for a in anchors], self.anchor_generator.strides,
                                  [inst.image_size for inst in gt_instances],
                                  OFFICIAL_PAD_DIVISOR, self.anchor_generator.offset)
        gt_labels, matched_gt_boxes = [], []
        for inst, usable in zip(gt_instances, valid):  # one (G, R) IoU matrix per image
            if self.anchor_boundary_thresh >= 0:
                usable &= all_anchors.inside_box(inst.image_size, self.anchor_boundary_thresh)
            gt_boxes = inst.gt_boxes.to(all_anchors.device)
            # unusable anchors take no part in matching: IoU 0 is below every threshold and
            # below min_pos_iou, so they are never a GT's best match (mmdet removes them)
            iou = pairwise_iou(gt_boxes, all_anchors) * usable
            matched_idxs, labels = self.anchor_matcher(iou)
            labels = labels.to(device=gt_boxes.device).masked_fill(~usable, -1)
            gt_labels.append(labels)
            matched_gt_boxes.append(gt_boxes[matched_idxs].tensor if len(gt_boxes)
                                    else torch.zeros_like(all_anchors.tensor))
        return gt_labels, matched_gt_boxes

    @torch.jit.unused
    def losses(
        self,
        anchors: List[Boxes],
        pred_objectness_logits: List[torch.Tensor],
        gt_labels: List[torch.Tensor],
        pred_anchor_deltas: List[torch.Tensor],
        gt_boxes: List[torch.Tensor],
    ) -> Dict[str, torch.Tensor]:
        """RS-RPN losses.

        Args:
            anchors: L Boxes, level l of shape (Hl·Wl·A, 4).
            pred_objectness_logits: L tensors (N, Hl·Wl·A).
            gt_labels: N tensors (R,), R = Σ_l Hl·Wl·A, values 1 / 0 / −1 (pos / neg / ignored).
            pred_anchor_deltas: L tensors (N, Hl·Wl·A, 4).
            gt_boxes: N tensors (R, 4), matched GT box of each anchor.

        Returns:
            ``{"loss_rpn_rank", "loss_rpn_sort", "loss_rpn_bbox"}`` (scalars, × head_weight).
        """
        num_images = len(gt_labels)
        labels = torch.stack(gt_labels).long()  # (N, R)
        logits = cat(pred_objectness_logits, dim=1)  # (N, R)
        deltas = cat(pred_anchor_deltas, dim=1)  # (N, R, 4)
        anchors_t = Boxes.cat(anchors).tensor  # (R, 4)
        matched = torch.stack(gt_boxes)  # (N, R, 4)

        pos = labels == 1
        # mmdet-style labels for C = 1: 0 = object (foreground class 0), 1 = background, -1 ignored
        cls_labels = torch.where(pos, torch.zeros_like(labels), labels.new_ones(()))
        cls_labels = torch.where(labels < 0, labels, cls_labels).reshape(-1)
        # foreground rows of the flat (N·R,) vector, ascending (the order of a boolean mask):
        # one nonzero (a data-dependent size, one host sync), then index_select for the three
        # tensors (a boolean-mask indexing of each would sync once per tensor)
        pos_idx = pos.reshape(-1).nonzero().squeeze(1)
        pos_anchors = anchors_t.index_select(0, pos_idx % anchors_t.shape[0])
        pos_pred = self.box2box_transform.apply_deltas(
            deltas.reshape(-1, 4).index_select(0, pos_idx), pos_anchors)
        pos_gt = matched.reshape(-1, 4).index_select(0, pos_idx)

        out = rs_detection_losses(
            logits.reshape(-1, 1), cls_labels, pos_pred, pos_gt, delta=self.rs_delta
        )

        stats = rs_scalars(out, num_images)
        stats["num_neg"] = (labels == 0).sum() / num_images
        put_scalars("rpn/", stats)

        hw = self.head_weight
        return {
            "loss_rpn_rank": hw * out.loss_rank,
            "loss_rpn_sort": hw * out.loss_sort,
            "loss_rpn_bbox": hw * out.loss_box,
        }
