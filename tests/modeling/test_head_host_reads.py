"""Host reads of the RS-SOLOv2 / RS-YOLACT / RS-RPN training losses (CPU stand-in for the CUDA
count of ``tools/diagnostics/count_host_syncs.py``).

A ``TorchFunctionMode`` records every call that synchronises the host on CUDA (``nonzero``,
``tolist`` / ``item`` / ``int()`` ..., boolean-mask indexing with a tensor value, ``bincount``,
``repeat_interleave`` without ``output_size``, host data placed on a device with ``torch.tensor``
/ ``new_tensor``), attributed to the innermost ``rsloss_d2`` frame. The values are compared
bitwise with the former code (each transcribed here as a reference).
"""
import collections
import sys

import pytest
import torch
from detectron2.structures import BitMasks, Boxes, Instances
from detectron2.utils.events import EventStorage
from torch.overrides import TorchFunctionMode

from rsloss_d2.modeling.solov2.losses import (
    flatten_cate_logits,
    positive_mask_dice,
    rs_solo_losses,
    solo_focal_dice_losses,
)
from rsloss_d2.modeling.solov2.mask_branch import dynamic_mask_logits
from rsloss_d2.modeling.solov2.targets import (
    build_solo_targets,
    level_cells,
    mask_centers,
    padded_gt_masks,
)
from rsloss_d2.modeling.yolact.masks import assemble_masks_batched, boxes_to_mask_frame
from rsloss_d2.modeling.yolact.targets import prepare_targets

GRIDS = [10, 8, 6, 4, 3]
RANGES = [(1, 24), (12, 48), (24, 96), (48, 192), (96, 512)]
STRIDES = [4, 4, 8, 16, 16]
PADDED = (96, 128)

_READS = {"nonzero", "argwhere", "tolist", "item", "__bool__", "__int__", "__float__",
          "__index__", "bincount", "unique", "masked_select", "cpu", "numpy"}


def _is_bool_tensor(x):
    return torch.is_tensor(x) and x.dtype == torch.bool


class HostReads(TorchFunctionMode):
    """Counter {(file, line, op): n} of the would-be CUDA syncs, by innermost rsloss_d2 frame."""

    def __init__(self):
        super().__init__()
        self.sites = collections.Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", str(func))
        if self._syncs(name, args, kwargs):
            frame = sys._getframe(1)
            while frame is not None and "rsloss_d2" not in frame.f_code.co_filename:
                frame = frame.f_back
            if frame is not None:
                path = frame.f_code.co_filename.split("rsloss_d2/", 1)[-1]
                self.sites[(path, frame.f_lineno, name)] += 1
        return func(*args, **kwargs)

    @staticmethod
    def _syncs(name, args, kwargs):
        if name in _READS:
            return True
        if name == "new_tensor" or (name in ("tensor", "as_tensor") and "device" in kwargs):
            return True  # host data copied to the tensor's device
        if name == "repeat_interleave":
            return torch.is_tensor(args[1] if len(args) > 1 else kwargs.get("repeats")) and \
                kwargs.get("output_size") is None
        if name in ("__getitem__", "__setitem__"):
            index = args[1] if isinstance(args[1], tuple) else (args[1],)
            if not any(_is_bool_tensor(i) for i in index):
                return False
            # ``x[mask] = scalar`` is a masked_fill_ (no sync); any other bool indexing is not
            return not (name == "__setitem__" and len(index) == 1 and (
                isinstance(args[2], (int, float)) or (torch.is_tensor(args[2])
                                                      and args[2].dim() == 0)))
        return False

    def count(self, part):
        """Recorded calls in the files whose path (from rsloss_d2/ on) contains ``part``."""
        return sum(n for (path, _, _), n in self.sites.items() if part in path)


def _rect(h, w, y0, y1, x0, x1):
    m = torch.zeros(h, w, dtype=torch.bool)
    m[y0:y1, x0:x1] = True
    return m


def _solo_batch(seed):
    """Three images (one without objects), overlapping rectangles, some empty masks."""
    g = torch.Generator().manual_seed(seed)
    batch = []
    for i in range(3):
        h, w = (PADDED[0] - 16 * i, PADDED[1])
        n = 0 if i == 2 else 9
        boxes, masks = [], []
        for _ in range(n):
            y0 = int(torch.randint(0, h - 8, (1,), generator=g))
            x0 = int(torch.randint(0, w - 8, (1,), generator=g))
            hh = int(torch.randint(4, h - y0 + 1, (1,), generator=g))
            ww = int(torch.randint(4, w - x0 + 1, (1,), generator=g))
            m = _rect(h, w, y0, y0 + hh, x0, x0 + ww)
            if torch.rand((), generator=g) < 0.15:
                m[:] = False
            boxes.append([x0, y0, x0 + ww, y0 + hh])
            masks.append(m)
        inst = Instances((h, w))
        inst.gt_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
        inst.gt_classes = torch.randint(0, 7, (n,), generator=g)
        inst.gt_masks = BitMasks(torch.stack(masks) if n else torch.zeros(0, h, w, dtype=bool))
        batch.append(inst)
    return batch


