#!/usr/bin/env python
"""Export an rsloss_d2 (or Detectron2) model to TorchScript or ONNX — Detectron2's
``tools/deploy/export_model.py`` with rsloss_d2's config keys and every rsloss_d2 family.

    python tools/deploy/export_model.py --config-file configs/shapes/rs_mask_rcnn_R_18_FPN_quick.yaml \\
        --format onnx --export-method tracing --output ./export_rs_mask \\
        MODEL.WEIGHTS output/shapes_rs_mask_rcnn_R_18_FPN_quick/model_final.pth

Writes ``model.ts`` (+ IR dumps) or ``model.onnx`` into ``--output``. The exported model takes
one (3, H, W) float32 image of any size (raw pixels in ``INPUT.FORMAT`` order, resized as at
test time) and returns the tensors listed in tools/deploy/README.md for its family.
``--run-eval`` evaluates the exported model (TorchScript or ONNX Runtime) on
``DATASETS.TEST[0]`` with the dataset's evaluator, at the original image size.
"""
import argparse
import logging
import os
import sys

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import build_detection_test_loader
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.modeling import build_model
from detectron2.utils.logger import setup_logger

from rsloss_d2.engine import load_config
from rsloss_d2.evaluation.build import build_evaluator
from rsloss_d2.export import ExportError, export_model, output_names
from rsloss_d2.export.inputs import read_image_tensor
from rsloss_d2.export.runtime import ExportedPredictor, eval_wrapper

logger = logging.getLogger("rsloss_d2.export")


def get_parser():
    parser = argparse.ArgumentParser(description="Export a model to TorchScript or ONNX.")
    parser.add_argument("--format", choices=["torchscript", "onnx"], default="torchscript")
    parser.add_argument("--export-method", choices=["tracing", "scripting"], default="tracing",
                        help="scripting: R-CNN family, TorchScript only")
    parser.add_argument("--config-file", default="", metavar="FILE")
    parser.add_argument("--sample-image", default=None, type=str,
                        help="image to trace with (default: the first image of DATASETS.TEST[0]); "
                             "it must have detections")
    parser.add_argument("--run-eval", action="store_true")
    parser.add_argument("--output", required=True, help="output directory")
    parser.add_argument("opts", default=[], nargs=argparse.REMAINDER,
                        help="Modify config options using the command-line 'KEY VALUE' pairs")
    return parser


def setup_cfg(args):
    cfg = load_config(args.config_file, args.opts)
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.freeze()
    return cfg


def sample_image(cfg, path):
    if path:
        return read_image_tensor(cfg, path)
    first = next(iter(build_detection_test_loader(cfg, cfg.DATASETS.TEST[0])))[0]
    return first["image"].float()


def main(argv=None):
    args = get_parser().parse_args(argv)
    setup_logger()
    setup_logger(name="rsloss_d2")
    logger.info("Command line arguments: " + str(args))
    os.makedirs(args.output, exist_ok=True)
    cfg = setup_cfg(args)

    torch_model = build_model(cfg)
    DetectionCheckpointer(torch_model).resume_or_load(cfg.MODEL.WEIGHTS)
    torch_model.eval()
    image = sample_image(cfg, args.sample_image)
    try:
        path = export_model(torch_model, image, args.output, args.format, args.export_method)
    except ExportError as e:
        logger.error(str(e))
        return 2
    logger.info(f"Exported {type(torch_model).__name__} to {path}; outputs (in order): "
                f"{list(output_names(torch_model))}")

    if args.run_eval:
        predictor = ExportedPredictor(path)
        dataset = cfg.DATASETS.TEST[0]
        data_loader = build_detection_test_loader(cfg, dataset)
        evaluator = build_evaluator(cfg, dataset, args.output)
        metrics = inference_on_dataset(eval_wrapper(predictor, torch_model), data_loader,
                                       evaluator)
        print_csv_format(metrics)
    return 0


if __name__ == "__main__":
    sys.exit(main())
