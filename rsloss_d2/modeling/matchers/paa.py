"""Probabilistic anchor assignment (Kim & Lee, "Probabilistic Anchor Assignment with IoU Prediction
for Object Detection", ECCV 2020, §3.1 and Fig. 3(c)) as RS-PAA's ``paa_reassign`` (mmdet's
``mmdet/models/dense_heads/paa_head.py``), with the per-object scikit-learn fit replaced by one
batched EM in PyTorch.

For every ground truth g, from its initial positives:
  1. on each FPN level the ``min(topk, n)`` of lowest cost are its candidates; fewer than 2
     candidates in total -> g gets no positive (sklearn cannot fit 2 components: official fallback);
  2. a two-component 1-D Gaussian mixture is fitted to the candidates' costs exactly as
     ``sklearn.mixture.GaussianMixture(2, covariance_type='diag', reg_covar=1e-5,
     means_init=[min, max], weights_init=[.5, .5], precisions_init=1)`` does
     (max_iter 100, tol 1e-3, n_init 1; see :func:`gmm2_em_1d`);
  3. among the candidates labelled 0 (the component started at the minimum cost), in ascending
     cost order, the first ones up to and including the one of highest mixture log-density are
     kept (none if no candidate has label 0).

All ground truths of the batch are fitted together on padded (G, K) tensors; each stops on its
own, at the iteration at which its own sklearn fit would stop. Tie conventions (the official code
leaves them to ``torch.topk`` / an unstable sort): equal costs at a level's k-th place -> the
candidate earlier in the input; several label-0 candidates of equal highest log-density (equal
costs) -> all candidates of that cost are kept.
"""
import math
from typing import Tuple

import torch

__all__ = ["paa_reassign", "gmm2_em_1d"]

_LOG_2PI = math.log(2 * math.pi)


def _weighted_log_prob(x, means, prec_chol, weights):
    """log(w_c) + log N(x | μ_c, 1/prec_c) for x (G, K) and (G, 2) parameters -> (G, K, 2).

    Same operation order as sklearn's ``_estimate_log_gaussian_prob`` (diag): the quadratic form
    expanded as μ²p − 2xμp + x²p, plus log det of the precision Cholesky factor."""
    prec = prec_chol ** 2
    mp = (means * prec)[:, None, :]
    quad = ((means ** 2 * prec)[:, None, :] - 2.0 * (x[..., None] * mp)
            + (x * x)[..., None] * prec[:, None, :])
    log_det, log_w = torch.log(prec_chol)[:, None, :], torch.log(weights)[:, None, :]
    return -0.5 * (_LOG_2PI + quad) + log_det + log_w


def _logsumexp2(w):
    """sklearn's ``_logsumexp`` over the last axis of size 2: max + log1p(exp(min − max))."""
    hi = torch.maximum(w[..., 0], w[..., 1])
    lo = torch.minimum(w[..., 0], w[..., 1])
    return torch.where(hi == lo, hi + math.log(2.0), hi + torch.log1p(torch.exp(lo - hi)))


