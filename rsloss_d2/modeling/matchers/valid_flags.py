"""Valid anchors: mmdet's ``valid_flags`` (``mmdet/core/anchor/anchor_generator.py``).

mmdet pads every image alone to a multiple of 32 (``Pad(size_divisor=32)``) before batching, and
an anchor takes part in the assignment only if its grid cell lies inside that padded image:
on a level of stride s, cell (x, y) is valid iff ``x < ceil(pw / s)`` and ``y < ceil(ph / s)``
with (ph, pw) the image size rounded up to the divisor. Anchors of cells in the batch padding
are ignored (neither positive nor negative). One rule, in two forms: a device mask over the
anchors (:func:`valid_anchor_mask`) and host ints per level (:func:`valid_grid_sizes`) with
which the valid anchors of a grid are a slice.
"""
from typing import List, Sequence, Tuple

import torch

from ..host_copies import to_device

__all__ = ["OFFICIAL_PAD_DIVISOR", "valid_anchor_mask", "valid_grid_sizes"]

# mmdet's per-image ``Pad(size_divisor=32)`` of the official configs
OFFICIAL_PAD_DIVISOR = 32


def _valid_cells(image_size: Sequence[int], stride: int, divisor: int) -> Tuple[int, int]:
    """(cells along y, cells along x) of one level inside the image padded alone."""
    div = max(int(divisor), 1)
    ph, pw = ((int(v) + div - 1) // div * div for v in image_size)
    return (ph + stride - 1) // stride, (pw + stride - 1) // stride


def valid_anchor_mask(
    anchors_per_level: Sequence[torch.Tensor],
    strides: Sequence[int],
    image_sizes: Sequence[Sequence[int]],
    size_divisibility: int = OFFICIAL_PAD_DIVISOR,
    offset: float = 0.0,
) -> torch.Tensor:
    """Valid flags of every image's anchors, from the anchor centres.

    Args:
        anchors_per_level: L tensors (H_l·W_l·A, 4) XYXY, Detectron2's anchors of the batch (the
            anchors of cell (x, y) of level l are centred at ((x + offset)·s_l, (y + offset)·s_l)).
        strides: s_l of every level.
        image_sizes: N host pairs (h, w) before padding (``ImageList.image_sizes``).
        size_divisibility: the per-image padding multiple (32 in the official configs).
        offset: Detectron2's anchor offset (``MODEL.ANCHOR_GENERATOR.OFFSET``).

    Returns:
        (N, R) bool, R = Σ_l H_l·W_l·A, in the anchors' order.
    """
    device = anchors_per_level[0].device
    # (N, L, 2) cell counts computed on the host, copied without a host sync
    limits = to_device([[_valid_cells(hw, s, size_divisibility) for s in strides]
                        for hw in image_sizes], device, torch.long).reshape(len(image_sizes),
                                                                              len(strides), 2)
    masks = []
    for level, (boxes, s) in enumerate(zip(anchors_per_level, strides)):
        centres = (boxes[:, :2] + boxes[:, 2:]) / 2 / s - offset  # (R_l, 2) cell (x, y)
        cells = torch.round(centres)
        masks.append((cells[None, :, 0] < limits[:, level, 1, None])
                     & (cells[None, :, 1] < limits[:, level, 0, None]))
    return torch.cat(masks, dim=1)


def valid_grid_sizes(
    grid_sizes: Sequence[Sequence[int]],
    strides: Sequence[int],
    image_sizes: Sequence[Sequence[int]],
    size_divisibility: int = OFFICIAL_PAD_DIVISOR,
) -> List[List[Tuple[int, int]]]:
    """:func:`valid_anchor_mask` on the host: per image and level, (valid_h, valid_w) in cells.

    The valid anchors of image i on level l are exactly the ``[:valid_h, :valid_w]`` corner of
    the level's (H_l, W_l, A) grid, so with these host ints an image's valid anchors are a slice
    (no boolean mask, no host read of the device mask).

    Args:
        grid_sizes: (H_l, W_l) of every level.
        strides, size_divisibility: as :func:`valid_anchor_mask`.
        image_sizes: N host pairs (h, w) (Detectron2's ``ImageList.image_sizes``).
    """
    out = []
    for hw in image_sizes:
        cells = [_valid_cells(hw, s, size_divisibility) for s in strides]
        out.append([(min(ch, int(h)), min(cw, int(w)))
                    for (h, w), (ch, cw) in zip(grid_sizes, cells)])
    return out
