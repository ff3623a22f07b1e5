"""Matrix NMS (rsloss_d2.layers.matrix_nms) against a per-pair reference from the paper's formula."""
import math

import pytest
import torch

from rsloss_d2.layers import matrix_nms


def reference_matrix_nms(masks, labels, scores, kernel="gaussian", sigma=2.0):
    """SOLOv2 paper Eq. 4, per pair: decay_j = min over higher-scored masks i of the same class of
    f(iou_ij) / f(comp_i), comp_i = max IoU of i with a higher-scored same-class mask (0 if none),
    and at most 1; f(x) = exp(-sigma x^2) (official code's sigma placement) or 1 - x."""
    n = len(scores)
    m = [masks[i].reshape(-1).bool().tolist() for i in range(n)]
    lab = labels.tolist()

    def iou(a, b):
        inter = sum(1 for x, y in zip(m[a], m[b]) if x and y)
        union = sum(m[a]) + sum(m[b]) - inter
        return inter / union if union > 0 else 0.0

    def f(x):
        return math.exp(-sigma * x * x) if kernel == "gaussian" else 1.0 - x

    comp = [max([iou(k, i) for k in range(i) if lab[k] == lab[i]], default=0.0) for i in range(n)]
    out = []
    for j in range(n):
        decay = 1.0
        for i in range(j):
            if lab[i] == lab[j]:
                decay = min(decay, f(iou(i, j)) / f(comp[i]))
        out.append(float(scores[j]) * decay)
    return torch.tensor(out, dtype=torch.float64)


def random_case(n, size=12, num_classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    masks = torch.zeros(n, size, size, dtype=torch.bool)
    for k in range(n):  # overlapping rectangles, so many pairs have 0 < IoU < 1
        y, x = torch.randint(0, size // 2, (2,), generator=g).tolist()
        h, w = torch.randint(2, size // 2 + 2, (2,), generator=g).tolist()
        masks[k, y:y + h, x:x + w] = True
    labels = torch.randint(0, num_classes, (n,), generator=g)
    scores = torch.rand(n, generator=g).sort(descending=True).values
    return masks, labels, scores


@pytest.mark.parametrize("kernel", ["gaussian", "linear"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_reference(kernel, seed):
    masks, labels, scores = random_case(25, seed=seed)
    out = matrix_nms(masks, labels, scores, kernel=kernel, sigma=2.0)
    ref = reference_matrix_nms(masks, labels, scores, kernel=kernel, sigma=2.0)
    assert out.shape == scores.shape and out.dtype == scores.dtype
    assert torch.allclose(out.double(), ref, atol=1e-6)
    assert (out <= scores + 1e-7).all()
    # at least some scores were decayed (the case is not trivial)
    assert (out < scores - 1e-3).sum() >= 3


def test_sigma_and_float_masks():
    masks, labels, scores = random_case(15, seed=5)
    ref = reference_matrix_nms(masks, labels, scores, sigma=0.5)
    out = matrix_nms(masks.float(), labels, scores, sigma=0.5)
    assert torch.allclose(out.double(), ref, atol=1e-6)


def test_closed_form_pair():
    masks = torch.zeros(3, 4, 4, dtype=torch.bool)
    masks[0, :, :2] = True  # 8 px
    masks[1, :, :3] = True  # 12 px, IoU with 0 = 8/12
    masks[2, :, 2:] = True  # other class
    labels = torch.tensor([0, 0, 1])
    scores = torch.tensor([0.9, 0.8, 0.7])
    out = matrix_nms(masks, labels, scores)
    assert torch.allclose(out, torch.tensor([0.9, 0.8 * math.exp(-2 * (8 / 12) ** 2), 0.7]))
    lin = matrix_nms(masks, labels, scores, kernel="linear")
    assert torch.allclose(lin, torch.tensor([0.9, 0.8 * (1 - 8 / 12), 0.7]))


def test_empty_and_degenerate():
    out = matrix_nms(torch.zeros(0, 5, 5), torch.zeros(0, dtype=torch.int64), torch.zeros(0))
    assert out.shape == (0,)
    # empty masks and identical masks under the linear kernel: finite (official gives NaN)
    masks = torch.zeros(4, 3, 3, dtype=torch.bool)
    masks[2:, 1:, 1:] = True
    masks = torch.cat([masks, masks[2:3]])
    labels = torch.zeros(5, dtype=torch.int64)
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5])
    for kernel in ("gaussian", "linear"):
        out = matrix_nms(masks, labels, scores, kernel=kernel)
        assert torch.isfinite(out).all()
        assert torch.allclose(out[:3], scores[:3])  # empty masks overlap nothing
    assert matrix_nms(masks, labels, scores, kernel="linear")[3:].abs().max() == 0
    with pytest.raises(ValueError):
        matrix_nms(masks, labels, scores, kernel="box")
