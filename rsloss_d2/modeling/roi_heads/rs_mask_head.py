"""RS-Mask R-CNN mask head: dice loss weighted by the box head's scores, value-balanced.

Official counterpart: ``RankBasedFCNMaskHead`` of the RankSortLoss repository (RS Loss paper,
Oksuz et al., ICCV 2021, Sec. 4). Same layers as Detectron2's ``MaskRCNNConvUpsampleHead``
(convs + deconv + class-specific 1×1 predictor); only the loss differs:

    ℓ_k    = 1 − 2 Σ p·m / (Σ p² + Σ m² + 1e-5)    (p: sigmoid of the GT-class mask, m: binary)
    L_mask = Σ_k w_k ℓ_k / Σ_k w_k                  (w_k: box head's max-sigmoid score of RoI k)
    loss_mask = λ_mask · L_mask,  λ_mask = (L_roi_rank + L_roi_sort).detach() / L_mask

The RS ROI heads put ``w_k`` on each RoI (field ``rs_score_weight``) and pass
``L_roi_rank + L_roi_sort`` as ``cls_loss_value``; weights travel with their RoIs through the
foreground selection and the random 200-RoI cap, so they stay aligned (the official
``resample_for_mask_head`` misaligns them — not reproduced).

Several processes: L_mask and λ_mask are per process, as in the official head (README "Several
GPUs"); the logged ``mask_rcnn/`` statistics are cross-process means.
"""
from typing import List, Optional

import torch
from detectron2.layers import cat
from detectron2.modeling.roi_heads.mask_head import (
    ROI_MASK_HEAD_REGISTRY,
    MaskRCNNConvUpsampleHead,
    mask_rcnn_inference,
)
from detectron2.structures import Instances

from rsloss_d2.losses import balancing_lambda, dice_loss, score_weighted_mean

from ..box_losses import rs_mask_scalars
from ..events import put_scalars

__all__ = ["RSMaskRCNNConvUpsampleHead", "DICE_EPS"]

DICE_EPS = 1e-5  # added once to Σp² + Σm² (RankBasedFCNMaskHead)

SCORE_WEIGHT_FIELD = "rs_score_weight"  # per-RoI field set by the RS ROI heads


@ROI_MASK_HEAD_REGISTRY.register()
class RSMaskRCNNConvUpsampleHead(MaskRCNNConvUpsampleHead):
    """``MaskRCNNConvUpsampleHead`` with the RS-Mask R-CNN loss (score-weighted, balanced dice).

    Configured exactly as Detectron2's head (``MODEL.ROI_MASK_HEAD.*``). Training input: the
    positive RoIs (``proposal_boxes``, ``gt_classes``, ``gt_masks`` and ``rs_score_weight``).
    Used outside the RS ROI heads (no ``rs_score_weight``/``cls_loss_value``), the weights are 1
    and λ_mask = 1 (plain mean dice).
    """

    def forward(
        self, x, instances: List[Instances], cls_loss_value: Optional[torch.Tensor] = None
    ):
        """
        Args:
            x: (P, Cin, S, S) pooled RoI features.
            instances: per-image Instances of the P RoIs (same order).
            cls_loss_value: scalar ``L_roi_rank + L_roi_sort`` of the box head (training).

        Returns:
            training: ``{"loss_mask": λ_mask · L_mask}``; inference: ``instances`` with
            ``pred_masks``.
        """
        x = self.layers(x)
        if self.training:
            return {"loss_mask": self.rs_mask_loss(x, instances, cls_loss_value)}
        mask_rcnn_inference(x, instances)
        return instances

    def rs_mask_loss(
        self,
        pred_mask_logits: torch.Tensor,
        instances: List[Instances],
        cls_loss_value: Optional[torch.Tensor],
    ) -> torch.Tensor:
        """Score-weighted dice loss balanced to the classification loss (RS Loss paper, Sec. 4).

        Args:
            pred_mask_logits: (P, K, M, M), K = C (class-specific) or 1.
            instances: the P positive RoIs, per image.
            cls_loss_value: ``L_roi_rank + L_roi_sort`` (detached inside) or None (λ = 1).

        Returns:
            scalar; 0 attached to the graph if P = 0.
        """
        num_masks, _, side, _ = pred_mask_logits.shape
        instances = [x for x in instances if len(x) > 0]
        if num_masks == 0 or not instances:
            # the same names as below on every process (put_scalars all-reduces them)
            stats = {"num_masks": 0}
            # λ_mask: balancing_lambda of a zero loss
            stats.update(rs_mask_scalars(0.0, None if cls_loss_value is None else 0.0))
            put_scalars("mask_rcnn/", stats)
            return pred_mask_logits.sum() * 0
        gt_masks = cat(
            [x.gt_masks.crop_and_resize(x.proposal_boxes.tensor, side) for x in instances], dim=0
        ).to(device=pred_mask_logits.device)
        if pred_mask_logits.shape[1] == 1:
            logits = pred_mask_logits[:, 0]
        else:
            gt_classes = cat([x.gt_classes for x in instances], dim=0).long()
            logits = pred_mask_logits[torch.arange(num_masks, device=gt_classes.device), gt_classes]
        if gt_masks.dtype != torch.bool:
            gt_masks = gt_masks > 0.5
        # sigmoid after the fp32 cast (fp64 kept), eps once
        dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
        losses = dice_loss(logits.to(dtype).sigmoid(), gt_masks, DICE_EPS, eps_per_sum=False)
        if instances[0].has(SCORE_WEIGHT_FIELD):
            weights = cat([x.get(SCORE_WEIGHT_FIELD) for x in instances], dim=0).detach()
        else:
            weights = torch.ones_like(losses)
        loss = score_weighted_mean(losses, weights, eps=1e-10)

        stats = {"num_masks": num_masks}
        if cls_loss_value is None:
            stats.update(rs_mask_scalars(loss.detach(), None))
            put_scalars("mask_rcnn/", stats)
            return loss
        lam = balancing_lambda(loss, cls_loss_value)  # detached; 0 if L_mask == 0
        stats.update(rs_mask_scalars(loss.detach(), lam))
        balanced = loss * lam  # = value_balanced(loss, cls_loss_value)
        put_scalars("mask_rcnn/", stats)
        return balanced
