"""RS-Cascade R-CNN ROI heads (``RSCascadeROIHeads``).

Official counterpart: ``RankBasedCascadeRoIHead`` of the RankSortLoss repository. Three stages,
each an :class:`RSFastRCNNOutputLayers` (RS Loss over all RoIs × C, IoU sorting targets,
score-weighted value-balanced GIoU) on a Detectron2 ``FastRCNNConvFCHead`` trunk:

* stage IoU thresholds ``MODEL.ROI_BOX_CASCADE_HEAD.IOUS`` = (0.5, 0.6, 0.7), positive =
  negative threshold (no ignore band), ``match_low_quality`` False;
* class-agnostic regression (``MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG True``) with
  ``MODEL.ROI_BOX_CASCADE_HEAD.BBOX_REG_WEIGHTS`` = (10, 10, 5, 5) in **all three** stages
  (official stds [0.1, 0.1, 0.2, 0.2]; the standard cascade uses 10/20/30);
* stage loss weights ``MODEL.RS_ROI_HEADS.CASCADE_STAGE_LOSS_WEIGHTS`` = [1, 1, 1] (standard
  [1, 0.5, 0.25]); like mmdet, and unlike Detectron2's ``CascadeROIHeads``, the gradient flowing
  into the shared RoI features is **not** divided by the number of stages;
* no sampling in any stage; as mmdet's ``refine_bboxes`` + ``add_gt_as_proposals``, the refined
  boxes of the GT proposals are dropped after each stage and the exact GT boxes appended again
  (Detectron2's cascade keeps the refined GT boxes and adds none);
* test: the raw logits of the three stages are averaged, then sigmoid (Detectron2 averages
  softmax probabilities), boxes of the last stage, ``SCORE_THRESH_TEST`` (paper 0.40), NMS 0.5.

The official refinement relabels background RoIs with ``argmax`` of the first C−1 logits before
regressing (written for a background column RS heads do not have); with class-agnostic regression
this has no effect on the refined boxes and is not reproduced. Loss names:
``loss_roi_{rank,sort,bbox}_stage{k}``. With ``MASK_ON`` the mask head trains on the stage-0 RoIs
with the stage-0 weights (not part of the paper's RS-Cascade, which is box-only).
"""
from typing import List, Sequence

import torch
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.poolers import ROIPooler
from detectron2.modeling.roi_heads.box_head import build_box_head
from detectron2.modeling.roi_heads.cascade_rcnn import CascadeROIHeads
from detectron2.modeling.roi_heads.fast_rcnn import fast_rcnn_inference
from detectron2.modeling.roi_heads.roi_heads import ROI_HEADS_REGISTRY
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import get_event_storage

from ..matchers import MaxIoUMatcher
from .rs_fast_rcnn import RSFastRCNNOutputLayers
from .rs_roi_heads import RSROIHeadsMixin

__all__ = ["RSCascadeROIHeads"]


