"""``RankingRetinaNet``: one-stage detectors trained with ranking losses (aLRP / AP / RS Loss).

One meta-architecture for the official dense models (AP Loss: Chen et al., CVPR 2019; aLRP Loss:
Oksuz et al., NeurIPS 2020; RS-ATSS / RS-PAA: Oksuz et al., ICCV 2021, Sec. 5; the dense heads
in ``mmdet/models/dense_heads/`` of the official aLRP Loss and RankSortLoss repositories), chosen
by two config keys instead of copies of a head:

| model | ``MODEL.RANKING_RETINANET.LOSS`` | ``.ASSIGNER`` | head |
|---|---|---|---|
| AP-Loss RetinaNet | ``ap`` | ``max_iou`` (0.5 / 0.4) | RetinaNet |
| aLRP-Loss RetinaNet | ``alrp`` | ``max_iou`` (0.5 / 0.4) | RetinaNet |
| aLRP-Loss "GIoU+ATSS" | ``alrp`` | ``atss`` | RetinaNet |
| RS-ATSS | ``rank_sort`` | ``atss`` | GN tower + level scales, no centerness |
| RS-PAA | ``rank_sort`` | ``paa`` (+ score voting) | GN tower + level scales, no IoU branch |
| ATSS | ``focal_centerness`` | ``atss`` | GN tower + level scales + centerness |
| PAA | ``focal_iou_pred`` | ``paa`` (+ score voting) | GN tower + level scales + IoU branch |

ATSS (Zhang et al., CVPR 2020) and PAA (Kim & Lee, ECCV 2020) are the standard heads RS-ATSS /
RS-PAA are compared with (mmdet's ``atss_head.py`` / ``paa_head.py``; ``baseline_losses.py``):
focal loss, GIoU and a quality branch whose sigmoid enters the test score (ATSS s·q, PAA
sqrt(s·v)). ATSS's normalisers (number of positives, Σ centerness) are all-reduced means over
the processes, as officially (an exception to the per-process rule below); PAA's are per process.

Everything else is Detectron2's ``RetinaNet`` / ``DenseDetector``: backbone + FPN P3–P7, anchor
generator (``MODEL.ANCHOR_GENERATOR``, offset 0 = mmdet 2.x centres), ``Box2BoxTransform``
(``MODEL.RETINANET.BBOX_REG_WEIGHTS`` (10, 10, 5, 5) = mmdet stds [0.1, 0.1, 0.2, 0.2]), image
batching and ``Instances`` output. Target assignment (MaxIoU, ATSS, PAA and the valid flags of
``rsloss_d2.modeling.matchers``), the head (``head.py``), the losses (``losses.py``) and
inference are separate functions.

Several processes: the ranking and every normaliser (number of positives, RS λ, AP Loss's 4·P)
are per process, as in the official heads (README "Several GPUs"). The aLRP self-balance weight
and its accumulated sums are **all-reduced** (identical on every process; the official code keeps
them per GPU): with world size > 1 every process updates it at every iteration, an iteration
without positives on a process adding nothing to the sums, and the weight is
``(mean L_loc + mean L_cls) / mean L_loc`` over all (process, iteration) pairs with positives of
the period. One process: the official rule (iterations without positives do not count). Logged
statistics are cross-process means (``modeling/events.put_scalars``).
"""
import logging
import math
from typing import List, Optional, Sequence, Tuple

import torch
from detectron2.config import configurable
from detectron2.data import get_detection_dataset_dicts
from detectron2.layers import batched_nms, cat
from detectron2.modeling.meta_arch.build import META_ARCH_REGISTRY
from detectron2.modeling.meta_arch.retinanet import RetinaNet
from detectron2.structures import Boxes, Instances
from detectron2.utils import comm
from fvcore.nn import sigmoid_focal_loss
from torch.nn import functional as F

from rsloss_d2.losses import ALRPSelfBalance

from ..box_losses import giou_loss
from ..matchers import (
    IGNORED,
    NEGATIVE,
    atss_assign,
    max_iou_assign,
    paa_reassign,
    padded_gt_boxes,
    score_voting,
    valid_anchor_mask,
    valid_grid_sizes,
)
from .head import RankingRetinaNetHead
from .baseline_losses import (
    QUALITY_BRANCH_LOSSES,
    focal_centerness_losses,
    focal_iou_pred_losses,
    quality_test_scores,
)
from .losses import alrp_dense_losses, ap_dense_losses, rs_dense_losses
from ..events import put_scalars

