"""Pure-PyTorch losses (no Detectron2 imports).

Ranking-based losses with the official identity-update gradients, computed without the official
per-positive loop (see ``_step_sums.py`` for the algorithm):

* :func:`rank_sort_loss` — Rank & Sort Loss (``rank_sort.py``),
* :func:`alrp_loss` and :class:`ALRPSelfBalance` — aLRP Loss and its self-balance (``alrp.py``),
* :func:`ap_loss` — AP Loss (``ap.py``),

and the glue the detection heads need (``utils.py``): :func:`vectorize_labels`,
:func:`positive_score_weights`, :func:`score_weighted_mean`, :func:`value_balanced` (λ: :func:`balancing_lambda`).
``dice.py``: the per-instance dice loss of SOLO / SOLOv2 (:func:`dice_loss`, :func:`dice_coefficient`).
Long-tail classification (GOL): :func:`gumbel_activation`, :func:`gumbel_cross_entropy`
(``gumbel.py``), :func:`drop_loss`, :func:`eql_loss`, :func:`tail_class_mask` (``drop_loss.py``).
On the CPU the three ranking losses run as one compiled C call each (``compiled.py``,
``csrc/ranking_losses.c``; ``compiled.set_implementation`` / ``MODEL.RANK_LOSS.IMPLEMENTATION``
choose the path), elsewhere as the batched PyTorch operations above.
``reference.py`` holds the slow per-positive loops used by the tests and the benchmark;
``op_count.py`` counts the operations and host reads of a call and ``synthetic.py`` draws seeded
inputs (tests and benchmark).
"""
from .alrp import ALRPSelfBalance, alrp_loss
from .ap import ap_loss
from .drop_loss import drop_loss, drop_loss_weights, eql_loss, tail_class_mask
from .gumbel import gumbel_activation, gumbel_binary_cross_entropy, gumbel_cross_entropy
from .dice import dice_coefficient, dice_loss
from .rank_sort import rank_sort_loss
from .utils import (
    balancing_lambda,
    positive_score_weights,
    score_weighted_mean,
    value_balanced,
    vectorize_labels,
)

__all__ = [
    "rank_sort_loss",
    "alrp_loss",
    "ap_loss",
    "ALRPSelfBalance",
    "vectorize_labels",
    "positive_score_weights",
    "score_weighted_mean",
    "value_balanced",
    "balancing_lambda",
    "gumbel_activation",
    "gumbel_binary_cross_entropy",
    "gumbel_cross_entropy",
    "drop_loss",
    "drop_loss_weights",
    "eql_loss",
    "tail_class_mask",
    "dice_coefficient",
    "dice_loss",
]
