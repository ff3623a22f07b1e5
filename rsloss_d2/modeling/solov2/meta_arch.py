"""SOLO / Decoupled SOLO / SOLOv2 / RS-SOLOv2 as one Detectron2 meta-architecture ``SOLOv2``.

SOLO: Wang et al. ECCV 2020; SOLOv2: Wang et al. NeurIPS 2020; RS-SOLOv2: Oksuz et al. ICCV 2021
(official heads: ``mmdet/models/anchor_heads/solo*_head.py`` of the SOLO repository). The model =
ResNet-FPN backbone + :class:`SOLOInstanceHead` (category and instance branches on S×S grids) +
(SOLOv2) :class:`SOLOv2MaskBranch`; targets, losses and inference are separate functions of this
folder. Keys: ``MODEL.SOLOV2.*`` (AdelaiDet's names where they exist; ``rsloss_d2/config.py``).
"""
from __future__ import annotations

from typing import Dict, List

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, Backbone, build_backbone
from detectron2.modeling.meta_arch.dense_detector import DenseDetector
from torch import nn

from ..events import put_scalars
from .inference import SOLOTestConfig, point_nms, solo_inference_single
from .instance_head import SOLOInstanceHead, split_level_features
from .losses import flatten_cate_logits, positive_mask_dice, rs_solo_losses, solo_focal_dice_losses
from .mask_branch import SOLOv2MaskBranch
from .targets import build_solo_targets

__all__ = ["LOSSES", "SOLOv2"]

LOSSES = ("focal_dice", "rank_sort")