def _former_targets(instances, mode, num_classes=7):
    """The former build_solo_targets (one nonzero per level, boolean-mask label assignment)."""
    masks, boxes, classes, image = padded_gt_masks(instances, PADDED, "cpu")
    c_y, c_x, area = mask_centers(masks)
    box_w, box_h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    scale = torch.sqrt((box_w * box_h).clamp(min=0).to(torch.float64))
    sizes = [s * s for s in GRIDS]
    total = sum(sizes)
    entry_gt, entry_key, entry_level = [], [], []
    for level, (s, (lo, hi)) in enumerate(zip(GRIDS, RANGES)):
        in_range = (scale >= lo) & (scale <= hi) & (area > 0)
        cells, valid = level_cells(c_y, c_x, box_w, box_h, s, 0.2, PADDED)
        gt_idx, slot = (valid & in_range[:, None]).nonzero(as_tuple=True)
        entry_gt.append(gt_idx)
        entry_key.append(image[gt_idx] * total + sum(sizes[:level]) + cells[gt_idx, slot])
        entry_level.append(torch.full_like(gt_idx, level))
    entry_gt, entry_key = torch.cat(entry_gt), torch.cat(entry_key)
    k, n = masks.shape[0], len(instances) * total
    owner = torch.full((n,), k if mode == "first" else -1, dtype=torch.int64)
    owner.scatter_reduce_(0, entry_key, entry_gt, reduce="amin" if mode == "first" else "amax")
    assigned = owner < k if mode == "first" else owner >= 0
    labels = torch.full((n,), num_classes, dtype=torch.int64)
    labels[assigned] = classes[owner[assigned]]
    if mode == "all":
        pos_gt, pos_key, pos_level = entry_gt, entry_key, torch.cat(entry_level)
    else:
        pos_key = assigned.nonzero().squeeze(1)
        pos_gt = owner[pos_key]
        level_of_cell = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
        pos_level = level_of_cell[pos_key % total]
    return dict(labels=labels.view(-1, total), pos_image=pos_key // total,
                pos_cell=pos_key % total, pos_level=pos_level, pos_gt=pos_gt,
                num_pos_cells=assigned.sum())


@pytest.mark.parametrize("mode", ["all", "last", "first"])
@pytest.mark.parametrize("seed", [0, 1])
def test_solo_targets_one_host_read_same_values(mode, seed):
    batch = _solo_batch(seed)
    with HostReads() as reads:
        t = build_solo_targets(batch, PADDED, GRIDS, RANGES, 0.2, 7, mode)
    assert reads.count("solov2/targets.py") == 1, reads.sites  # the count of positives
    for name, value in _former_targets(batch, mode).items():
        got = getattr(t, name)
        assert got.dtype == value.dtype and torch.equal(got, value), name
    assert t.pos_gt.numel() > 20
    assert t.max_pos_per_image == int(torch.bincount(t.pos_image, minlength=3).max())
    assert t.pos_per_level == torch.bincount(t.pos_level, minlength=len(GRIDS)).tolist()


