"""Traceable inference of SOLOv2 / RS-SOLOv2 for export: one (3, H, W) image → boxes (N, 4),
scores (N,), classes (N,) int64, masks (N, H, W) bool, in the input image's frame.

The steps of the eager ``SOLOv2`` inference (Wang et al., NeurIPS 2020, Sec. 4: point NMS,
maskness, Matrix NMS; ``mmdet/models/dense_heads/solov2_head.py`` of the official SOLO
repository): the same functions where they trace (``point_nms``, ``matrix_nms``,
``masks_to_boxes``), with what a trace would freeze written without Python branches on data:

* the candidate masks are computed in one product instead of chunks of ``NMS_PRE`` (the chunks
  only bound memory; every mask and score is the same);
* Matrix NMS gets one extra empty mask of its own class at the end (score 0), so that it never
  sees zero masks; its decay is dropped. It changes no other decay: ``D`` of the dummy with any
  mask is 0, and every column's minimum is already ≤ 1 through the first (highest-scored) row,
  whose compensation is 0;
* no early return on zero candidates: every step works on empty tensors.

Only the dynamic-kernel head (SOLOv2, RS-SOLOv2) is exported; SOLO's vanilla / decoupled heads
pick per-level masks with a Python loop over levels that skips empty ones.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["solov2_outputs"]


def solov2_outputs(model, image: torch.Tensor):
    """``(model, image) -> (boxes, scores, classes, masks)`` of a built ``SOLOv2`` (eval)."""
    from rsloss_d2.layers import matrix_nms
    from rsloss_d2.modeling.solov2.inference import masks_to_boxes, point_nms
    from rsloss_d2.modeling.solov2.instance_head import split_level_features
    from rsloss_d2.modeling.solov2.losses import flatten_cate_logits

    if model.ins_head.head_type != "dynamic":
        raise ValueError(f"SOLO's {model.ins_head.head_type!r} head is not exportable")
    cfg = model.test_cfg
    h, w = image.shape[-2:]
    images = model.preprocess_image([{"image": image}])
    features = model.backbone(images.tensor)
    levels = split_level_features([features[f] for f in model.instance_in_features])
    cate_logits, kernel_preds = model.ins_head(levels)
    mask_features = model.mask_branch([features[f] for f in model.mask_in_features])

    cate = flatten_cate_logits([point_nms(x.sigmoid()) for x in cate_logits])[0]  # (ΣS², C)
    strides = torch.cat([
        torch.full((s * s,), st, device=cate.device, dtype=torch.float32)
        for s, st in zip(model.num_grids, model.instance_strides)])
    h_m, w_m = mask_features.shape[-2:]
    kernels = torch.cat([k[0].flatten(1) for k in kernel_preds], dim=1).t()  # (ΣS², E)
    feats = mask_features[0].flatten(1)  # (E, H_m·W_m)

    cells, classes = (cate > cfg.score_thr).nonzero(as_tuple=True)
    probs = cate[cells, classes]
    soft = (kernels[cells] @ feats).view(-1, h_m, w_m).sigmoid()
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