@META_ARCH_REGISTRY.register()
class SOLOv2(DenseDetector):
    """Box-free instance segmentation by locations (SOLO / SOLOv2), optionally with RS Loss.

    Detectron2's ``DenseDetector`` gives the pixel mean / std buffers, ``device`` and
    ``preprocess_image`` (normalise, pad to the backbone's size divisibility and padding
    constraints). Its single ``head`` and ``forward`` do not fit (SOLO's instance head reads
    resized levels and SOLOv2 adds a mask-feature branch on other levels): ``head`` is unused and
    ``forward`` is SOLO's own; the instance head stays ``ins_head`` (checkpoint keys).

    Training returns ``{"loss_ins", "loss_cate"}`` (focal + dice) or ``{"loss_rank",
    "loss_sort", "loss_ins"}`` (RS-SOLOv2); inference returns, per image, Instances with
    ``pred_masks`` (bool, original image size), ``scores``, ``pred_classes`` and ``pred_boxes``
    (tight boxes of the masks), the format of Detectron2's evaluators and Visualizer.
    """

    @configurable
    def __init__(
        self,
        *,
        backbone: Backbone,
        ins_head: SOLOInstanceHead,
        mask_branch: nn.Module,
        instance_in_features: List[str],
        mask_in_features: List[str],
        instance_strides: List[int],
        scale_ranges: List[List[float]],
        sigma: float,
        cell_assignment: str,
        loss: str,
        focal_alpha: float,
        focal_gamma: float,
        focal_weight: float,
        dice_weight: float,
        rs_delta: float,
        test_cfg: SOLOTestConfig,
        pixel_mean: List[float],
        pixel_std: List[float],
    ):
        super().__init__(backbone, None, list(instance_in_features), pixel_mean=pixel_mean,
                         pixel_std=pixel_std)
        if loss not in LOSSES:
            raise ValueError(f"MODEL.SOLOV2.LOSS must be one of {LOSSES}, got {loss!r}")
        if loss == "rank_sort" and cell_assignment == "all":
            raise ValueError("RS-SOLOv2 needs one positive per cell: CELL_ASSIGNMENT 'first'")
        if (ins_head.head_type == "dynamic") != (mask_branch is not None):
            raise ValueError("the mask-feature branch is used exactly by the dynamic head")
        self.ins_head = ins_head
        self.mask_branch = mask_branch
        self.mask_in_features = list(mask_in_features)
        self.instance_strides = list(instance_strides)
        self.scale_ranges = [tuple(r) for r in scale_ranges]
        self.sigma = sigma
        self.cell_assignment = cell_assignment
        self.loss = loss
        self.focal_alpha, self.focal_gamma = focal_alpha, focal_gamma
        self.focal_weight, self.dice_weight = focal_weight, dice_weight
        self.rs_delta = rs_delta
        self.test_cfg = test_cfg
        self.num_grids = list(ins_head.num_grids)
        self.num_classes = ins_head.num_classes
        # stride-4 pixels of SOLO's per-level mask predictions: half the level stride
        self.mask_strides = [4] * len(self.num_grids) if mask_branch is not None else [
            s // 2 for s in self.instance_strides]

    @classmethod
    def from_config(cls, cfg):
        s = cfg.MODEL.SOLOV2
        backbone = build_backbone(cfg)
        head = SOLOInstanceHead(cfg)
        return {
            "backbone": backbone,
            "ins_head": head,
            "mask_branch": SOLOv2MaskBranch(cfg) if head.head_type == "dynamic" else None,
            "instance_in_features": s.INSTANCE_IN_FEATURES,
            "mask_in_features": s.MASK_IN_FEATURES,
            "instance_strides": s.FPN_INSTANCE_STRIDES,
            "scale_ranges": s.FPN_SCALE_RANGES,
            "sigma": s.SIGMA,
            "cell_assignment": s.CELL_ASSIGNMENT,
            "loss": s.LOSS,
            "focal_alpha": s.FOCAL_ALPHA,
            "focal_gamma": s.FOCAL_GAMMA,
            "focal_weight": s.FOCAL_WEIGHT,
            "dice_weight": s.DICE_WEIGHT,
            "rs_delta": cfg.MODEL.RANK_LOSS.RS_DELTA,
            "test_cfg": SOLOTestConfig(
                score_thr=s.SCORE_THR, mask_thr=s.MASK_THR, nms_pre=s.NMS_PRE,
                update_thr=s.UPDATE_THR, max_per_img=s.MAX_PER_IMG, nms_kernel=s.NMS_KERNEL,
                nms_sigma=s.NMS_SIGMA),
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
        }

    @property
    def instance_in_features(self) -> List[str]:
        """The FPN maps of the instance head (``DenseDetector.head_in_features``)."""
        return self.head_in_features

    def forward(self, batched_inputs: List[Dict]):
        images = self.preprocess_image(batched_inputs)
        features = self.backbone(images.tensor)
        levels = split_level_features([features[f] for f in self.instance_in_features])
        cate_logits, ins_preds = self.ins_head(levels)
        mask_features = None
        if self.mask_branch is not None:
            mask_features = self.mask_branch([features[f] for f in self.mask_in_features])
        if self.training:
            gt = [x["instances"].to(self.device) for x in batched_inputs]
            return self.losses(cate_logits, ins_preds, mask_features, gt,
                               tuple(images.tensor.shape[-2:]))
        return self.inference(cate_logits, ins_preds, mask_features, images, batched_inputs)

    def losses(self, cate_logits, ins_preds, mask_features, gt_instances, padded_size):
        """Targets → focal + dice (SOLO Eq. 1–3) or RS + balanced dice (RS-SOLOv2); logs the
        statistics the loss functions return."""
        targets = build_solo_targets(gt_instances, padded_size, self.num_grids,
                                     self.scale_ranges, self.sigma, self.num_classes,
                                     self.cell_assignment)
        dice = positive_mask_dice(self.ins_head.head_type, ins_preds, mask_features, targets,
                                  self.num_grids, self.mask_strides)
        flat = flatten_cate_logits(cate_logits)
        if self.loss == "rank_sort":
            losses, stats = rs_solo_losses(flat, targets, dice, delta=self.rs_delta)
        else:
            losses, stats = solo_focal_dice_losses(flat, targets, dice, self.focal_alpha,
                                                   self.focal_gamma, self.focal_weight,
                                                   self.dice_weight)
        put_scalars("solov2/", stats)
        return losses

    def _soft_masks_fn(self, ins_preds, mask_features, image: int, mask_size):
        """cells (n,) → (n, H_m, W_m) stride-4 mask probabilities of one image."""
        head_type = self.ins_head.head_type
        if head_type == "dynamic":
            kernels = torch.cat([k[image].flatten(1) for k in ins_preds], dim=1).t()  # (ΣS², E)
            feats = mask_features[image].flatten(1)  # (E, H_m·W_m)

            def fn(cells):  # the dynamic 1×1 conv of the selected cells' kernels
                return (kernels[cells] @ feats).view(-1, *mask_size).sigmoid()
            return fn

        sizes = [s * s for s in self.num_grids]
        offsets = torch.tensor([0] + sizes, device=self.device).cumsum(0)

        def fn(cells):
            out = torch.zeros((cells.numel(),) + tuple(mask_size), device=self.device)
            for level, s in enumerate(self.num_grids):
                sel = ((cells >= offsets[level]) & (cells < offsets[level + 1])).nonzero()[:, 0]
                if sel.numel() == 0:
                    continue
                c = cells[sel] - offsets[level]
                if head_type == "vanilla":
                    probs = ins_preds[level][image, c].sigmoid()[:, None]
                    probs = F.interpolate(probs, size=mask_size, mode="bilinear",
                                          align_corners=False)[:, 0]
                else:  # X and Y maps upsampled separately, then multiplied (Decoupled SOLO)
                    x, y = ins_preds[level]
                    px = F.interpolate(x[image, c % s].sigmoid()[:, None], size=mask_size,
                                       mode="bilinear", align_corners=False)[:, 0]
                    py = F.interpolate(y[image, c // s].sigmoid()[:, None], size=mask_size,
                                       mode="bilinear", align_corners=False)[:, 0]
                    probs = px * py
                out[sel] = probs
            return out
        return fn

    @torch.no_grad()
    def inference(self, cate_logits, ins_preds, mask_features, images, batched_inputs):
        """Point NMS, candidates, maskness, Matrix NMS, masks at the original size (official ``get_seg``)."""
        probs = flatten_cate_logits([point_nms(x.sigmoid()) for x in cate_logits])
        strides = torch.cat([
            torch.full((s * s,), st, device=self.device, dtype=torch.float32)
            for s, st in zip(self.num_grids, self.instance_strides)])
        mask_size = (images.tensor.shape[-2] // 4, images.tensor.shape[-1] // 4)
        results = []
        for i, (inp, image_size) in enumerate(zip(batched_inputs, images.image_sizes)):
            out_size = (inp.get("height", image_size[0]), inp.get("width", image_size[1]))
            fn = self._soft_masks_fn(ins_preds, mask_features, i, mask_size)
            results.append({"instances": solo_inference_single(
                probs[i], strides, fn, image_size, out_size, self.test_cfg)})
        return results
