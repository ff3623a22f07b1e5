"""Shared pieces of the export tests: one briefly trained `shapes` model per family (trained once
per session), the trace sample and the five `shapes_val` test images of another size."""
import os

import numpy as np
import torch
from detectron2.data import DatasetCatalog
from detectron2.data import detection_utils as utils
from detectron2.utils.events import EventStorage

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_SMALL = ["INPUT.MIN_SIZE_TRAIN", "(112,)", "INPUT.MAX_SIZE_TRAIN", "160",
          "INPUT.MIN_SIZE_TEST", "112", "INPUT.MAX_SIZE_TEST", "160"]
# frozen ResNet (FPN and heads train): a step costs a fraction of a full one on a CPU
_COMMON = ["SOLVER.IMS_PER_BATCH", "2", "DATALOADER.NUM_WORKERS", "0", "SEED", "0",
           "MODEL.BACKBONE.FREEZE_AT", "5"]

_SOLO_TEST = ["MODEL.SOLOV2.SCORE_THR", "0.02", "MODEL.SOLOV2.UPDATE_THR", "0.01",
              "MODEL.SOLOV2.PRIOR_PROB", "0.5", "MODEL.SOLOV2.MAX_PER_IMG", "20"]

# one config per family (the ranking-loss variant; and SOLO / Decoupled SOLO, the SOLOv2
# meta-architecture's other heads), small images, thresholds low enough that a briefly trained
# model has detections for NMS / Matrix NMS / Fast NMS to work on, at the learning rates these
# brief trainings were measured with (the configs' rates suit 650 iterations)
_LR_002, _LR_001 = ["SOLVER.BASE_LR", "0.02"], ["SOLVER.BASE_LR", "0.01"]
FAMILY_CONFIGS = {
    "rs_mask_rcnn": ("shapes/rs_mask_rcnn_R_18_FPN_quick.yaml", _SMALL + [
        "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.01", "MODEL.RPN.POST_NMS_TOPK_TEST", "100"]),
    "rs_cascade_rcnn": ("shapes/rs_cascade_rcnn_R_18_FPN_quick.yaml", _SMALL + [
        "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.01", "MODEL.RPN.POST_NMS_TOPK_TEST", "100"]),
    # 150 candidates per level: P5 of the (wide) trace sample has more anchors (4 × 8 × 6), of
    # the test images fewer (4 × 4 × 6): the traced top-k size must follow the image
    "rs_paa": ("shapes/rs_paa_R_18_FPN_quick.yaml", _SMALL + [
        "MODEL.RETINANET.SCORE_THRESH_TEST", "0.02", "MODEL.RETINANET.TOPK_CANDIDATES_TEST", "150"]
        + _LR_002),
    "rs_yolact": ("shapes/rs_yolact_R_18_quick.yaml", [
        "MODEL.YOLACT.INPUT_SIZE", "112", "MODEL.YOLACT.SCORE_THRESH_TEST", "0.02"] + _LR_001),
    "rs_solov2": ("shapes/rs_solov2_R_18_FPN_quick.yaml", _SMALL + [
        "MODEL.SOLOV2.SCORE_THR", "0.02", "MODEL.SOLOV2.UPDATE_THR", "0.01"] + _LR_001),
    # prior 0.5 (output biases 0): with the default 0.01 the mask logits start at σ = 0.01 and
    # after TRAIN_ITERS steps no mask reaches MASK_THR 0.5, so there would be no detection. 20
    # detections: the top of the score list, where no two scores are within ONNX Runtime's
    # rounding (the 100 best include near-ties, whose order may swap)
    "solo": ("shapes/solo_R_18_FPN_quick.yaml", _SMALL + _SOLO_TEST + _LR_001),
    "decoupled_solo": ("shapes/solo_R_18_FPN_quick.yaml", _SMALL + _SOLO_TEST + [
        "MODEL.SOLOV2.INSTANCE_HEAD_TYPE", "decoupled"] + _LR_001),
}
TRAIN_ITERS = 12

_TRAINED = {}


def family_cfg(name, extra=()):
    from rsloss_d2.engine import load_config

    config, opts = FAMILY_CONFIGS[name]
    cfg = load_config(os.path.join(REPO, "configs", config), _COMMON + opts + list(extra))
    cfg.MODEL.DEVICE = "cpu"
    return cfg


def trained_model(name, datasets_root):
    """(cfg, eval-mode model) of family `name` after TRAIN_ITERS SGD steps on shapes_train,
    trained once per session."""
    if name not in _TRAINED:
        from rsloss_d2.engine import Trainer

        cfg = family_cfg(name)
        torch.manual_seed(0)
        model = Trainer.build_model(cfg)
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.SGD(params, lr=cfg.SOLVER.BASE_LR, momentum=0.9,
                                    weight_decay=1e-4)
        data = iter(Trainer.build_train_loader(cfg))
        model.train()
        with EventStorage():
            for _ in range(TRAIN_ITERS):
                losses = model(next(data))
                optimizer.zero_grad()
                sum(losses.values()).backward()
                torch.nn.utils.clip_grad_norm_(params, 10.0)
                optimizer.step()
        _TRAINED[name] = (cfg, model.eval())
    return _TRAINED[name]


def val_images(cfg, num=5):
    """The first `num` shapes_val images as the exported model takes them ((3, H, W) float32,
    resized at the test size), each cropped to another (H, W): the trace must generalise."""
    from rsloss_d2.export.inputs import image_tensor

    out = []
    for i, d in enumerate(DatasetCatalog.get("shapes_val")[:num]):
        img = image_tensor(cfg, utils.read_image(d["file_name"], format=cfg.INPUT.FORMAT))
        h, w = img.shape[-2:]
        out.append(img[:, : h - 8 * (i % 3), : w - 8 * i].contiguous())
    return out


def trace_sample(cfg):
    """Two shapes_train images at the test size side by side, cropped: a size none of the test
    images has, twice as wide (padded to another size than theirs, more anchors per level)."""
    from rsloss_d2.export.inputs import image_tensor

    imgs = [image_tensor(cfg, utils.read_image(d["file_name"], format=cfg.INPUT.FORMAT))
            for d in DatasetCatalog.get("shapes_train")[:2]]
    img = torch.cat(imgs, dim=2)
    h, w = img.shape[-2:]
    return img[:, : h - 4, : w - 12].contiguous()


def mask_iou(a, b):
    """Per-detection IoU of two (N, H, W) bool mask stacks (1 where both are empty)."""
    a, b = torch.as_tensor(np.asarray(a)).flatten(1), torch.as_tensor(np.asarray(b)).flatten(1)
    inter = (a & b).sum(1).float()
    union = (a | b).sum(1).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))