def _ins_preds(head, seed=0):
    torch.manual_seed(seed)
    if head == "dynamic":
        return [torch.randn(3, 6, s, s) for s in GRIDS], torch.randn(3, 6, 24, 32)
    if head == "vanilla":
        return [torch.randn(3, s * s, PADDED[0] // st, PADDED[1] // st)
                for s, st in zip(GRIDS, STRIDES)], None
    return [(torch.randn(3, s, PADDED[0] // st, PADDED[1] // st),
             torch.randn(3, s, PADDED[0] // st, PADDED[1] // st))
            for s, st in zip(GRIDS, STRIDES)], None


@pytest.mark.parametrize("head", ["dynamic", "vanilla", "decoupled"])
@pytest.mark.parametrize("mode", ["all", "first"])
def test_solo_losses_no_host_read(head, mode):
    t = build_solo_targets(_solo_batch(0), PADDED, GRIDS, RANGES, 0.2, 7, mode)
    ins, feats = _ins_preds(head)
    torch.manual_seed(1)
    cate = flatten_cate_logits([torch.randn(3, 7, s, s) for s in GRIDS])
    with HostReads() as reads, EventStorage(0):
        dice = positive_mask_dice(head, ins, feats, t, GRIDS, STRIDES)
        if mode == "first":
            rs_solo_losses(cate, t, dice)
        else:
            solo_focal_dice_losses(cate, t, dice)
    assert reads.count("solov2/losses.py") == 0, reads.sites
    assert reads.count("solov2/mask_branch.py") == 0, reads.sites
    # without the host counts of the targets: read where needed, same values
    t.max_pos_per_image, t.pos_per_level = None, None
    with HostReads() as reads:
        again = positive_mask_dice(head, ins, feats, t, GRIDS, STRIDES)
    assert reads.count("solov2/") == 1, reads.sites
    assert torch.equal(again.losses, dice.losses)


def test_batched_mask_products_read_the_padded_size_once_or_never():
    torch.manual_seed(0)
    kernels, image = torch.randn(11, 5), torch.randint(0, 3, (11,))
    feats = torch.randn(3, 5, 7, 9)
    with HostReads() as reads:
        read = dynamic_mask_logits(kernels, image, feats)
    assert reads.count("solov2/mask_branch.py") == 1, reads.sites
    p_max = int(torch.bincount(image, minlength=3).max())
    with HostReads() as reads:
        given = dynamic_mask_logits(kernels, image, feats, max_per_image=p_max)
    assert reads.count("solov2/mask_branch.py") == 0, reads.sites
    assert torch.equal(read, given)

    image = image.sort().values
    with HostReads() as reads:
        read = assemble_masks_batched(feats, kernels, image)
    assert reads.count("yolact/masks.py") == 1, reads.sites
    with HostReads() as reads:
        given = assemble_masks_batched(feats, kernels, image, max_per_image=p_max)
    assert reads.count("yolact/masks.py") == 0, reads.sites
    assert torch.equal(read, given)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_boxes_to_mask_frame_same_values_no_device_copy(dtype):
    boxes = (torch.rand(40, 4, generator=torch.Generator().manual_seed(0)) * 600 - 20).to(dtype)
    for size, mh, mw in ((550, 138, 138), (551, 137, 139), (550, 138, 100)):
        with HostReads() as reads:
            got = boxes_to_mask_frame(boxes, size, mh, mw)
        # the only flagged call is the tolist of the two host-side factors (a CPU tensor)
        assert {(p, op) for p, _, op in reads.sites} == {("modeling/yolact/masks.py", "tolist")}
        assert reads.count("yolact/masks.py") == 1, reads.sites
        former = boxes * (boxes.new_tensor([mw, mh, mw, mh]) / float(size))
        assert got.dtype == dtype and torch.equal(got, former)


def test_yolact_targets_same_boxes_no_device_copy():
    g = torch.Generator().manual_seed(3)
    gts, sizes = [], []
    for n, (h, w) in zip((3, 0, 6), ((333, 517), (200, 200), (481, 640))):
        x0, y0 = torch.rand(n, generator=g) * w * 0.7, torch.rand(n, generator=g) * h * 0.7
        bw, bh = torch.rand(n, generator=g) * w * 0.3, torch.rand(n, generator=g) * h * 0.3
        inst = Instances((h, w))
        inst.gt_boxes = Boxes(torch.stack([x0, y0, x0 + bw, y0 + bh], 1))
        inst.gt_classes = torch.zeros(n, dtype=torch.int64)
        inst.gt_masks = BitMasks(torch.rand(n, h, w, generator=g) > 0.5)
        gts.append(inst)
        sizes.append((h, w))
    with HostReads() as reads:
        t = prepare_targets(gts, sizes, 550, (34, 34))
    assert reads.count("yolact/targets.py") == 0, reads.sites
    for i, (inst, (h, w)) in enumerate(zip(gts, sizes)):
        g_ = len(inst)
        former = inst.gt_boxes.tensor * torch.tensor([550 / w, 550 / h] * 2)
        assert torch.equal(t.boxes[i, :g_], former)


def test_rs_rpn_losses_one_host_read():
    sys.path.insert(0, __file__.rsplit("/", 1)[0])
    import test_rs_rpn as rpn_tests

    rpn = rpn_tests._rpn()
    anchors, logits, labels, deltas, matched = rpn_tests._loss_inputs(rpn, rpn_tests.GTS)
    with HostReads() as reads, EventStorage(0):
        rpn.losses(anchors, logits, labels, deltas, matched)
    assert reads.count("proposal_generator/rs_rpn.py") == 1, reads.sites  # the positives
