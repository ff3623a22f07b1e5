"""PAA against scikit-learn itself (the official implementation fits one ``GaussianMixture`` per
ground truth): the batched EM gives sklearn's labels, log-densities and iteration counts, and
``paa_reassign`` sklearn's selections."""
import warnings

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture

from _matcher_refs import paa_reference, random_paa_case
from rsloss_d2.modeling.matchers import gmm2_em_1d, paa_reassign


def sklearn_fit(x, reg_covar=1e-5):
    """The official fit (RS-PAA ``paa_reassign``): returns (predict, score_samples, n_iter_)."""
    x = np.asarray(x).reshape(-1, 1)
    gmm = GaussianMixture(2, covariance_type="diag", reg_covar=reg_covar,
                          means_init=np.array([x.min(), x.max()]).reshape(2, 1),
                          weights_init=np.array([0.5, 0.5]),
                          precisions_init=np.array([1.0, 1.0]).reshape(2, 1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        gmm.fit(x)
    return gmm.predict(x), gmm.score_samples(x), gmm.n_iter_


def test_batched_em_equals_sklearn():
    gen = torch.Generator().manual_seed(3)
    sizes = torch.randint(2, 46, (40,), generator=gen)
    sizes[:2] = 2
    x = torch.zeros((40, 45), dtype=torch.float64)
    for r, n in enumerate(sizes.tolist()):
        low = 0.2 + 0.4 * torch.rand(n, generator=gen)
        v = torch.where(torch.rand(n, generator=gen) < 0.4, low,
                        0.9 + 2.0 * torch.rand(n, generator=gen)).double()
        if r % 5 == 4:
            v = (v * 4).round() / 4
        x[r, :n] = v.sort().values
    valid = torch.arange(45)[None, :] < sizes[:, None]
    for reg in (1e-5, 1e-6):
        labels, dens, n_iter = gmm2_em_1d(x, valid, reg_covar=reg)
        for r, n in enumerate(sizes.tolist()):
            sk_labels, sk_dens, sk_iter = sklearn_fit(x[r, :n].numpy(), reg)
            assert labels[r, :n].tolist() == sk_labels.tolist(), (reg, r)
            np.testing.assert_allclose(dens[r, :n].numpy(), sk_dens, rtol=1e-10, atol=1e-10)
            assert int(n_iter[r]) == sk_iter, (reg, r)


def test_paa_reassign_equals_sklearn_selection():
    gen = torch.Generator().manual_seed(4)
    fit = lambda v: sklearn_fit(v)[:2]  # noqa: E731
    for num_gts, rounding in ((25, None), (12, 0.1)):
        costs, gts, lvls = random_paa_case(gen, num_gts, rounding=rounding)
        keep = paa_reassign(costs, gts, lvls, num_gts)
        assert torch.equal(keep, paa_reference(costs, gts, lvls, num_gts, fit=fit))
        assert keep.sum() > 10
