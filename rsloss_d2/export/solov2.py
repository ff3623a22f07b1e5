"""Traceable inference of SOLO / Decoupled SOLO / SOLOv2 / RS-SOLOv2 for export: one (3, H, W)
image → boxes (N, 4), scores (N,), classes (N,) int64, masks (N, H, W) bool, in the input
image's frame.

The steps of the eager ``SOLOv2`` inference (SOLO, Wang et al., ECCV 2020, Sec. 3: the S² mask
channels per level and Decoupled SOLO's σ(X_j)·σ(Y_i); SOLOv2, Wang et al., NeurIPS 2020,
Sec. 4: point NMS, maskness, Matrix NMS; ``get_seg`` of ``mmdet/models/anchor_heads/solo_head.py``,
``decoupled_solo_head.py`` and ``solov2_head.py`` of the official SOLO repository
WXinlong/SOLO): the same functions where they trace (``point_nms``, ``matrix_nms``,
``masks_to_boxes``), with what a trace would freeze written without Python branches on data:

* the candidate masks are computed at once instead of chunks of ``NMS_PRE`` (the chunks only
  bound memory; every mask and score is the same);
* SOLO / Decoupled SOLO: one pass per level (a fixed number, unrolled by the trace) takes the
  level's candidate cells with ``nonzero`` and builds only their masks, in the eager arithmetic;
  a level without candidates passes empty tensors on (the eager loop skips it, which a trace
  would freeze at the sample's levels);
* Matrix NMS gets one extra empty mask of its own class at the end (score 0), so that it never
  sees zero masks; its decay is dropped. It changes no other decay: ``D`` of the dummy with any
  mask is 0, and every column's minimum is already ≤ 1 through the first (highest-scored) row,
  whose compensation is 0;
* no early return on zero candidates: every step works on empty tensors.
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F

__all__ = ["solov2_outputs", "solo_candidates"]


def solov2_outputs(model, image: torch.Tensor):
    """``(model, image) -> (boxes, scores, classes, masks)`` of a built ``SOLOv2`` (eval), any
    instance head (dynamic, vanilla, decoupled)."""
    from rsloss_d2.modeling.solov2.inference import point_nms
    from rsloss_d2.modeling.solov2.instance_head import split_level_features
    from rsloss_d2.modeling.solov2.losses import flatten_cate_logits

    images = model.preprocess_image([{"image": image}])
    features = model.backbone(images.tensor)
    levels = split_level_features([features[f] for f in model.instance_in_features])
    cate_logits, ins_preds = model.ins_head(levels)

    cate = flatten_cate_logits([point_nms(x.sigmoid()) for x in cate_logits])[0]  # (ΣS², C)
    strides = torch.cat([
        torch.full((s * s,), st, device=cate.device, dtype=torch.float32)
        for s, st in zip(model.num_grids, model.instance_strides)])
    score_thr = model.test_cfg.score_thr
    if model.ins_head.head_type == "dynamic":
        mask_features = model.mask_branch([features[f] for f in model.mask_in_features])
        h_m, w_m = mask_features.shape[-2:]
        kernels = torch.cat([k[0].flatten(1) for k in ins_preds], dim=1).t()  # (ΣS², E)
        feats = mask_features[0].flatten(1)  # (E, H_m·W_m)
        cells, classes = (cate > score_thr).nonzero(as_tuple=True)
        soft = (kernels[cells] @ feats).view(-1, h_m, w_m).sigmoid()
    else:
        mask_size = (images.tensor.shape[-2] // 4, images.tensor.shape[-1] // 4)
        cells, classes, soft = solo_candidates(model.ins_head.head_type, ins_preds, cate,
                                               model.num_grids, mask_size, score_thr)
    return _candidates_to_outputs(cate, strides, cells, classes, soft, tuple(image.shape[-2:]),
                                  model.test_cfg)


def solo_candidates(
    head_type: str,
    ins_preds: Sequence,
    cate: torch.Tensor,
    num_grids: Sequence[int],
    mask_size: Tuple[int, int],
    score_thr: float,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The cells above ``score_thr`` of SOLO / Decoupled SOLO and their stride-4 masks, in the
    order of ``(cate > score_thr).nonzero()`` (cell, then class), as the eager
    ``SOLOv2._soft_masks_fn`` builds them.

    Args:
        head_type: "vanilla" or "decoupled".
        ins_preds: per level l — vanilla: (1, S_l², 2H_l, 2W_l) mask logits; decoupled: a pair
            (X, Y) of (1, S_l, 2H_l, 2W_l) logits.
        cate: (ΣS², C) category probabilities after point NMS (levels concatenated).
        num_grids: S_l per level.
        mask_size: (H_m, W_m), a quarter of the padded input.

    Returns:
        ``cells`` (n,) int64 flat cell indices, ``classes`` (n,) int64, ``soft`` (n, H_m, W_m)
        mask probabilities (vanilla: σ of the cell's channel upsampled; decoupled: σ(X_j) and
        σ(Y_i) upsampled separately, then multiplied, for cell i·S + j).
    """
    cells: List[torch.Tensor] = []
    classes: List[torch.Tensor] = []
    soft: List[torch.Tensor] = []
    start = 0
    # levels are consecutive row blocks of `cate`, so their candidates concatenated in level
    # order are the global nonzero() order of the eager code
    for level, s in enumerate(num_grids):
        c, k = (cate[start:start + s * s] > score_thr).nonzero(as_tuple=True)
        if head_type == "vanilla":
            probs = _upsample(ins_preds[level][0, c].sigmoid(), mask_size)
        else:
            x, y = ins_preds[level]
            probs = (_upsample(x[0, c % s].sigmoid(), mask_size)
                     * _upsample(y[0, c // s].sigmoid(), mask_size))
        cells.append(c + start)
        classes.append(k)
        soft.append(probs)
        start += s * s
    return torch.cat(cells), torch.cat(classes), torch.cat(soft)


def _upsample(maps: torch.Tensor, size) -> torch.Tensor:
    """(n, h, w) → (n, *size), bilinear (align_corners False), one channel per map as eager."""
    return F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]


def _candidates_to_outputs(cate, strides, cells, classes, soft, image_size, cfg):
    """Maskness, scores, top ``NMS_PRE``, Matrix NMS, top ``MAX_PER_IMG``, masks at the image
    size (the steps of ``solo_inference_single`` after the candidate masks).

    Args:
        cate: (ΣS², C) category probabilities; strides: (ΣS²,) numeric stride of each cell.
        cells, classes: (n,) int64 candidates; soft: (n, H_m, W_m) their stride-4 mask
            probabilities of the padded input.
        image_size: (h, w) of the input image. cfg: ``SOLOTestConfig``.

    Returns:
        boxes (N, 4), scores (N,), classes (N,) int64, masks (N, h, w) bool.
    """
    from rsloss_d2.layers import matrix_nms
    from rsloss_d2.modeling.solov2.inference import masks_to_boxes

    h, w = image_size
    h_m, w_m = soft.shape[-2:]
    probs = cate[cells, classes]
    binary = soft > cfg.mask_thr
    area = binary.sum(dim=(1, 2)).to(soft.dtype)
    maskness = (soft * binary).sum(dim=(1, 2)) / area.clamp(min=1)
    scores = torch.where(area > strides[cells], probs * maskness, torch.full_like(probs, -1))
    order = torch.argsort(scores, descending=True)[: cfg.nms_pre]
    order = order[scores[order] >= 0]
    soft, classes, scores = soft[order], classes[order], scores[order]

    dummy = soft.new_zeros((1,) + tuple(soft.shape[1:]))
    decayed = matrix_nms(torch.cat([soft, dummy]) > cfg.mask_thr,
                         torch.cat([classes, classes.new_full((1,), -1)]),
                         torch.cat([scores, scores.new_zeros(1)]),
                         kernel=cfg.nms_kernel, sigma=cfg.nms_sigma)[:-1]
    keep = (decayed >= cfg.update_thr).nonzero().squeeze(1)
    decayed = decayed[keep]
    order = torch.argsort(decayed, descending=True)[: cfg.max_per_img]
    soft, classes, decayed = soft[keep][order], classes[keep][order], decayed[order]

    m = F.interpolate(soft[:, None], size=(4 * h_m, 4 * w_m), mode="bilinear",
                      align_corners=False)[:, :, :h, :w]
    m = F.interpolate(m, size=(h, w), mode="bilinear", align_corners=False)
    masks = m[:, 0] > cfg.mask_thr
    return masks_to_boxes(masks), decayed, classes, masks
