#!/usr/bin/env python
"""Run a trained model on images and write them with masks, boxes and scores drawn by
Detectron2's `Visualizer`.

    python tools/demo.py --config-file configs/shapes/mask_rcnn_R_18_FPN_quick.yaml \
        --input datasets/shapes/val --output demo_out \
        --opts MODEL.WEIGHTS output/shapes_mask_rcnn_R_18_FPN_quick/model_final.pth

The predictions are those of evaluation (same model, same `MODEL.ROI_HEADS.SCORE_THRESH_TEST`
and activation); `--confidence-threshold` additionally hides drawn predictions below it.
Class names come from the first `--dataset NAME JSON IMAGE_DIR` (a COCO- or LVIS-format set,
registered as by `tools/train_net.py --dataset`), else from `DATASETS.TEST[0]`.

Each output keeps its input's file name and format (`x.jpg` -> `x.jpg`, `x.png` -> `x.png`; a
name met twice, e.g. from two folders, gets `_1`, `_2`, ... before its extension). Files with
another extension than :data:`IMAGE_EXTS` are listed and skipped; an input that cannot be read
as an image is skipped with a warning and counted.
"""
import argparse
import glob
import os


import cv2
import tqdm
from PIL import Image

from detectron2.config import get_cfg
from detectron2.data import MetadataCatalog
from detectron2.data.detection_utils import read_image
from detectron2.engine import DefaultPredictor
from detectron2.utils.visualizer import ColorMode, Visualizer

from rsloss_d2 import add_rsloss_config
from rsloss_d2.data.user_datasets import register_from_args

# the image formats read (Detectron2's read_image uses PIL) and written (OpenCV) here
IMAGE_EXTS = tuple(e for e in (".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".webp",
                               ".tif", ".tiff")
                   if e in Image.registered_extensions() and cv2.haveImageWriter("x" + e))


def setup_cfg(args):
    cfg = get_cfg()
    add_rsloss_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    cfg.freeze()
    return cfg


def list_inputs(inputs):
    """Expand files, folders and glob patterns into ``(image paths, skipped paths)``: the
    images in input order (folders sorted), and the files skipped for their extension."""
    paths, skipped = [], []
    for item in inputs:
        if os.path.isdir(item):
            found = [os.path.join(item, f) for f in sorted(os.listdir(item))
                     if os.path.isfile(os.path.join(item, f))]
        else:
            found = sorted(glob.glob(os.path.expanduser(item)))
            if not found:
                raise FileNotFoundError(f"demo: no image matches '{item}'")
        for path in found:
            (paths if path.lower().endswith(IMAGE_EXTS) else skipped).append(path)
    if not paths:
        raise FileNotFoundError(f"demo: no image found in {inputs} (image extensions: "
                                f"{' '.join(IMAGE_EXTS)}; skipped: {skipped[:10]})")
    return paths, skipped


def output_name(path, taken):
    """The output file name of `path`: its own name, made unique among `taken` (a set of
    lower-case names, updated) by ``_1``, ``_2``, ... before the extension."""
    stem, ext = os.path.splitext(os.path.basename(path))
    name, k = stem + ext, 0
    while name.lower() in taken:
        k += 1
        name = f"{stem}_{k}{ext}"
    taken.add(name.lower())
    return name


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
    p.add_argument("--output", required=True,
                   help="output folder (outputs keep their input's file name and format)")
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
    paths, skipped = list_inputs(args.input)
    if skipped:
        print(f"demo: skipped {len(skipped)} files that are not {'/'.join(IMAGE_EXTS)} images: "
              + ", ".join(skipped[:20]) + (" ..." if len(skipped) > 20 else ""))
    written, unreadable, taken = [], [], set()
    for path in tqdm.tqdm(paths, desc="demo"):
        try:
            img = read_image(path, format="BGR")
        except (OSError, ValueError, SyntaxError) as e:  # PIL: not an image, truncated, ...
            print(f"demo: warning: skipped {path}: cannot be read as an image ({e})")
            unreadable.append(path)
            continue
        instances = predictor(img)["instances"].to("cpu")
        instances = filter_predictions(instances, args.confidence_threshold, class_thresholds)
        vis = Visualizer(img[:, :, ::-1], metadata, scale=2.0, instance_mode=ColorMode.IMAGE)
        out = vis.draw_instance_predictions(instances).get_image()
        dst = os.path.join(args.output, output_name(path, taken))
        if not cv2.imwrite(dst, out[:, :, ::-1]):
            raise OSError(f"demo: could not write {dst}")
        written.append(dst)
    print(f"demo: wrote {len(written)} images to {args.output}"
          + (f"; {len(unreadable)} unreadable inputs skipped" if unreadable else "")
          + (f"; {len(skipped)} files of other extensions skipped" if skipped else ""))
    return written


if __name__ == "__main__":
    main()
