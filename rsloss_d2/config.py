"""Config keys added by rsloss_d2.

`add_rsloss_config(cfg)` adds every new key to the cfg it is given (it never edits Detectron2's
global defaults). Call it before `cfg.merge_from_file(...)`, as `tools/train_net.py` does; an
unknown key in a yaml or on the command line then fails with Detectron2's usual
"Non-existent config key" error, and a renamed key (:data:`RENAMED_KEYS`) with a KeyError that
names its new key (yacs' renamed-key check, in both `merge_from_file` and `merge_from_list`).
"""
from detectron2.config import CfgNode as CN

# Keys that were renamed: old key -> new key, or (new key, note). Setting an old key in a yaml
# or on the command line raises "KeyError: Key <old> was renamed to <new>; please update your
# config. ..." (no silent alias). Loss names are spelt the same in every family: "rank_sort",
# "alrp", "ap", "focal_dice", "focal_centerness", "focal_iou_pred", "softmax_ohem", "softmax",
# "sigmoid", "gumbel", "droploss", "eql".
RENAMED_KEYS = {
    "MODEL.GOL.CLS_LOSS": "MODEL.GOL.LOSS",
    "MODEL.RANKING_RETINANET.DELTA": (
        "MODEL.RANK_LOSS.ALRP_DELTA",
        "the δ of AP Loss is MODEL.RANK_LOSS.AP_DELTA; loss names: \"alrp\", \"ap\", "
        "\"rank_sort\"."),
    "MODEL.SOLOV2.LOSS.TYPE": "MODEL.SOLOV2.LOSS",
    "MODEL.SOLOV2.LOSS.FOCAL_ALPHA": "MODEL.SOLOV2.FOCAL_ALPHA",
    "MODEL.SOLOV2.LOSS.FOCAL_GAMMA": "MODEL.SOLOV2.FOCAL_GAMMA",
    "MODEL.SOLOV2.LOSS.FOCAL_WEIGHT": "MODEL.SOLOV2.FOCAL_WEIGHT",
    "MODEL.SOLOV2.LOSS.DICE_WEIGHT": "MODEL.SOLOV2.DICE_WEIGHT",
}


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
    _C.TEST.RANKING_QUALITY = CN()
    # Add ranking quality beside AP: Spearman's correlation of score and IoU over the true
    # positives at IoU 0.5, pooled and per class, and the IoU of each class's top-10 TPs.
    _C.TEST.RANKING_QUALITY.ENABLED = True
    # AP of the COCO / LVIS evaluators: "vectorised" (rsloss_d2's, equal to pycocotools /
    # lvis-api and computed in the same pass as oLRP) or "official" (COCOeval / LVISEval).
    _C.TEST.AP_IMPL = "vectorised"
    # Name of a reference model whose results (TEST.BASELINE_RESULTS) are printed beside this
    # run's after the final evaluation, e.g. the standard model of a ranking-loss config.
    _C.TEST.BASELINE_NAME = ""
    # Its results as "metric=value" pairs separated by commas, e.g. "bbox/AP=52.6,segm/AP=55.0".
    _C.TEST.BASELINE_RESULTS = ""
    # The test set those results were measured on: the table is printed only for it.
    _C.TEST.BASELINE_DATASET = ""

    # ---------------------------------------------------------------- datasets
    # Stop before training when the head's NUM_CLASSES differs from the number of categories of
    # the training set (test sets with --eval-only); False lets a run that means it proceed.
    _C.DATASETS.CHECK_NUM_CLASSES = True
    # Allow a test set whose categories are a subset of the training set's (same ids and names):
    # it is evaluated on its own categories only. False: any difference stops before training.
    _C.DATASETS.TEST_CATEGORY_SUBSET = False

    # ---------------------------------------------------------------- scaling out
    # Images per process the config's numbers (lr, ranking statistics) were made for: ranking
    # losses rank within each process's images, so tools/train_net.py warns when a run's images
    # per process differ (0: not recorded). Paper configs: the official images per GPU (README).
    _C.SOLVER.REFERENCE_IMS_PER_PROCESS = 0

    # ---------------------------------------------------------------- training safety
    # Stop training (FloatingPointError) when a head's positives all have IoU 0 with their
    # objects (its logged `<head>/mean_pos_iou` is 0 or NaN: the box regressor diverged and RS
    # Loss, with no positive sorting target, is 0) for this many consecutive iterations after
    # warm-up; iterations without assigned positives (no objects) do not count. 0: never stop.
    _C.SOLVER.MAX_ITERS_WITHOUT_POSITIVES = 20
    # Modules (state-dict name prefixes, e.g. "roi_heads.box_predictor") that MODEL.WEIGHTS may
    # leave unloaded or of another shape (fine-tuning to other classes). Anything else left
    # unloaded stops the run, except the neck and heads when MODEL.WEIGHTS holds only a
    # backbone (a pretrained start, training only). "*": any module (not checked).
    _C.MODEL.WEIGHTS_ALLOW_UNLOADED = []

    # ---------------------------------------------------------------- ranking losses
    _C.MODEL.RANK_LOSS = CN()
    # Smoothing width delta of the step function H used by RS Loss (paper default 0.5).
    _C.MODEL.RANK_LOSS.RS_DELTA = 0.5
    # delta of the smoothed step of aLRP Loss (official 1.0).
    _C.MODEL.RANK_LOSS.ALRP_DELTA = 1.0
    # delta of the smoothed step of AP Loss (official 1.0).
    _C.MODEL.RANK_LOSS.AP_DELTA = 1.0
    # Path of the three losses (rsloss_d2.losses.compiled): "auto" = one compiled C call for CPU
    # tensors (built with the system C compiler on first use), the PyTorch path otherwise or
    # when no compiler is found; "eager" = the PyTorch path everywhere; "compiled" = as "auto",
    # but an error before training if the C library cannot be built. Same values and gradients.
    _C.MODEL.RANK_LOSS.IMPLEMENTATION = "auto"

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

    # ---------------------------------------------------------------- GOL / Gumbel (long tail)
    # (GOLROIHeads, NormedMaskRCNNConvUpsampleHead; configs/gol/README.md.)
    _C.MODEL.GOL = CN()
    # Box classification loss of GOLROIHeads: "softmax" (Detectron2 CE over C+1), "sigmoid" (BCE
    # over C+1 one-hot columns, mmdet use_sigmoid), "gumbel" (GumbelCE over C+1), "droploss" /
    # "eql" (C columns, no background; activation below).
    _C.MODEL.GOL.LOSS = "gumbel"
    # Activation of "droploss" / "eql": "gumbel" (logits clamped to [-4, 10]) or "sigmoid".
    _C.MODEL.GOL.ACTIVATION = "gumbel"
    # Test score activation; "" = the training one (official sigmoid configs use "softmax").
    _C.MODEL.GOL.TEST_ACTIVATION = ""
    # DropLoss / EQL tail threshold lambda: class c is tail if image_count(c) / N < lambda.
    _C.MODEL.GOL.TAIL_THRESHOLD = 0.0011
    # N of the tail frequency; 0 = training images with >= 1 annotation, counted from
    # DATASETS.TRAIN (official constants: LVIS v1 99388, v0.5 56740).
    _C.MODEL.GOL.TAIL_NUM_IMAGES = 0
    # Temperature of the NormedLinear box classifier (official 5); 0 = plain nn.Linear.
    _C.MODEL.GOL.NORMED_CLS_TEMPERATURE = 0.0
    # Classifier init (ignored by NormedLinear: N(0, 0.01^2), bias 0): "constant" or "normal".
    _C.MODEL.GOL.CLS_INIT = "constant"
    # Constant weight value, or std of "normal" (Gumbel 0.001; DropLoss-sigmoid 0.01).
    _C.MODEL.GOL.CLS_INIT_VALUE = 0.001
    # Classifier bias init (Gumbel -2.0; sigmoid / softmax -6.5; DropLoss-sigmoid -6.9).
    _C.MODEL.GOL.CLS_INIT_BIAS = -2.0
    # Box-head fcs and bbox_pred keep PyTorch's nn.Linear default init (side effect of the
    # official init_cfg on fc_cls); False = Detectron2's init.
    _C.MODEL.GOL.TORCH_DEFAULT_FC_INIT = True
    # Temperature of NormedMaskRCNNConvUpsampleHead's NormedConv2d predictor (official 20).
    _C.MODEL.GOL.MASK_NORMED_TEMPERATURE = 20.0
    # Test score activation of the RS box predictor (RSFastRCNNOutputLayers): "sigmoid"
    # (official RS) or "gumbel" (RS-Mask R-CNN + Gumbel scores).
    _C.MODEL.RS_ROI_HEADS.CLS_ACTIVATION = "sigmoid"
    # Whether the GT boxes appended to the proposals enter the RS box heads' GIoU loss and λ
    # (True: official). False is a safeguard for from-scratch / short schedules: their box loss is
    # ≈ 0 while the regressor is untrained, so λ = (L_rank + L_sort) / L_box explodes when they are
    # most of the positives (configs/shapes/README.md).
    _C.MODEL.RS_ROI_HEADS.BOX_LOSS_ON_GT_PROPOSALS = True

    # ---------------------------------------------------------------- ranking-loss dense detectors
    # (RankingRetinaNet: aLRP / AP-Loss RetinaNet, RS-ATSS, RS-PAA; Detectron2's MODEL.RETINANET
    # keys give classes, head depth / norm, IoU thresholds, box weights and test thresholds.)
    _C.MODEL.RANKING_RETINANET = CN()
    # Loss: "alrp" (aLRP Loss + GIoU, self-balance; delta MODEL.RANK_LOSS.ALRP_DELTA), "ap" (AP
    # Loss + SmoothL1; MODEL.RANK_LOSS.AP_DELTA), "rank_sort" (RS Loss; MODEL.RANK_LOSS.RS_DELTA),
    # "focal_centerness" (standard ATSS head: focal + GIoU + centerness branch) or
    # "focal_iou_pred" (standard PAA head: focal + GIoU + IoU-prediction branch); focal alpha /
    # gamma: MODEL.RETINANET.FOCAL_LOSS_ALPHA / _GAMMA.
    _C.MODEL.RANKING_RETINANET.LOSS = "alrp"
    # Assigner: "max_iou" (MODEL.RETINANET.IOU_THRESHOLDS, mmdet rule), "atss", "paa".
    _C.MODEL.RANKING_RETINANET.ASSIGNER = "max_iou"
    # ATSS: candidates per level per GT (official 9).
    _C.MODEL.RANKING_RETINANET.ATSS_TOPK = 9
    # PAA: initial MaxIoU threshold (pos >= thr, neg < thr; official 0.1).
    _C.MODEL.RANKING_RETINANET.PAA_IOU_THRESH = 0.1
    # PAA: candidates per level per GT kept for the GMM (official 9).
    _C.MODEL.RANKING_RETINANET.PAA_TOPK = 9
    # PAA: GMM covariance regulariser (RS-PAA 1e-5; mmdet's own PAA head 1e-6).
    _C.MODEL.RANKING_RETINANET.PAA_REG_COVAR = 1e-5
    # PAA: weight of the GIoU term of the anchor cost (RS-PAA 1.0; standard PAA 1.3).
    _C.MODEL.RANKING_RETINANET.PAA_COST_GIOU_WEIGHT = 1.0
    # Score voting of the kept boxes at test time (RS-PAA: True).
    _C.MODEL.RANKING_RETINANET.SCORE_VOTING = False
    # Score voting: sigma of exp(-(1 - IoU)^2 / sigma) (official 0.025).
    _C.MODEL.RANKING_RETINANET.SCORE_VOTING_SIGMA = 0.025
    # aLRP self-balance: initial weight of the localisation component (official 50).
    _C.MODEL.RANKING_RETINANET.SELF_BALANCE_INIT = 50.0
    # aLRP self-balance period in iterations; 0 = one epoch, derived from the size of
    # DATASETS.TRAIN (after FILTER_EMPTY_ANNOTATIONS) and SOLVER.IMS_PER_BATCH.
    _C.MODEL.RANKING_RETINANET.SELF_BALANCE_PERIOD = 0
    # One learnable scale per FPN level multiplying the box deltas (ATSS / PAA heads: True).
    _C.MODEL.RANKING_RETINANET.LEVEL_SCALES = False
    # build_retinanet_fpn_p6p7_backbone: input of P6, "res5" (on_input: RetinaNet / aLRP) or
    # "p5" (on_output: ATSS / PAA).
    _C.MODEL.RANKING_RETINANET.P6_IN_FEATURE = "res5"
    # build_retinanet_fpn_p6p7_backbone: ReLU between P6 and P7 (Detectron2 True; mmdet False).
    _C.MODEL.RANKING_RETINANET.RELU_BEFORE_P7 = False

    # ---------------------------------------------------------------- SSD augmentation, YOLACT
    # Training mapper rsloss_d2.data.transforms.SSDDatasetMapper (build_train_mapper(cfg)):
    # photometric distortion, expand, min-IoU crop, fixed-size resize, INPUT.RANDOM_FLIP.
    _C.INPUT.SSD_AUGMENTATION = CN()
    # Use the SSD-style training mapper (needs the loader built by build_train_mapper).
    _C.INPUT.SSD_AUGMENTATION.ENABLED = False
    # Photometric distortion: brightness delta (pixel values, official 32; 0 = off).
    _C.INPUT.SSD_AUGMENTATION.BRIGHTNESS_DELTA = 32.0
    # Photometric distortion: contrast factor range (official (0.5, 1.5)).
    _C.INPUT.SSD_AUGMENTATION.CONTRAST_RANGE = (0.5, 1.5)
    # Photometric distortion: saturation factor range (official (0.5, 1.5)).
    _C.INPUT.SSD_AUGMENTATION.SATURATION_RANGE = (0.5, 1.5)
    # Photometric distortion: hue delta in degrees (official 18).
    _C.INPUT.SSD_AUGMENTATION.HUE_DELTA = 18.0
    # Expand: probability (official 0.5; 0 = off); canvas filled with MODEL.PIXEL_MEAN.
    _C.INPUT.SSD_AUGMENTATION.EXPAND_PROB = 0.5
    # Expand: canvas side / image side, sampled uniformly (official (1, 4)).
    _C.INPUT.SSD_AUGMENTATION.EXPAND_RATIO_RANGE = (1.0, 4.0)
    # Min-IoU crop: IoU modes besides "no crop" and "any crop" (official (0.1, 0.3, 0.5, 0.7, 0.9)).
    _C.INPUT.SSD_AUGMENTATION.CROP_MIN_IOUS = (0.1, 0.3, 0.5, 0.7, 0.9)
    # Min-IoU crop: min crop side as a fraction of the image side (official 0.3).
    _C.INPUT.SSD_AUGMENTATION.CROP_MIN_SIZE = 0.3
    # Min-IoU crop: allowed crop h / w (official (0.5, 2)).
    _C.INPUT.SSD_AUGMENTATION.CROP_ASPECT_RANGE = (0.5, 2.0)
    # Min-IoU crop: trials per sampled mode before sampling a new mode (official 50).
    _C.INPUT.SSD_AUGMENTATION.CROP_MAX_TRIALS = 50
    # Final resize to (height, width), no keep-ratio (YOLACT (550, 550)).
    _C.INPUT.SSD_AUGMENTATION.SIZE = (550, 550)
    # Drop GT boxes with w <= this or h <= this, original pixels (YOLACT 4; 0 = keep all).
    _C.INPUT.SSD_AUGMENTATION.MIN_GT_SIZE = 0.0
    # Recompute each GT box as its mask's extent after the transforms (when masks are loaded).
    _C.INPUT.SSD_AUGMENTATION.RECOMPUTE_BOXES = True

    # YOLACT / RS-YOLACT (meta-arch "YOLACT", rsloss_d2/modeling/yolact/meta_arch.py).
    _C.MODEL.YOLACT = CN()
    # Number of foreground classes (no background).
    _C.MODEL.YOLACT.NUM_CLASSES = 80
    # FPN levels fed to the prediction head (P3-P7); the first one also feeds the protonet.
    _C.MODEL.YOLACT.IN_FEATURES = ["p3", "p4", "p5", "p6", "p7"]
    # Images are resized (bilinear, no keep-ratio) to this square side inside the model.
    _C.MODEL.YOLACT.INPUT_SIZE = 550
    # Anchor base sizes per level; anchor side = ANCHOR_SCALE * base size (official 3 * [8..128]).
    _C.MODEL.YOLACT.ANCHOR_BASE_SIZES = [8, 16, 32, 64, 128]
    # Octave base scale of the anchors (official 3).
    _C.MODEL.YOLACT.ANCHOR_SCALE = 3.0
    # Anchor aspect ratios h / w (official [0.5, 1, 2]).
    _C.MODEL.YOLACT.ASPECT_RATIOS = [0.5, 1.0, 2.0]
    # Box2BoxTransform weights (= 1 / mmdet stds [0.1, 0.1, 0.2, 0.2]).
    _C.MODEL.YOLACT.BBOX_REG_WEIGHTS = (10.0, 10.0, 5.0, 5.0)
    # MaxIoU assigner: negative below IOU_THRESHOLDS[0], positive from IOU_THRESHOLDS[1].
    _C.MODEL.YOLACT.IOU_THRESHOLDS = [0.4, 0.5]
    # Number of prototypes / mask coefficients per anchor (official 32).
    _C.MODEL.YOLACT.NUM_PROTOTYPES = 32
    # Channels of the shared head conv and of the protonet convs (official 256).
    _C.MODEL.YOLACT.CONV_DIM = 256
    # Norm after the shared head conv and the protonet 3x3 convs ("" official; "GN" from scratch).
    _C.MODEL.YOLACT.HEAD_NORM = ""
    # Loss: "softmax_ohem" (YOLACT: softmax CE + OHEM, SmoothL1, mask BCE, semantic head) or
    # "rank_sort" (RS-YOLACT: RS Loss, score-weighted GIoU and dice, value-based balancing).
    _C.MODEL.YOLACT.LOSS = "softmax_ohem"
    # YOLACT: negatives per positive kept by OHEM (official 3).
    _C.MODEL.YOLACT.NEG_POS_RATIO = 3
    # YOLACT: SmoothL1 beta / box loss weight / mask BCE weight / semantic loss weight.
    _C.MODEL.YOLACT.SMOOTH_L1_BETA = 1.0
    _C.MODEL.YOLACT.BOX_LOSS_WEIGHT = 1.5
    _C.MODEL.YOLACT.MASK_LOSS_WEIGHT = 6.125
    _C.MODEL.YOLACT.SEMANTIC_LOSS_WEIGHT = 1.0
    # YOLACT: semantic segmentation auxiliary head on P3 (training only; RS-YOLACT: False).
    _C.MODEL.YOLACT.SEMANTIC_HEAD = True
    # YOLACT: max positives per image whose masks are trained, drawn at random (official 100;
    # -1 = all, as RS-YOLACT).
    _C.MODEL.YOLACT.MAX_MASKS_TO_TRAIN = 100
    # Test: top anchors per level by max class score before NMS (official nms_pre 1000).
    _C.MODEL.YOLACT.TOPK_CANDIDATES_TEST = 1000
    # Test: Fast NMS candidates per class (official top_k 200).
    _C.MODEL.YOLACT.NMS_TOP_K = 200
    # Test: Fast NMS IoU threshold (keep IoU <= thr) and score threshold (keep score > thr).
    _C.MODEL.YOLACT.NMS_THRESH_TEST = 0.5
    _C.MODEL.YOLACT.SCORE_THRESH_TEST = 0.05
    # Test: detections per image (official 100) and mask binarisation threshold (0.5).
    _C.MODEL.YOLACT.DETECTIONS_PER_IMAGE = 100
    _C.MODEL.YOLACT.MASK_THRESH_TEST = 0.5

    # ---------------------------------------------------------------- SOLO / SOLOv2 / RS-SOLOv2
    # (meta-architecture "SOLOv2"; AdelaiDet's key names where they exist; configs/solov2/README.md)
    _C.MODEL.SOLOV2 = CN()
    # Number of foreground classes (sigmoid category outputs; COCO 80).
    _C.MODEL.SOLOV2.NUM_CLASSES = 80
    # Instance branch: "dynamic" (SOLOv2 kernels + mask features), "vanilla" (SOLO: S^2 mask
    # channels per level) or "decoupled" (Decoupled SOLO: S X-channels and S Y-channels).
    _C.MODEL.SOLOV2.INSTANCE_HEAD_TYPE = "dynamic"
    # FPN maps feeding the instance head; they become levels at strides [8, 8, 16, 32, 32].
    _C.MODEL.SOLOV2.INSTANCE_IN_FEATURES = ["p2", "p3", "p4", "p5", "p6"]
    # Numeric stride of each level (mask-area filter at test; SOLO's mask stride = half).
    _C.MODEL.SOLOV2.FPN_INSTANCE_STRIDES = [8, 8, 16, 32, 32]
    # Inclusive ranges of sqrt(w*h) of the GT box per level (light-448: (1,56),(28,112),...).
    _C.MODEL.SOLOV2.FPN_SCALE_RANGES = [[1, 96], [48, 192], [96, 384], [192, 768], [384, 2048]]
    # Centre-region scale sigma (0.2 in every official config).
    _C.MODEL.SOLOV2.SIGMA = 0.2
    # Grid numbers S per level.
    _C.MODEL.SOLOV2.NUM_GRIDS = [40, 36, 24, 16, 12]
    # Channels of the FPN maps fed to the instance head.
    _C.MODEL.SOLOV2.INSTANCE_IN_CHANNELS = 256
    # Tower channels of the category / instance branches (SOLOv2 512, light 256, SOLO 256).
    _C.MODEL.SOLOV2.INSTANCE_CHANNELS = 512
    # Convs per tower (SOLOv2 4, light 2, SOLO 7).
    _C.MODEL.SOLOV2.NUM_INSTANCE_CONVS = 4
    # Kernel weights per cell E (= NUM_MASKS; 256, light 128).
    _C.MODEL.SOLOV2.NUM_KERNELS = 256
    # Norm of the towers and the mask branch (GN(32) in the official heads).
    _C.MODEL.SOLOV2.NORM = "GN"
    # Append x/y coordinate channels to the instance-branch input.
    _C.MODEL.SOLOV2.USE_COORD_CONV = True
    # Prior probability of the category output bias.
    _C.MODEL.SOLOV2.PRIOR_PROB = 0.01
    # FPN maps of the unified mask-feature branch (P2..P5).
    _C.MODEL.SOLOV2.MASK_IN_FEATURES = ["p2", "p3", "p4", "p5"]
    # Input / inner channels of the mask-feature branch.
    _C.MODEL.SOLOV2.MASK_IN_CHANNELS = 256
    _C.MODEL.SOLOV2.MASK_CHANNELS = 128
    # Output channels E of the mask-feature branch (= NUM_KERNELS).
    _C.MODEL.SOLOV2.NUM_MASKS = 256
    # Cells covered by several GTs: "all" (official SOLOv2: last GT's label, every (GT, cell)
    # pair a positive mask), "last" (SOLO: last GT overwrites label and mask), "first"
    # (RS-SOLOv2: first GT wins).
    _C.MODEL.SOLOV2.CELL_ASSIGNMENT = "all"
    # Test: candidates kept before Matrix NMS (also bounds the mask memory of inference).
    _C.MODEL.SOLOV2.NMS_PRE = 500
    # Test: category probability threshold of candidates (RS-SOLOv2 0.2).
    _C.MODEL.SOLOV2.SCORE_THR = 0.1
    # Test: minimum Matrix-NMS-decayed score.
    _C.MODEL.SOLOV2.UPDATE_THR = 0.05
    # Test: mask probability threshold.
    _C.MODEL.SOLOV2.MASK_THR = 0.5
    # Test: detections per image.
    _C.MODEL.SOLOV2.MAX_PER_IMG = 100
    # Test: Matrix NMS kernel ("gaussian" or "linear") and its sigma.
    _C.MODEL.SOLOV2.NMS_KERNEL = "gaussian"
    _C.MODEL.SOLOV2.NMS_SIGMA = 2.0
    # Loss: "focal_dice" (SOLO / SOLOv2) or "rank_sort" (RS-SOLOv2: RS Loss with dice sorting
    # targets, score-weighted value-balanced dice; delta = MODEL.RANK_LOSS.RS_DELTA).
    _C.MODEL.SOLOV2.LOSS = "focal_dice"
    # Focal loss of the category branch (alpha, gamma, weight; focal_dice only).
    _C.MODEL.SOLOV2.FOCAL_ALPHA = 0.25
    _C.MODEL.SOLOV2.FOCAL_GAMMA = 2.0
    _C.MODEL.SOLOV2.FOCAL_WEIGHT = 1.0
    # Weight of the dice loss (focal_dice only; RS-SOLOv2 balances it by value instead).
    _C.MODEL.SOLOV2.DICE_WEIGHT = 3.0

    for old, new in RENAMED_KEYS.items():
        if not cfg.key_is_renamed(old):  # add_rsloss_config may run twice on one cfg
            cfg.register_renamed_key(old, *((new,) if isinstance(new, str) else new))
