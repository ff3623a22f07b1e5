#!/usr/bin/env python
"""Train / evaluate rsloss_d2 models: Detectron2's `DefaultTrainer` with rsloss_d2's config keys,
datasets and evaluators (the code is in `rsloss_d2/engine/`).

    python tools/train_net.py --config-file configs/shapes/mask_rcnn_R_18_FPN_quick.yaml
    python tools/train_net.py --config-file X --num-gpus 8 SOLVER.IMS_PER_BATCH 16
    python tools/train_net.py --config-file X --eval-only MODEL.WEIGHTS output/model_final.pth
    python tools/train_net.py --config-file X --resume      # continue from OUTPUT_DIR/last_checkpoint
    python tools/train_net.py --dataset my_train a/train.json a/images \
        --dataset my_val a/val.json a/images --config-file X \
        DATASETS.TRAIN "('my_train',)" DATASETS.TEST "('my_val',)" MODEL.ROI_HEADS.NUM_CLASSES 4

`--dataset NAME JSON IMAGE_DIR` (repeatable) registers a COCO- or LVIS-format dataset (the format
is recognised from the json). Everything that can be checked before training is checked before
any process starts and ends with one `train_net.py: error: ...` line.

Without a GPU (MODEL.DEVICE cpu), `--num-gpus N` starts N CPU processes that train with
DistributedDataParallel over gloo.
"""
from rsloss_d2.engine import run

if __name__ == "__main__":
    run()
