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

    # ---------------------------------------------------------------- RS R-CNN heads
    _C.MODEL.RS_RPN = CN()
    # Multiplier of all three RSRPN losses (rank, sort, bbox); official head_weight 0.2.
    _C.MODEL.RS_RPN.HEAD_WEIGHT = 0.2
    # RSRPN low-quality matches: a GT's best anchors become positive only if that IoU >= this.
    _C.MODEL.RS_RPN.MIN_POS_IOU = 0.3
    _C.MODEL.RS_ROI_HEADS = CN()
    # RS ROI heads match_low_quality (official: False for Faster / Cascade, True for Mask R-CNN).
    # With MODEL.ROI_HEADS.PROPOSAL_APPEND_GT (default, as official) it changes nothing: each
    # GT's best match is its own appended box (IoU 1), already positive.
    _C.MODEL.RS_ROI_HEADS.ALLOW_LOW_QUALITY_MATCHES = False
    # Max positive RoIs per process batch for the mask head, drawn at random (official 200).
    _C.MODEL.RS_ROI_HEADS.MASK_MAX_POSITIVES = 200
    # Loss weight of each RSCascadeROIHeads stage (official RS-Cascade: [1, 1, 1]).
    _C.MODEL.RS_ROI_HEADS.CASCADE_STAGE_LOSS_WEIGHTS = [1.0, 1.0, 1.0]

    # ---------------------------------------------------------------- CARAFE FPN
    # (Deformable ResNet stages reuse Detectron2's MODEL.RESNETS.DEFORM_ON_PER_STAGE /
    # DEFORM_MODULATED / DEFORM_NUM_GROUPS, read by build_resnet_dcn_backbone.)
    _C.MODEL.FPN_CARAFE = CN()
    # P6 of build_resnet_fpn_carafe_backbone: "conv" (mmdet FPN_CARAFE: 3x3/2 conv on C5 feeding
    # the top-down path) or "maxpool" (Detectron2's LastLevelMaxPool on P5).
    _C.MODEL.FPN_CARAFE.TOP_LEVEL = "conv"
    # CARAFE reassembly kernel size k_up (official 5).
    _C.MODEL.FPN_CARAFE.UP_KERNEL = 5
    # CARAFE channel groups sharing one reassembly kernel (official 1).
    _C.MODEL.FPN_CARAFE.UP_GROUP = 1
    # CARAFE content-encoder kernel size k_enc (official 3).
    _C.MODEL.FPN_CARAFE.ENCODER_KERNEL = 3
    # CARAFE content-encoder dilation (official 1).
    _C.MODEL.FPN_CARAFE.ENCODER_DILATION = 1
    # CARAFE channel-compressor output channels (official 64).
    _C.MODEL.FPN_CARAFE.COMPRESSED_CHANNELS = 64