def gmm2_em_1d(x: torch.Tensor, valid: torch.Tensor, reg_covar: float = 1e-5,
               max_iter: int = 100, tol: float = 1e-3, check_every: int = 5
               ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fit one two-component 1-D Gaussian mixture per row, all rows at once, by sklearn's EM.

    Per row: means (min, max) of its valid samples, weights (½, ½), precisions 1; each iteration
    an E-step (responsibilities and the lower bound = mean log-likelihood under the current
    parameters), then an M-step (n_k = Σ resp + 10·eps, μ_k, σ²_k = E[x²] − μ_k² + reg_covar,
    w_k = n_k / Σ n_k); the row stops once |Δ lower bound| < tol (its parameters of that M-step
    are kept) or after ``max_iter`` iterations; a final E-step gives ``predict`` and
    ``score_samples``.

    A row that has converged is frozen (its parameters and iteration count stay those of the
    iteration at which it converged, exactly as if it had left the computation); the host looks
    at which rows are still iterating only every ``check_every`` iterations (one host read each),
    to drop the converged rows from the working set and to stop once none is left. The result
    does not depend on ``check_every``.

    Args:
        x: (G, K) samples (any float dtype; computed in float64, as sklearn).
        valid: (G, K) bool, which entries of each row are samples; every row fitted needs >= 2
            (rows with fewer are left out and get label 0, log-density -inf).
        check_every: iterations between two host reads (>= 1).
    Returns:
        labels (G, K) int64 (argmax posterior, ties -> 0), log_density (G, K) float64 (mixture
        log-density of each sample; -inf at invalid entries), n_iter (G,) int64 (EM iterations).
    """
    if check_every < 1:
        raise ValueError(f"check_every must be >= 1, got {check_every}")
    x = torch.where(valid, x.to(torch.float64), 0.0)
    valid_f = valid.to(torch.float64)
    n = valid_f.sum(1)
    fit = n >= 2
    g = x.shape[0]
    means = torch.stack([torch.where(valid, x, math.inf).amin(1),
                         torch.where(valid, x, -math.inf).amax(1)], 1)
    means = torch.where(fit[:, None], means, 0.0)
    weights = torch.full((g, 2), 0.5, dtype=torch.float64, device=x.device)
    prec_chol = torch.ones((g, 2), dtype=torch.float64, device=x.device)
    lower_bound = torch.full((g,), -math.inf, dtype=torch.float64, device=x.device)
    n_iter = torch.zeros((g,), dtype=torch.long, device=x.device)
    eps10 = 10 * torch.finfo(torch.float64).eps
    # The working set `rows` starts as all rows (rows not fitted are frozen from the start) and
    # sheds the converged ones at every host check: the work is about Σ_g n_iter(g) plus at most
    # check_every − 1 frozen iterations per row, not G · max_g n_iter(g).
    rows = torch.arange(g, device=x.device)
    active = fit  # (R,) over `rows`: still iterating
    for it in range(max_iter):
        if it % check_every == 0 and it > 0:
            rows = rows[active]  # one host read per check_every iterations (nonzero)
            if rows.numel() == 0:
                break
            active = torch.ones_like(rows, dtype=torch.bool)
        xa, va = x[rows], valid_f[rows]
        means_a, prec_a, weights_a = means[rows], prec_chol[rows], weights[rows]
        weighted = _weighted_log_prob(xa, means_a, prec_a, weights_a)
        log_norm = _logsumexp2(weighted)
        new_bound = (log_norm * va).sum(1) / n[rows]
        resp = torch.exp(weighted - log_norm[..., None]) * va[..., None]
        nk = resp.sum(1) + eps10
        new_means = (resp * xa[..., None]).sum(1) / nk
        covar = (resp * (xa * xa)[..., None]).sum(1) / nk - new_means ** 2 + reg_covar
        # sklearn raises on covar <= 0 (cannot happen with reg_covar > 0 and sane costs);
        # the clamp only keeps a pathological row finite.
        # Frozen rows (converged, or not fitted) keep their values: torch.where, not a mask
        # (their new values may be NaN, e.g. 0 / 0 for a row without samples; never selected).
        upd = active[:, None]
        means[rows] = torch.where(upd, new_means, means_a)
        prec_chol[rows] = torch.where(upd, 1.0 / covar.clamp(min=1e-300).sqrt(), prec_a)
        weights[rows] = torch.where(upd, nk / nk.sum(1, keepdim=True), weights_a)
        old_bound = lower_bound[rows]
        converged = (new_bound - old_bound).abs() < tol
        lower_bound[rows] = torch.where(active, new_bound, old_bound)
        n_iter[rows] += active
        active = active & ~converged
    weighted = _weighted_log_prob(x, means, prec_chol, weights)
    labels = (weighted[..., 1] > weighted[..., 0]).long()
    log_density = torch.where(valid & fit[:, None], _logsumexp2(weighted), -math.inf)
    return labels, log_density, n_iter


def paa_reassign(costs: torch.Tensor, gt_inds: torch.Tensor, levels: torch.Tensor, num_gts: int,
                 topk: int = 9, reg_covar: float = 1e-5) -> torch.BoolTensor:
    """Which initial positives PAA keeps as positives (see the module docstring).

    Args:
        costs: (M,) cost of every initial positive (focal + GIoU; used without gradient).
        gt_inds: (M,) int64 ground-truth index in [0, num_gts), unique over the whole batch.
        levels: (M,) int64 FPN level of each initial positive.
        num_gts: number of ground truths G of the batch.
        topk: candidates per level and ground truth (9).
        reg_covar: added to the variances (RS-PAA 1e-5; mmdet's ``paa_head`` uses 1e-6).
    Returns:
        (M,) bool: True for the initial positives kept as positives; all others become negatives.
    """
    m = costs.numel()
    keep = torch.zeros(m, dtype=torch.bool, device=costs.device)
    if m == 0 or num_gts == 0:
        return keep
    costs = costs.detach().reshape(-1)
    gt_inds = gt_inds.reshape(-1).long()
    levels = levels.reshape(-1).long()
    pos = torch.arange(m, device=costs.device)
    # Unique integer sort keys: the cost's rank (ties: input order) under (GT, level) or GT.
    rank = torch.empty_like(pos)
    rank[torch.argsort(costs, stable=True)] = pos
    group = gt_inds * (levels.max() + 1) + levels  # (GT, level) id, no host read

    # 1. Per (GT, level) rank by cost; keep rank < topk.
    order = torch.argsort(group * m + rank)
    g_s = group[order]
    new_group = torch.ones(m, dtype=torch.bool, device=costs.device)
    new_group[1:] = g_s[1:] != g_s[:-1]
    group_start = torch.where(new_group, pos, 0).cummax(0).values
    in_topk = torch.zeros_like(keep)
    in_topk[order] = (pos - group_start) < topk

    # 2. Candidates of each GT in ascending cost, padded to (G, K). Both sizes (number of
    # candidates, K = most candidates of a GT) come from one host read; the counts by
    # index_add_ (torch.bincount reads its maximum on CUDA) and the candidates by nonzero_static
    # (no read of its own once the size is a host int).
    counts = torch.zeros(num_gts, dtype=torch.long, device=costs.device)
    counts.index_add_(0, gt_inds, in_topk.long())  # (G,) candidates per GT
    num_cand, k = torch.stack([counts.sum(), counts.max()]).tolist()  # the one host read
    cand = torch.nonzero_static(in_topk, size=num_cand).squeeze(1)
    cand = cand[torch.argsort(gt_inds[cand] * m + rank[cand])]
    c_cost, c_gt = costs[cand], gt_inds[cand]
    slot = torch.arange(num_cand, device=costs.device) - (counts.cumsum(0) - counts)[c_gt]
    x = costs.new_zeros((num_gts, k), dtype=torch.float64)
    x[c_gt, slot] = c_cost.to(torch.float64)
    # GT g's candidates fill slots 0 .. counts[g] − 1 (no boolean scatter)
    valid = torch.arange(k, device=costs.device)[None, :] < counts[:, None]

    # 3. Batched GMM fit; rows with < 2 candidates are not fitted and keep nothing.
    labels, log_density, _ = gmm2_em_1d(x, valid, reg_covar=reg_covar)
    fg = valid & (labels == 0) & (counts >= 2)[:, None]
    best = torch.where(fg, log_density, -math.inf).argmax(1)  # first of the highest (lowest cost)
    thr_cost = x.gather(1, best[:, None])
    kept = fg & (x <= thr_cost)
    keep[cand] = kept[c_gt, slot]
    return keep
