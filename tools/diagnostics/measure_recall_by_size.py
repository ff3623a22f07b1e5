#!/usr/bin/env python
"""How well an R-CNN's RPN proposals and final detections cover the test set's objects, by size.

    python tools/diagnostics/measure_recall_by_size.py --config-file configs/shapes/rs_faster_rcnn_R_18_FPN_quick.yaml \
        --weights output/.../model_final.pth [KEY VALUE ...]

On the config's first test set (test-time resize, no augmentation) every ground-truth box
(crowd boxes left out) gets the best IoU among the RPN's test proposals (its
``POST_NMS_TOPK_TEST`` best, the ones the box head sees) and among the model's final detections
(any class, after the score threshold and NMS). Per COCO size range of the box area in original
image pixels (small < 32², medium < 96², large) it prints the number of objects, the mean best
proposal IoU and the share of objects with a proposal at IoU ≥ 0.5 / ≥ 0.7, then the mean best
detection IoU and the share with a detection at IoU ≥ 0.75. docs/experiments/rs_faster_gap.md
uses it: RS-Faster R-CNN's gap to Faster R-CNN is in its proposals for small objects.
"""
import argparse
import os


import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import DatasetCatalog, build_detection_test_loader
from detectron2.structures import Boxes, BoxMode, pairwise_iou

from rsloss_d2 import engine

SIZE_RANGES = (("small", 0.0, 32.0 ** 2), ("medium", 32.0 ** 2, 96.0 ** 2),
               ("large", 96.0 ** 2, float("inf")))


def best_ious(gt_boxes: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """(G,) best IoU of each of the (G, 4) XYXY ``gt_boxes`` among the (N, 4) ``boxes``
    (0 where N = 0)."""
    if len(boxes) == 0 or len(gt_boxes) == 0:
        return gt_boxes.new_zeros(len(gt_boxes))
    return pairwise_iou(Boxes(gt_boxes), Boxes(boxes)).max(dim=1).values


def summarize(areas: torch.Tensor, proposal_ious: torch.Tensor, detection_ious: torch.Tensor):
    """Per size range: {"n", "proposal_iou", "proposal_r50", "proposal_r70", "detection_iou",
    "detection_r75"} over the (G,) objects (areas in original pixels²); ranges without objects
    are left out."""
    out = {}
    for name, lo, hi in SIZE_RANGES:
        keep = (areas >= lo) & (areas < hi)
        if not keep.any():
            continue
        p, d = proposal_ious[keep], detection_ious[keep]
        out[name] = {
            "n": int(keep.sum()),
            "proposal_iou": float(p.mean()),
            "proposal_r50": float((p >= 0.5).float().mean()),
            "proposal_r70": float((p >= 0.7).float().mean()),
            "detection_iou": float(d.mean()),
            "detection_r75": float((d >= 0.75).float().mean()),
        }
    return out


def gt_boxes_of(record) -> torch.Tensor:
    """(G, 4) XYXY boxes in original pixels of a dataset dict's non-crowd annotations."""
    boxes = [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS)
             for a in record.get("annotations", []) if not a.get("iscrowd", 0)]
    return torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)


@torch.no_grad()
def collect(model, cfg):
    """(areas, proposal IoUs, detection IoUs), each (G,), over all objects of the first test
    set; proposals and detections are compared in original image pixels."""
    model.eval()
    dataset = cfg.DATASETS.TEST[0]
    records = {r["image_id"]: r for r in DatasetCatalog.get(dataset)}
    areas, prop, det = [], [], []
    for batch in build_detection_test_loader(cfg, dataset):
        images = model.preprocess_image(batch)
        features = model.backbone(images.tensor)
        proposals, _ = model.proposal_generator(images, features, None)
        # the box head on the same proposals (GeneralizedRCNN.inference without recomputing them)
        results, _ = model.roi_heads(images, features, proposals, None)
        detections = model._postprocess(results, batch, images.image_sizes)
        for inputs, props, dets, (h, w) in zip(batch, proposals, detections, images.image_sizes):
            record = records[inputs["image_id"]]
            gt = gt_boxes_of(record)
            # the proposals live in the resized image, the detections in the original one
            scale = torch.tensor([record["width"] / w, record["height"] / h] * 2)
            areas.append(Boxes(gt).area())
            prop.append(best_ious(gt, props.proposal_boxes.tensor.cpu() * scale))
            det.append(best_ious(gt, dets["instances"].pred_boxes.tensor.cpu()))
    return torch.cat(areas), torch.cat(prop), torch.cat(det)


def format_table(name, summary):
    lines = [f"{name}:",
             "| size | objects | proposals: mean best IoU | R@0.5 | R@0.7 "
             "| detections: mean best IoU | R@0.75 |",
             "|---|---|---|---|---|---|---|"]
    for size, s in summary.items():
        lines.append(f"| {size} | {s['n']} | {s['proposal_iou']:.3f} | {s['proposal_r50']:.3f} | "
                     f"{s['proposal_r70']:.3f} | {s['detection_iou']:.3f} | "
                     f"{s['detection_r75']:.3f} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--weights", required=True)
    parser.add_argument("opts", nargs=argparse.REMAINDER, default=[])
    a = parser.parse_args(argv)
    args = engine.argument_parser().parse_args(
        ["--config-file", a.config_file, "DATALOADER.NUM_WORKERS", "0"] + a.opts)
    cfg = engine.build_cfg(args)
    model = engine.Trainer.build_model(cfg)
    DetectionCheckpointer(model).load(a.weights)
    summary = summarize(*collect(model, cfg))
    print(format_table(os.path.basename(a.config_file), summary))
    return summary


if __name__ == "__main__":
    main()