__all__ = ["LOSSES", "RankingRetinaNet", "self_balance_period"]

logger = logging.getLogger(__name__)

LOSSES = ("alrp", "ap", "rank_sort") + QUALITY_BRANCH_LOSSES
_ASSIGNERS = ("max_iou", "atss", "paa")


def self_balance_period(dataset_names: Sequence[str], ims_per_batch: int,
                        filter_empty: bool = True) -> int:
    """Iterations per epoch = ⌈#training images / total batch⌉ (the aLRP SB period).

    The images are counted as Detectron2's train loader sees them (after
    ``DATALOADER.FILTER_EMPTY_ANNOTATIONS``). COCO train2017 at batch 32 gives the official 3665.
    """
    num = len(get_detection_dataset_dicts(list(dataset_names), filter_empty=filter_empty))
    return max(1, math.ceil(num / ims_per_batch))


def _all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """In-place sum over the processes (identity in one): the aLRP self-balance ``reduce_fn``."""
    if comm.get_world_size() > 1:
        torch.distributed.all_reduce(x)
    return x


def _all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean over the processes of a 0-dim tensor (mmdet's ``reduce_mean``; identity in one)."""
    if comm.get_world_size() > 1:
        x = x.clone()
        torch.distributed.all_reduce(x)
        x = x / comm.get_world_size()
    return x


def _topk_size(n, k: int):
    """min(n, k) that stays tied to ``n`` under tracing (``DenseDetector``'s idiom)."""
    return torch.clamp(n, max=k) if isinstance(n, torch.Tensor) else min(n, k)


def _gt_tables(gt_instances):
    """(N, G_max, 4) GT boxes and (N, G_max) int64 classes, zero-padded."""
    boxes, real = padded_gt_boxes([x.gt_boxes.tensor for x in gt_instances])
    classes = torch.zeros(real.shape, dtype=torch.long, device=real.device)
    for i, x in enumerate(gt_instances):  # slice copies: no host sync (a boolean mask would)
        classes[i, : len(x.gt_classes)] = x.gt_classes.to(real.device)
    return boxes, classes


@META_ARCH_REGISTRY.register()
class RankingRetinaNet(RetinaNet):
    """RetinaNet-style dense detector with aLRP / AP / RS Loss and MaxIoU / ATSS / PAA assignment.

    Training losses: aLRP ``loss_cls``, ``loss_bbox`` (= w_SB·L_loc); AP ``loss_cls``,
    ``loss_bbox`` (SmoothL1); RS ``loss_rank``, ``loss_sort``, ``loss_bbox`` (λ·L_GIoU); ATSS
    ``loss_cls``, ``loss_centerness``, ``loss_bbox``; PAA ``loss_cls``, ``loss_iou``,
    ``loss_bbox``. EventStorage (prefix ``dense/``): ``num_pos``, ``num_neg`` (per image), and
    ``loss_loc_unweighted``, ``self_balance_weight``, ``self_balance_period``,
    ``mean_pos_giou_loss`` (aLRP), ``lambda_bbox``, ``loss_bbox_unbalanced``, ``mean_pos_iou``
    (RS, :func:`~rsloss_d2.modeling.box_losses.rs_scalars`; ATSS, PAA),
    ``mean_pos_centerness`` (ATSS), ``paa_num_candidates`` (PAA assignment); with
    several processes each is the mean over the processes (module docstring: what is per process
    and what is all-reduced).
    """

    @configurable
    def __init__(
        self,
        *,
        loss: str = "alrp",
        assigner: str = "max_iou",
        iou_thresholds: Tuple[float, float] = (0.4, 0.5),
        atss_topk: int = 9,
        paa_iou_thresh: float = 0.1,
        paa_topk: int = 9,
        paa_reg_covar: float = 1e-5,
        paa_cost_giou_weight: float = 1.0,
        score_voting: bool = False,
        score_voting_sigma: float = 0.025,
        alrp_delta: float = 1.0,
        ap_delta: float = 1.0,
        rs_delta: float = 0.5,
        self_balance_init: float = 50.0,
        self_balance_period: int = 0,
        train_datasets: Sequence[str] = (),
        ims_per_batch: int = 16,
        filter_empty: bool = True,
        **kwargs,
    ):
        """
        Args:
            loss: "alrp", "ap" or "rank_sort".
            assigner: "max_iou", "atss" or "paa".
            iou_thresholds: (neg, pos) of the MaxIoU assigner (Detectron2's
                ``MODEL.RETINANET.IOU_THRESHOLDS``, official 0.4 / 0.5).
            atss_topk: ATSS candidates per level. paa_*: PAA initial MaxIoU threshold, top-k per
                level, GMM covariance regulariser, GIoU weight of the cost (PAA paper §3.1).
            score_voting, score_voting_sigma: PAA score voting at test time.
            alrp_delta, ap_delta, rs_delta: δ of aLRP, AP and RS Loss.
            self_balance_init: initial aLRP SB weight (50).
            self_balance_period: SB period in iterations; 0 derives one epoch from
                ``train_datasets`` / ``ims_per_batch`` / ``filter_empty`` at the first training
                step (so building the model for inference never loads the training set).
            kwargs: arguments of Detectron2's :class:`RetinaNet`.
        """
        super().__init__(**kwargs)
        if loss not in LOSSES:
            raise ValueError(f"MODEL.RANKING_RETINANET.LOSS must be one of {LOSSES}, "
                             f"got {loss!r}")
        if assigner not in _ASSIGNERS:
            raise ValueError(f"MODEL.RANKING_RETINANET.ASSIGNER must be one of {_ASSIGNERS}, "
                             f"got {assigner!r}")
        self.loss = loss
        self.assigner = assigner
        self.neg_iou_thr, self.pos_iou_thr = float(iou_thresholds[0]), float(iou_thresholds[-1])
        self.atss_topk = atss_topk
        self.paa_iou_thresh = paa_iou_thresh
        self.paa_topk = paa_topk
        self.paa_reg_covar = paa_reg_covar
        self.paa_cost_giou_weight = paa_cost_giou_weight
        self.score_voting = score_voting
        self.score_voting_sigma = score_voting_sigma
        self.alrp_delta, self.ap_delta, self.rs_delta = alrp_delta, ap_delta, rs_delta
        self._period_source = (tuple(train_datasets), int(ims_per_batch), bool(filter_empty))
        self.self_balance: Optional[ALRPSelfBalance] = None
        if loss == "alrp":
            self.self_balance = ALRPSelfBalance(max(int(self_balance_period), 1),
                                                init_weight=self_balance_init,
                                                reduce_fn=_all_reduce_sum)
        self._period_known = int(self_balance_period) > 0

    @classmethod
    def from_config(cls, cfg):
        ret = super().from_config(cfg)
        backbone_shape = ret["backbone"].output_shape()
        feature_shapes = [backbone_shape[f] for f in cfg.MODEL.RETINANET.IN_FEATURES]
        ret["head"] = RankingRetinaNetHead(cfg, feature_shapes)
        c = cfg.MODEL.RANKING_RETINANET
        ret.update(
            anchor_matcher=None,  # replaced by the batched mmdet rules (modeling/matchers)
            loss=c.LOSS,
            assigner=c.ASSIGNER,
            iou_thresholds=tuple(cfg.MODEL.RETINANET.IOU_THRESHOLDS),
            atss_topk=c.ATSS_TOPK,
            paa_iou_thresh=c.PAA_IOU_THRESH,
            paa_topk=c.PAA_TOPK,
            paa_reg_covar=c.PAA_REG_COVAR,
            paa_cost_giou_weight=c.PAA_COST_GIOU_WEIGHT,
            score_voting=c.SCORE_VOTING,
            score_voting_sigma=c.SCORE_VOTING_SIGMA,
            alrp_delta=cfg.MODEL.RANK_LOSS.ALRP_DELTA,
            ap_delta=cfg.MODEL.RANK_LOSS.AP_DELTA,
            rs_delta=cfg.MODEL.RANK_LOSS.RS_DELTA,
            self_balance_init=c.SELF_BALANCE_INIT,
            self_balance_period=c.SELF_BALANCE_PERIOD,
            train_datasets=tuple(cfg.DATASETS.TRAIN),
            ims_per_batch=cfg.SOLVER.IMS_PER_BATCH,
            filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS,
        )
        return ret

    # ------------------------------------------------------------------ training
    def forward_training(self, images, features, predictions, gt_instances):
        # (logits, deltas) or, with the quality branch, (logits, deltas, quality)
        pred_logits, pred_deltas, *pred_quality = self._transpose_dense_predictions(
            predictions, [self.num_classes, 4, 1][: len(predictions)])
        anchors = self.anchor_generator(features)
        grid_sizes = [tuple(f.shape[-2:]) for f in features]
        valid = valid_anchor_mask([a.tensor for a in anchors], self.anchor_generator.strides,
                                  images.image_sizes, self.backbone.size_divisibility,
                                  self.anchor_generator.offset)
        # The same validity on the host (the ATSS assigner needs no read of ``valid``).
        valid_sizes = valid_grid_sizes(grid_sizes, self.anchor_generator.strides,
                                       images.image_sizes, self.backbone.size_divisibility)
        logits = cat(pred_logits, dim=1)  # (N, R, C)
        deltas = cat(pred_deltas, dim=1)  # (N, R, 4)
        gt_boxes, gt_classes = _gt_tables(gt_instances)
        assigned, stats = self.assign(anchors, valid, gt_instances, logits, deltas,
                                      grid=(grid_sizes, valid_sizes))
        quality = cat(pred_quality[0], dim=1) if pred_quality else None  # (N, R, 1)
        return self.losses(anchors, logits, deltas, assigned, gt_boxes, gt_classes, stats,
                           quality=quality)

    @torch.no_grad()
    def assign(self, anchors: List[Boxes], valid, gt_instances, logits, deltas, grid=None):
        """(N, R) int64 per-anchor GT index / ``NEGATIVE`` / ``IGNORED`` (modeling/matchers).

        ``grid``: optional host ``(grid_sizes, valid_grid_sizes(...))`` describing ``valid``; the
        ATSS assigner then needs no host read of ``valid``."""
        gt_boxes = [x.gt_boxes.tensor for x in gt_instances]
        stats = {}
        if self.assigner == "max_iou":
            assigned = max_iou_assign(Boxes.cat(anchors).tensor, gt_boxes, valid,
                                      self.pos_iou_thr, self.neg_iou_thr, 0.0, True)
        elif self.assigner == "atss":
            grid_sizes, valid_sizes = grid if grid is not None else (None, None)
            assigned = atss_assign([a.tensor for a in anchors], gt_boxes, valid, self.atss_topk,
                                   grid_sizes=grid_sizes, valid_sizes=valid_sizes)
        else:
            assigned = max_iou_assign(Boxes.cat(anchors).tensor, gt_boxes, valid,
                                      self.paa_iou_thresh, self.paa_iou_thresh, 0.0, True)
            stats["paa_num_candidates"] = (assigned >= 0).sum() / len(gt_instances)
            assigned = self.paa_reassign(anchors, assigned, gt_instances, logits, deltas)
        return assigned, stats

    @torch.no_grad()
    def paa_reassign(self, anchors: List[Boxes], assigned, gt_instances, logits, deltas):
        """PAA (Kim & Lee, ECCV 2020, §3.1): cost = Σ_c focal + w·GIoU loss of every initial
        positive, one batched GMM call over all GTs of the batch (``matchers.paa_reassign``);
        rejected → negative."""
        img, anc = (assigned >= 0).nonzero(as_tuple=True)  # data-dependent size: one host read
        if img.numel() == 0:
            return assigned
        boxes, classes = _gt_tables(gt_instances)
        local = assigned[img, anc]
        gt_box = boxes[img, local]
        gt_cls = classes[img, local]
        all_anchors = Boxes.cat(anchors).tensor
        pred = self.box2box_transform.apply_deltas(deltas[img, anc].float(), all_anchors[anc])
        pos_logits = logits[img, anc].float()
        onehot = F.one_hot(gt_cls, self.num_classes).to(pos_logits.dtype)
        cost = sigmoid_focal_loss(pos_logits, onehot, self.focal_loss_alpha,
                                  self.focal_loss_gamma, reduction="none").sum(dim=1)
        cost = cost + self.paa_cost_giou_weight * giou_loss(pred, gt_box)
        # GT indices unique over the batch: image offset + local index
        num_gt = boxes.shape[1]
        level_of = torch.cat([torch.full((len(a),), i, dtype=torch.long, device=anc.device)
                              for i, a in enumerate(anchors)])
        keep = paa_reassign(cost, img * num_gt + local, level_of[anc], len(gt_instances) * num_gt,
                            topk=self.paa_topk, reg_covar=self.paa_reg_covar)
        # no host sync: write every initial positive (kept: its GT, else NEGATIVE) instead of
        # indexing the rejected ones with a boolean mask
        return assigned.index_put((img, anc), torch.where(keep, local, NEGATIVE))

    def losses(self, anchors, logits, deltas, assigned, boxes, classes, stats=None,
               quality=None):
        """Labels from the assignment → the loss of ``self.loss`` (losses.py,
        baseline_losses.py).

        Args:
            anchors: L ``Boxes``. logits: (N, R, C). deltas: (N, R, 4).
            assigned: (N, R) from :meth:`assign`.
            boxes, classes: (N, G_max, 4) / (N, G_max) padded GT boxes and classes.
            quality: (N, R, 1) centerness / IoU-prediction logits (ATSS / PAA heads only).
        """
        n, r, num_classes = logits.shape
        flat = assigned.reshape(-1)
        pos_inds = (flat >= 0).nonzero().squeeze(1)  # data-dependent size: one host read
        img, anc = pos_inds // r, pos_inds % r
        labels = torch.where(flat == IGNORED, -1, num_classes)
        gt_box = boxes[img, flat[pos_inds]]
        labels[pos_inds] = classes[img, flat[pos_inds]]
        logits = logits.reshape(-1, num_classes)
        pos_deltas = deltas.reshape(-1, 4)[pos_inds]
        pos_anchors = Boxes.cat(anchors).tensor[anc]
        if self.loss == "ap":
            out = ap_dense_losses(logits, labels, pos_deltas,
                                  self.box2box_transform.get_deltas(pos_anchors, gt_box),
                                  delta=self.ap_delta, smooth_l1_beta=self.smooth_l1_beta)
        else:
            pred = self.box2box_transform.apply_deltas(pos_deltas, pos_anchors)
            if self.loss == "alrp":
                self._ensure_period()
                out = alrp_dense_losses(logits, labels, pred, gt_box, self.self_balance,
                                        delta=self.alrp_delta,
                                        lockstep=comm.get_world_size() > 1)
            elif self.loss == "rank_sort":
                out = rs_dense_losses(logits, labels, pred, gt_box, delta=self.rs_delta)
            else:
                out = self._baseline_losses(logits, labels, pred, gt_box, pos_anchors,
                                            quality.reshape(-1)[pos_inds], img, n)
        scalars = dict(stats or {})
        scalars.update(out.stats)
        scalars["num_pos"] = pos_inds.numel() / n
        scalars["num_neg"] = (flat == NEGATIVE).sum() / n
        put_scalars("dense/", scalars)
        return out.losses

    def _baseline_losses(self, logits, labels, pred, gt_box, pos_anchors, pos_quality, img, n):
        """The standard ATSS (``focal_centerness``) / PAA (``focal_iou_pred``) head's losses;
        ``img``: (P,) image of each positive, ``n``: images of the batch."""
        alpha, gamma = self.focal_loss_alpha, self.focal_loss_gamma
        if self.loss == "focal_iou_pred":  # PAA: reg_decoded_bbox, the GT boxes are the targets
            return focal_iou_pred_losses(logits, labels, pred, gt_box, pos_quality, n,
                                         alpha=alpha, gamma=gamma)
        # ATSS: encoded targets, decoded back onto the anchors for the GIoU and the centerness
        target = self.box2box_transform.apply_deltas(
            self.box2box_transform.get_deltas(pos_anchors, gt_box), pos_anchors)
        per_image = torch.zeros(n, dtype=torch.long, device=img.device).index_add_(
            0, img, torch.ones_like(img))
        return focal_centerness_losses(logits, labels, pred, target, pos_anchors, pos_quality,
                                       per_image, alpha=alpha, gamma=gamma,
                                       reduce_mean=_all_reduce_mean)

    def _ensure_period(self):
        """Derive the self-balance period (one epoch) at the first training step if not given."""
        if self._period_known:
            return
        names, batch, filter_empty = self._period_source
        if not names:
            raise ValueError("aLRP self-balance: set MODEL.RANKING_RETINANET.SELF_BALANCE_PERIOD "
                             "or DATASETS.TRAIN to derive it")
        self.self_balance.period = self_balance_period(names, batch, filter_empty)
        self._period_known = True
        logger.info(f"aLRP self-balance period: {self.self_balance.period} iterations "
                    f"(one epoch of {names} at {batch} images per iteration)")

    # ------------------------------------------------------------------ inference
    def forward_inference(self, images, features, predictions):
        """Detectron2's, but with a quality branch the scores passed to
        :meth:`inference_single_image` are the ATSS / PAA test scores
        (:func:`~.baseline_losses.quality_test_scores`: s·q / sqrt(s·v))."""
        if len(predictions) == 2:
            return super().forward_inference(images, features, predictions)
        pred_logits, pred_deltas, pred_quality = self._transpose_dense_predictions(
            predictions, [self.num_classes, 4, 1])
        anchors = self.anchor_generator(features)
        results = []
        for i, image_size in enumerate(images.image_sizes):
            scores = [quality_test_scores(x[i], q[i], self.loss)
                      for x, q in zip(pred_logits, pred_quality)]
            results.append(self.inference_single_image(
                anchors, scores, [x[i] for x in pred_deltas], image_size))
        return results

    def inference_single_image(self, anchors: List[Boxes], box_cls: List[torch.Tensor],
                               box_delta: List[torch.Tensor], image_size: Tuple[int, int]):
        """mmdet dense-head test (``get_bboxes`` of mmdet 2.x dense heads): per level the
        ``TOPK_CANDIDATES_TEST`` anchors of highest max class score, decode + clip, class-wise NMS
        on the (anchor, class) pairs above the score threshold, top ``DETECTIONS_PER_IMAGE``; then
        PAA score voting if on.

        Args:
            anchors: L ``Boxes`` (A_l, 4). box_cls: L sigmoid scores (A_l, C).
            box_delta: L deltas (A_l, 4). image_size: (h, w).
        """
        return self._detections_single_image(anchors, box_cls, box_delta, image_size)

    def _detections_single_image(self, anchors: List[Boxes], box_cls: List[torch.Tensor],
                                 box_delta: List[torch.Tensor], image_size: Tuple[int, int],
                                 traceable: bool = False) -> Instances:
        """:meth:`inference_single_image`; ``traceable=True`` (export) keeps a trace valid for
        any number of anchors and detections: the top-k size is ``min(A_l, k)`` tied to A_l, and
        score voting runs on zero detections too (a no-op there)."""
        cand_boxes, cand_scores = [], []
        for anchors_l, scores_l, deltas_l in zip(anchors, box_cls, box_delta):
            anchors_l = anchors_l.tensor
            k = self.test_topk_candidates
            if traceable:
                take, k = k > 0, _topk_size(scores_l.shape[0], k)
            else:
                take = 0 < k < scores_l.shape[0]
            if take:
                top = scores_l.max(dim=1).values.topk(k).indices
                scores_l, deltas_l, anchors_l = scores_l[top], deltas_l[top], anchors_l[top]
            cand_boxes.append(self.box2box_transform.apply_deltas(deltas_l, anchors_l))
            cand_scores.append(scores_l)
        boxes = Boxes(cat(cand_boxes))
        boxes.clip(image_size)
        scores = cat(cand_scores)
        idx, cls = (scores > self.test_score_thresh).nonzero(as_tuple=True)
        det_boxes, det_scores = boxes.tensor[idx], scores[idx, cls]
        keep = batched_nms(det_boxes, det_scores, cls, self.test_nms_thresh)
        keep = keep[: self.max_detections_per_image]
        det_boxes, det_scores, cls = det_boxes[keep], det_scores[keep], cls[keep]
        # no detection, no voting: the standard PAA head's score voting concatenates an empty
        # list there and raises (RS-PAA's head guards it, as here). A plain RetinaNet exported
        # through this method has no score voting.
        if getattr(self, "score_voting", False) and (traceable or len(keep) > 0):
            det_boxes = score_voting(det_boxes, cls, boxes.tensor, scores,
                                     score_thr=self.test_score_thresh,
                                     sigma=self.score_voting_sigma)
        return Instances(image_size, pred_boxes=Boxes(det_boxes), scores=det_scores,
                         pred_classes=cls)