@ROI_HEADS_REGISTRY.register()
class RSCascadeROIHeads(RSROIHeadsMixin, CascadeROIHeads):
    """Cascade ROI heads with RS Loss in every stage (see the module docstring)."""

    @configurable
    def __init__(
        self,
        *,
        stage_loss_weights: Sequence[float] = (1.0, 1.0, 1.0),
        mask_max_positives: int = 200,
        **kwargs,
    ):
        """
        Args:
            stage_loss_weights: multiplier of each stage's three losses (RS: all 1). A weight on
                ``loss_roi_sort`` has no effect on the gradient (RS Loss paper, Alg. 1).
            mask_max_positives: as :class:`RSStandardROIHeads`.
            kwargs: arguments of :class:`CascadeROIHeads` (box predictors must be
                :class:`RSFastRCNNOutputLayers`).
        """
        super().__init__(**kwargs)
        assert len(stage_loss_weights) == self.num_cascade_stages, stage_loss_weights
        self.stage_loss_weights = [float(w) for w in stage_loss_weights]
        self.mask_max_positives = mask_max_positives

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        ret["stage_loss_weights"] = cfg.MODEL.RS_ROI_HEADS.CASCADE_STAGE_LOSS_WEIGHTS
        ret["mask_max_positives"] = cfg.MODEL.RS_ROI_HEADS.MASK_MAX_POSITIVES
        return ret

    @classmethod
    def _init_box_head(cls, cfg, input_shape):
        in_features = cfg.MODEL.ROI_HEADS.IN_FEATURES
        resolution = cfg.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION
        reg_weights = cfg.MODEL.ROI_BOX_CASCADE_HEAD.BBOX_REG_WEIGHTS
        ious = cfg.MODEL.ROI_BOX_CASCADE_HEAD.IOUS
        assert len(reg_weights) == len(ious)
        assert cfg.MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG, \
            "RSCascadeROIHeads uses class-agnostic regression (official RS-Cascade)"
        channels = {input_shape[f].channels for f in in_features}
        assert len(channels) == 1, channels
        box_pooler = ROIPooler(
            output_size=resolution,
            scales=tuple(1.0 / input_shape[k].stride for k in in_features),
            sampling_ratio=cfg.MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO,
            pooler_type=cfg.MODEL.ROI_BOX_HEAD.POOLER_TYPE,
        )
        pooled = ShapeSpec(channels=channels.pop(), width=resolution, height=resolution)
        box_heads, box_predictors, matchers = [], [], []
        for iou, weights in zip(ious, reg_weights):
            head = build_box_head(cfg, pooled)
            box_heads.append(head)
            box_predictors.append(
                RSFastRCNNOutputLayers(
                    cfg, head.output_shape, box2box_transform=Box2BoxTransform(weights=weights)
                )
            )
            matchers.append(MaxIoUMatcher([iou], [0, 1], allow_low_quality_matches=False))
        return {
            "box_in_features": in_features,
            "box_pooler": box_pooler,
            "box_heads": box_heads,
            "box_predictors": box_predictors,
            "proposal_matchers": matchers,
        }

    def forward(self, images, features, proposals, targets=None):
        """See :meth:`CascadeROIHeads.forward`."""
        del images
        if not self.training:
            pred_instances = self._forward_box(features, proposals)
            return self.forward_with_given_boxes(features, pred_instances), {}
        proposals = self.label_and_sample_proposals(proposals, targets)
        losses = self._forward_box(features, proposals, targets)
        ref = self._cls_loss_value(losses, "_stage0") / (self.stage_loss_weights[0] or 1.0)
        losses.update(self._forward_mask(features, proposals, ref))
        losses.update(self._forward_keypoint(features, proposals))
        return proposals, losses

    def _forward_box(self, features, proposals, targets=None):
        """Run the stages; training: RS losses of each stage; inference: detections.

        Args:
            features: FPN features.  proposals: per-image RoIs (training: labelled, GT boxes
                appended at the end of each image).  targets: GT Instances (training).
        """
        feats = [features[f] for f in self.box_in_features]
        head_outputs = []  # (predictor, predictions, proposals)
        image_sizes = [x.image_size for x in proposals]
        num_gts = [len(t) if self.proposal_append_gt else 0 for t in targets] if self.training \
            else None
        prev_boxes = None
        for k in range(self.num_cascade_stages):
            if k > 0:
                if self.training:
                    proposals = self._refined_proposals_with_gt(prev_boxes, num_gts, targets)
                    proposals = self._match_and_label_boxes(proposals, k, targets)
                else:
                    proposals = self._create_proposals_from_boxes(prev_boxes, image_sizes)
            predictions = self._run_stage(feats, proposals, k)
            prev_boxes = self.box_predictor[k].predict_boxes(predictions, proposals)
            head_outputs.append((self.box_predictor[k], predictions, proposals))

        if self.training:
            losses = {}
            storage = get_event_storage()
            for stage, (predictor, predictions, props) in enumerate(head_outputs):
                with storage.name_scope(f"stage{stage}"):
                    stage_losses, out = predictor.rs_losses(predictions, props)
                if stage == 0:
                    self._attach_score_weights(props, out)
                w = self.stage_loss_weights[stage]
                losses.update({f"{n}_stage{stage}": v * w for n, v in stage_losses.items()})
            return losses

        # test: mean of the raw logits of all stages, then sigmoid (official)
        logits = torch.stack([h[1][0] for h in head_outputs]).mean(dim=0)
        predictor, predictions, props = head_outputs[-1]
        scores = predictor.predict_probs((logits, None), props)
        boxes = predictor.predict_boxes(predictions, props)
        pred_instances, _ = fast_rcnn_inference(
            boxes,
            scores,
            image_sizes,
            predictor.test_score_thresh,
            predictor.test_nms_thresh,
            predictor.test_topk_per_image,
        )
        return pred_instances

    def _refined_proposals_with_gt(
        self, boxes: List[torch.Tensor], num_gts: List[int], targets: List[Instances]
    ) -> List[Instances]:
        """Next-stage training RoIs: refined boxes minus the refined GT proposals, + exact GTs.

        Args:
            boxes: per image (Ri, 4) refined boxes; the last ``num_gts[i]`` come from the GT
                boxes appended as proposals.
            num_gts: number of GT proposals at the end of each image's RoIs.
            targets: GT Instances.
        """
        proposals = []
        for b, n_gt, t in zip(boxes, num_gts, targets):
            b = Boxes(b.detach()[: b.shape[0] - n_gt])
            b.clip(t.image_size)
            b = b[b.nonempty()]
            if n_gt > 0:
                b = Boxes.cat([b, t.gt_boxes.to(b.device)])
            prop = Instances(t.image_size)
            prop.proposal_boxes = b
            proposals.append(prop)
        return proposals

    def _run_stage(self, features, proposals, stage):
        """One stage: pool, trunk, predictor (no 1/num_stages gradient scaling, as mmdet)."""
        box_features = self.box_pooler(features, [x.proposal_boxes for x in proposals])
        box_features = self.box_head[stage](box_features)
        return self.box_predictor[stage](box_features)
