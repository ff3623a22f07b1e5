#!/usr/bin/env python
"""Run a trained model on images and write PNGs with masks, boxes and scores drawn by
Detectron2's `Visualizer`.

    python tools/demo.py --config-file configs/shapes/mask_rcnn_R_18_FPN_quick.yaml \
        --input datasets/shapes/val --output demo_out \
        --opts MODEL.WEIGHTS output/shapes_mask_rcnn_R_18_FPN_quick/model_final.pth

The predictions are those of evaluation (same model, same `MODEL.ROI_HEADS.SCORE_THRESH_TEST`
and activation); `--confidence-threshold` additionally hides drawn predictions below it.
Class names come from the first `--dataset NAME JSON IMAGE_DIR` (a COCO- or LVIS-format set,
registered as by `tools/train_net.py --dataset`), else from `DATASETS.TEST[0]`.
"""
import argparse
import glob
import os


import cv2
import tqdm

from detectron2.config import get_cfg
from detectron2.data import MetadataCatalog
from detectron2.data.detection_utils import read_image
from detectron2.engine import DefaultPredictor
from detectron2.utils.visualizer import ColorMode, Visualizer

from rsloss_d2 import add_rsloss_config
from rsloss_d2.data.user_datasets import register_from_args

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp")


def setup_cfg(args):
    cfg = get_cfg()
    add_rsloss_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    cfg.freeze()
    return cfg


def list_inputs(inputs):
    """Expand files, folders and glob patterns into a sorted list of image paths."""
    paths = []
    for item in inputs:
        if os.path.isdir(item):
            paths += [os.path.join(item, f) for f in sorted(os.listdir(item))
                      if f.lower().endswith(IMAGE_EXTS)]
        else:
            matched = sorted(glob.glob(os.path.expanduser(item)))
            if not matched:
                raise FileNotFoundError(f"demo: no image matches '{item}'")
            paths += matched
    if not paths:
        raise FileNotFoundError(f"demo: no image found in {inputs}")
    return paths


def filter_predictions(instances, confidence_threshold, class_thresholds=None):
    """Keep the predictions to draw: score >= the class's threshold (LRP-optimal thresholds) if
    given, else >= `confidence_threshold`."""
    if class_thresholds is not None:
        from rsloss_d2.evaluation import filter_by_class_thresholds

        return filter_by_class_thresholds(instances, class_thresholds, confidence_threshold)
    return instances[instances.scores >= confidence_threshold]


def get_parser():
    p = argparse.ArgumentParser(description="rsloss_d2 demo: draw predictions on images")
    p.add_argument("--config-file", required=True, metavar="FILE")
    p.add_argument("--input", nargs="+", required=True, help="image files, folders or globs")
    p.add_argument("--output", required=True, help="output folder for the PNGs")
    p.add_argument("--confidence-threshold", type=float, default=0.0,
                   help="hide predictions below this score (on top of the model's test threshold)")
    p.add_argument("--class-thresholds", default=None, metavar="JSON",
                   help="per-class score thresholds (e.g. the LRP-optimal ones saved by evaluation)"
                        " used instead of --confidence-threshold")
    p.add_argument("--dataset", nargs=3, action="append", default=[],
                   metavar=("NAME", "JSON", "IMAGE_DIR"),
                   help="register a COCO- or LVIS-format dataset (as train_net.py --dataset); the "
                        "first one gives the class names")
    p.add_argument("--opts", default=[], nargs=argparse.REMAINDER, help="config KEY VALUE pairs")
    return p


def main(argv=None):
    args = get_parser().parse_args(argv)
    register_from_args(args.dataset)
    cfg = setup_cfg(args)
    predictor = DefaultPredictor(cfg)
    if args.dataset:
        dataset = args.dataset[0][0]
    else:
        dataset = cfg.DATASETS.TEST[0] if len(cfg.DATASETS.TEST) else "__unused"
    metadata = MetadataCatalog.get(dataset)
    class_thresholds = None
    if args.class_thresholds:
        from rsloss_d2.evaluation import load_class_thresholds

        class_thresholds = load_class_thresholds(args.class_thresholds)
    os.makedirs(args.output, exist_ok=True)
    written = []
    for path in tqdm.tqdm(list_inputs(args.input), desc="demo"):
        img = read_image(path, format="BGR")
        instances = predictor(img)["instances"].to("cpu")
        instances = filter_predictions(instances, args.confidence_threshold, class_thresholds)
        vis = Visualizer(img[:, :, ::-1], metadata, scale=2.0, instance_mode=ColorMode.IMAGE)
        out = vis.draw_instance_predictions(instances).get_image()
        dst = os.path.join(args.output, os.path.splitext(os.path.basename(path))[0] + ".png")
        cv2.imwrite(dst, out[:, :, ::-1])
        written.append(dst)
    print(f"demo: wrote {len(written)} images to {args.output}")
    return written


if __name__ == "__main__":
    main()
