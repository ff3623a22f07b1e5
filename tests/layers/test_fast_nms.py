"""Fast NMS (YOLACT Sec. 3.4, mmdet ``fast_nms``) against a straightforward per-class loop."""
import torch

from rsloss_d2.layers import fast_nms


def _iou(a, b):
    """IoU of two XYXY boxes (plain Python floats, union clamped at 1e-6 like mmdet)."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / max(union, 1e-6)


def reference_fast_nms(boxes, scores, score_thr, iou_thr, top_k, max_num=-1):
    """Written from the paper / mmdet: per class, the top_k candidates by score; candidate j is
    kept iff IoU(j, i) <= iou_thr for every candidate i ranked above j (suppressed or not) and
    its score > score_thr; then all kept (row, class) pairs by descending score, max_num."""
    b = boxes.tolist()
    s = scores.tolist()
    kept = []
    for c in range(scores.shape[1]):
        rows = sorted(range(len(b)), key=lambda r: -s[r][c])[:top_k]
        for pos, j in enumerate(rows):
            if s[j][c] <= score_thr:
                continue
            if all(_iou(b[i], b[j]) <= iou_thr for i in rows[:pos]):
                kept.append((s[j][c], c, j))
    kept.sort(key=lambda t: -t[0])
    if max_num > 0:
        kept = kept[:max_num]
    return kept


def _random_case(gen, n, c):
    xy = torch.rand(n, 2, generator=gen) * 80
    wh = torch.rand(n, 2, generator=gen) * 30 + 2
    # clusters of overlapping boxes: duplicate some with jitter
    boxes = torch.cat([xy, xy + wh], 1)
    half = n // 2
    if half:
        dup = torch.randint(0, half, (n - half,), generator=gen)
        boxes[half:] = boxes[dup] + torch.randn(n - half, 4, generator=gen)
    boxes[:, 2:] = torch.max(boxes[:, 2:], boxes[:, :2] + 0.5)
    scores = torch.rand(n, c, generator=gen)  # distinct almost surely: no tie ambiguity
    return boxes, scores


def test_fast_nms_equals_reference_on_random_cases():
    gen = torch.Generator().manual_seed(0)
    for n, c, top_k, max_num, iou_thr, score_thr in [
        (40, 5, 200, -1, 0.5, 0.05), (60, 3, 10, -1, 0.5, 0.05), (60, 4, 200, 7, 0.3, 0.2),
        (1, 2, 200, -1, 0.5, 0.05), (30, 1, 5, 3, 0.7, 0.0), (80, 6, 25, 50, 0.45, 0.5),
    ]:
        boxes, scores = _random_case(gen, n, c)
        out_boxes, out_scores, out_classes, out_rows = fast_nms(
            boxes, scores, score_thr, iou_thr, top_k, max_num)
        ref = reference_fast_nms(boxes, scores, score_thr, iou_thr, top_k, max_num)
        assert len(ref) > 0
        assert out_scores.tolist() == [t[0] for t in ref]
        assert out_classes.tolist() == [t[1] for t in ref]
        assert out_rows.tolist() == [t[2] for t in ref]
        assert torch.equal(out_boxes, boxes[out_rows])
        assert out_classes.dtype == torch.int64 and out_rows.dtype == torch.int64


def test_suppressed_boxes_still_suppress():
    # A > B > C in score; IoU(A, B) > thr, IoU(B, C) > thr, IoU(A, C) = 0.
    # Traditional NMS keeps A and C; Fast NMS keeps only A (B, though suppressed, suppresses C).
    # IoU(A, B) = IoU(B, C) = 7/13 > 0.5, IoU(A, C) = 4/16
    boxes = torch.tensor([[0.0, 0, 10, 10], [3, 0, 13, 10], [6, 0, 16, 10]])
    scores = torch.tensor([[0.9], [0.8], [0.7]])
    _, s, c, rows = fast_nms(boxes, scores, 0.05, 0.5, 200)
    assert rows.tolist() == [0] and c.tolist() == [0]
    assert torch.allclose(s, torch.tensor([0.9]))
    # equality at the threshold is kept (IoU <= thr), score equal to the threshold is not (>)
    _, _, _, rows = fast_nms(boxes, scores, 0.05, 7 / 13, 200)
    assert rows.tolist() == [0, 1, 2]
    _, _, _, rows = fast_nms(boxes, scores, 0.8, 1.0, 200)
    assert rows.tolist() == [0]


def test_classes_are_independent_and_share_boxes():
    boxes = torch.tensor([[0.0, 0, 10, 10], [1, 1, 11, 11]])
    scores = torch.tensor([[0.9, 0.3], [0.8, 0.6]])
    b, s, c, rows = fast_nms(boxes, scores, 0.05, 0.5, 200)
    # class 0 keeps row 0 only; class 1 keeps row 1 only (row 0 ranks below it there)
    assert list(zip(rows.tolist(), c.tolist())) == [(0, 0), (1, 1)]
    assert torch.allclose(s, torch.tensor([0.9, 0.6]))
    assert torch.equal(b, boxes[[0, 1]])


def test_empty_input_gives_four_empty_tensors():
    for n, c in [(0, 3), (0, 0), (4, 0)]:
        out = fast_nms(torch.zeros(n, 4), torch.zeros(n, c), 0.05, 0.5, 200, 100)
        assert [tuple(t.shape) for t in out] == [(0, 4), (0,), (0,), (0,)]
        assert out[2].dtype == torch.int64 and out[3].dtype == torch.int64
    # nothing above the score threshold
    out = fast_nms(torch.tensor([[0.0, 0, 1, 1]]), torch.tensor([[0.01]]), 0.05, 0.5, 200)
    assert [tuple(t.shape) for t in out] == [(0, 4), (0,), (0,), (0,)]
