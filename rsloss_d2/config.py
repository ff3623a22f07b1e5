"""Config keys added by rsloss_d2.

`add_rsloss_config(cfg)` adds every new key to the cfg it is given (it never edits Detectron2's
global defaults). Call it before `cfg.merge_from_file(...)`, as `tools/train_net.py` does; an
unknown key in a yaml or on the command line then fails with Detectron2's usual
"Non-existent config key" error.
"""
from detectron2.config import CfgNode as CN


def add_rsloss_config(cfg):
    """Add the rsloss_d2 keys (with their defaults) to `cfg`, in place."""
    _C = cfg

    # ---------------------------------------------------------------- data
    _C.DATASETS.SYNTHETIC = CN()
    # Number of generated images per split when the shapes datasets are created on first use.
    _C.DATASETS.SYNTHETIC.NUM_TRAIN = 300
    _C.DATASETS.SYNTHETIC.NUM_VAL = 60
    # Side length (pixels) of the generated square images.
    _C.DATASETS.SYNTHETIC.IMAGE_SIZE = 256

    # ---------------------------------------------------------------- evaluation
    _C.TEST.OLRP = CN()
    # Add Optimal LRP (oLRP and its loc / FP / FN components) beside AP in COCO / LVIS evaluation.
    _C.TEST.OLRP.ENABLED = True
    # IoU threshold tau of LRP (the papers and the official LRP-Error code use 0.5).
    _C.TEST.OLRP.TAU = 0.5
    # Print the per-class LRP-optimal thresholds and save them to lrp_optimal_thresholds.json.
    _C.TEST.OLRP.SAVE_THRESHOLDS = True

    # ---------------------------------------------------------------- ranking losses
    _C.MODEL.RANK_LOSS = CN()
    # Smoothing width delta of the step function H used by RS Loss (paper default 0.5).
    _C.MODEL.RANK_LOSS.RS_DELTA = 0.5
    # Smoothing width delta of aLRP Loss and AP Loss (paper default 1.0).
    _C.MODEL.RANK_LOSS.ALRP_DELTA = 1.0
    _C.MODEL.RANK_LOSS.AP_DELTA = 1.0

    # @@ RS R-CNN heads keys (RPN / ROI / mask / cascade) go below this line @@

    # @@ backbone / neck keys (CARAFE, deformable conv) go below this line @@
