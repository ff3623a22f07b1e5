"""Standard ROI heads with the activation box predictor of GOL (``GOLROIHeads``).

GOL (Alexandridis et al., ECCV 2022) and its official configs. Detectron2's
``StandardROIHeads`` (512-RoI sampler, box trunk, mask branch) whose box predictor is
:class:`ActivationFastRCNNOutputLayers` (``MODEL.GOL.LOSS``: softmax / sigmoid / Gumbel /
DropLoss / EQL, normed classifier). The GOL mask predictor is a mask head of its own
(``ROI_MASK_HEAD.NAME: NormedMaskRCNNConvUpsampleHead``).

Initialisation quirk kept (``MODEL.GOL.TORCH_DEFAULT_FC_INIT``, default True): every official
GOL / activation config gives ``fc_cls`` an ``init_cfg``, which makes mmdet skip its default
head init, so the shared fcs and ``fc_reg`` keep **PyTorch's nn.Linear default** (uniform
±1/√fan_in, weight and bias) instead of Xavier / N(0, 0.001²). The EQL-sigmoid configs have no
``init_cfg``: set the key False there (Detectron2's c2 Xavier / N(0, 0.001²) init, close to
mmdet's default).
"""
from detectron2.modeling.roi_heads.roi_heads import ROI_HEADS_REGISTRY, StandardROIHeads
from torch import nn

from .activation_fast_rcnn import ActivationFastRCNNOutputLayers

__all__ = ["GOLROIHeads"]


@ROI_HEADS_REGISTRY.register()
class GOLROIHeads(StandardROIHeads):
    """``StandardROIHeads`` with :class:`ActivationFastRCNNOutputLayers` as box predictor.

    Losses: ``loss_cls``, ``loss_box_reg`` (+ ``loss_mask``). Logged: Detectron2's
    ``fast_rcnn/*`` statistics, plus ``fast_rcnn/drop_tail_ratio`` for DropLoss (the tail
    fraction of the foreground RoIs; −1 when the batch has none).
    """

    @classmethod
    def _init_box_head(cls, cfg, input_shape):
        ret = super()._init_box_head(cfg, input_shape)
        predictor = ActivationFastRCNNOutputLayers(cfg, ret["box_head"].output_shape)
        if cfg.MODEL.GOL.TORCH_DEFAULT_FC_INIT:
            for m in list(ret["box_head"].modules()) + [predictor.bbox_pred]:
                if type(m) is nn.Linear:  # shared fcs and bbox_pred, not the classifier
                    m.reset_parameters()
        ret["box_predictor"] = predictor
        return ret
