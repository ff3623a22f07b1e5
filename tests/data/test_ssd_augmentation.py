"""SSD-style augmentation (rsloss_d2.data.transforms): every transform moves image, boxes and masks
together; a box equals its mask's extent after every transform; crops never leave an image with
objects empty; the official small-GT filter; images without objects."""
import cv2
import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import transforms as T
from detectron2.structures import BoxMode
from fvcore.transforms.transform import CropTransform

from rsloss_d2 import add_rsloss_config
from rsloss_d2.data.transforms import (
    CV2ResizeTransform,
    ExpandTransform,
    MinIoURandomCrop,
    PhotometricDistortTransform,
    RandomPhotometricDistortion,
    SSDDatasetMapper,
    build_train_mapper,
)

COLORS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]
H, W = 120, 160


def _scene():
    """BGR image with 3 rectangles and 1 ellipse of distinct colours; their masks and boxes."""
    img = np.zeros((H, W, 3), np.uint8)
    masks = np.zeros((H, W, 4), np.uint8)
    rects = [(10, 12, 50, 40), (60, 30, 100, 90), (110, 70, 150, 110)]
    for i, (x0, y0, x1, y1) in enumerate(rects):
        masks[y0:y1, x0:x1, i] = 1
    ell = np.zeros((H, W), np.uint8)
    cv2.ellipse(ell, (40, 85), (25, 15), 0, 0, 360, 1, -1)
    ell[masks[..., :3].any(2) > 0] = 0  # occluded by the rectangles (visible part only)
    masks[..., 3] = ell
    for i in range(4):
        img[masks[..., i] > 0] = COLORS[i]
    return img, masks


def _extent(mask):
    ys, xs = np.nonzero(mask)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)


def _colour_region(img, i):
    return np.all(np.abs(img.astype(np.int32) - np.array(COLORS[i])) < 60, axis=2)


@pytest.mark.parametrize("tfm", [
    ExpandTransform(left=17, top=9, new_w=300, new_h=200, fill=(1.0, 2.0, 3.0)),
    CropTransform(5, 20, 120, 80),
    T.HFlipTransform(W),
    CV2ResizeTransform(H, W, 90, 210),
])
def test_each_geometric_transform_moves_image_boxes_and_masks_together(tfm):
    img, masks = _scene()
    boxes = np.stack([_extent(masks[..., i]) for i in range(4)])
    out_img = tfm.apply_image(img)
    out_masks = tfm.apply_segmentation(masks)
    out_boxes = tfm.apply_box(boxes)
    assert out_masks.shape[:2] == out_img.shape[:2] and out_masks.shape[2] == 4
    exact = not isinstance(tfm, CV2ResizeTransform)
    for i in range(4):
        m = out_masks[..., i] > 0
        if not m.any():
            continue
        region = _colour_region(out_img, i)
        if exact:  # the mask is exactly where the object's colour went
            assert np.array_equal(m, region), i
        else:  # bilinear image vs nearest mask: agree except along edges
            assert (m & region).sum() / (m | region).sum() > 0.85, i
        b = out_boxes[i].copy()
        b[0::2] = b[0::2].clip(0, out_img.shape[1])
        b[1::2] = b[1::2].clip(0, out_img.shape[0])
        if i < 3:  # rectangles: the (clipped) box is the mask's extent (1 px for resize rounding)
            assert np.abs(b - _extent(m)).max() <= (0 if exact else 1.0), (i, b, _extent(m))
    if isinstance(tfm, ExpandTransform):  # canvas filled with the mean, masks padded with 0
        assert (out_img[0, 0] == [1, 2, 3]).all() and out_masks[0, 0].sum() == 0


def test_photometric_distortion_values_and_geometry():
    rng = np.random.RandomState(0)
    img = rng.randint(0, 256, (20, 30, 3)).astype(np.uint8)
    ident = PhotometricDistortTransform(0.0, 1.0, True, 1.0, 0.0, [0, 1, 2], "BGR")
    assert np.array_equal(ident.apply_image(img), img.astype(np.float32))
    bright = PhotometricDistortTransform(10.0, 2.0, True, 1.0, 0.0, [2, 0, 1], "BGR")
    assert np.allclose(bright.apply_image(img), ((img.astype(np.float32) + 10) * 2)[..., [2, 0, 1]])
    # contrast after brightness either way; HSV round trip with a full turn of hue is identity
    hue = PhotometricDistortTransform(0.0, 1.0, False, 1.0, 360.0, [0, 1, 2], "RGB")
    assert np.allclose(hue.apply_image(img), img, atol=1e-2)
    sat0 = PhotometricDistortTransform(0.0, 1.0, False, 0.0, 0.0, [0, 1, 2], "BGR").apply_image(img)
    assert np.allclose(sat0[..., 0], sat0[..., 1], atol=1e-3)  # no saturation → grey
    masks = (rng.rand(20, 30, 2) > 0.5).astype(np.uint8)
    assert np.array_equal(bright.apply_segmentation(masks), masks)
    assert np.array_equal(bright.apply_coords(np.array([[1.0, 2.0]])), [[1.0, 2.0]])
    np.random.seed(0)
    aug = RandomPhotometricDistortion(image_format="BGR")
    outs = [aug.get_transform(img) for _ in range(200)]
    assert {t.contrast_first for t in outs} == {True, False}
    assert all(abs(t.brightness) <= 32 and 0.5 <= t.contrast <= 1.5 and abs(t.hue) <= 18
               for t in outs)
    assert sum(t.brightness == 0 for t in outs) in range(60, 141)  # each op with p 0.5


def test_min_iou_crop_rules():
    np.random.seed(1)
    img = np.zeros((100, 200, 3), np.uint8)
    boxes = np.array([[20, 20, 60, 70], [150, 10, 190, 40]], np.float32)
    crop = MinIoURandomCrop()
    seen_crop = 0
    for _ in range(300):
        t = crop.get_transform(img, boxes)
        if isinstance(t, CropTransform):
            seen_crop += 1
            assert t.w >= int(0.3 * 200) - 1 and t.h >= int(0.3 * 100) - 1
            assert 0 <= t.x0 and t.x0 + t.w <= 200 and 0 <= t.y0 and t.y0 + t.h <= 100
            c = (boxes[:, :2] + boxes[:, 2:]) / 2
            inside = (c[:, 0] > t.x0) & (c[:, 0] < t.x0 + t.w) & (c[:, 1] > t.y0) & \
                     (c[:, 1] < t.y0 + t.h)
            assert inside.any()
    assert 100 < seen_crop < 300  # "no crop" is one of 7 modes
    # no boxes: any crop is accepted, no crash
    for _ in range(20):
        crop.get_transform(img, np.zeros((0, 4), np.float32))


def _cfg(**ssd):
    cfg = get_cfg()
    add_rsloss_config(cfg)
    cfg.MODEL.MASK_ON = True
    cfg.INPUT.SSD_AUGMENTATION.ENABLED = True
    cfg.INPUT.SSD_AUGMENTATION.SIZE = (96, 128)
    for k, v in ssd.items():
        setattr(cfg.INPUT.SSD_AUGMENTATION, k, v)
    return cfg


def _dataset_dict(tmp_path, img, masks, extra=()):
    path = str(tmp_path / "img.png")
    cv2.imwrite(path, img)
    annos = []
    for i in range(masks.shape[2]):
        rle = mask_util.encode(np.asfortranarray(masks[..., i]))
        annos.append({"bbox": _extent(masks[..., i]).tolist(), "bbox_mode": BoxMode.XYXY_ABS,
                      "category_id": i, "segmentation": rle, "iscrowd": 0})
    annos += list(extra)
    return {"file_name": path, "height": img.shape[0], "width": img.shape[1], "image_id": 0,
            "annotations": annos}


@pytest.mark.parametrize("recompute", [True, False])
def test_mapper_keeps_masks_boxes_and_image_consistent(tmp_path, recompute):
    img, masks = _scene()
    d = _dataset_dict(tmp_path, img, masks)
    # photometric off so that colours identify the objects in the output image
    mapper = SSDDatasetMapper(_cfg(BRIGHTNESS_DELTA=0.0, HUE_DELTA=0.0, CONTRAST_RANGE=(1.0, 1.0),
                                   SATURATION_RANGE=(1.0, 1.0), RECOMPUTE_BOXES=recompute), True)
    np.random.seed(0)
    kinds = set()
    for _ in range(60):
        out = mapper(d)
        image = out["image"].numpy().transpose(1, 2, 0)
        inst = out["instances"]
        assert image.shape[:2] == (96, 128) and inst.image_size == (96, 128)
        assert out["ssd_augmented"] is True
        assert len(inst) >= 1  # the crop never removes every object
        kinds.add(len(inst))
        gm = inst.gt_masks.tensor.numpy()
        for box, cls, m in zip(inst.gt_boxes.tensor.numpy(), inst.gt_classes.tolist(), gm):
            if not m.any():
                continue
            region = _colour_region(image, cls)
            assert (m & region).sum() / (m | region).sum() > 0.6, cls
            if recompute or cls < 3:  # a cut ellipse's clipped box may exceed its visible part
                assert np.abs(box - _extent(m)).max() <= (0 if recompute else 1.5), (box, cls)
    assert len(kinds) > 1  # crops did remove some objects


def test_mapper_filters_small_and_crowd_gts_and_supports_empty_images(tmp_path):
    img = np.full((64, 64, 3), 50, np.uint8)
    small = np.zeros((64, 64, 2), np.uint8)
    small[10:14, 10:14, 0] = 1  # 4 x 4: dropped (official keeps w > 4 and h > 4)
    small[30:35, 30:35, 1] = 1  # 5 x 5: kept
    crowd = {"bbox": [40, 40, 60, 60], "bbox_mode": BoxMode.XYXY_ABS, "category_id": 3,
             "segmentation": [[40, 40, 60, 40, 60, 60, 40, 60]], "iscrowd": 1}
    d = _dataset_dict(tmp_path, img, small, [crowd])
    mapper = SSDDatasetMapper(_cfg(MIN_GT_SIZE=4.0, EXPAND_PROB=0.0, CROP_MIN_IOUS=(),
                                   CROP_MIN_SIZE=1.0), True)
    out = mapper(d)
    assert out["instances"].gt_classes.tolist() == [1]
    assert out["image"].dtype == torch.float32 and tuple(out["image"].shape) == (3, 96, 128)
    # an image without objects: empty instances, every augmentation still runs
    d_empty = _dataset_dict(tmp_path, img, np.zeros((64, 64, 0), np.uint8))
    np.random.seed(3)
    mapper = SSDDatasetMapper(_cfg(), True)
    for _ in range(10):
        out = mapper(d_empty)
        assert len(out["instances"]) == 0 and tuple(out["image"].shape) == (3, 96, 128)
        assert out["instances"].gt_masks.tensor.shape == (0, 96, 128)


def test_build_train_mapper_follows_the_config():
    from detectron2.data import DatasetMapper

    assert isinstance(build_train_mapper(_cfg()), SSDDatasetMapper)
    cfg = _cfg()
    cfg.INPUT.SSD_AUGMENTATION.ENABLED = False
    assert type(build_train_mapper(cfg)) is DatasetMapper


def test_mapper_drops_gts_whose_centre_the_crop_removed(tmp_path):
    img, masks = _scene()
    d = _dataset_dict(tmp_path, img, masks)
    # crop x in [0, 85), y in [0, 120): rect 1 (x 60..100, centre 80) is kept although cut,
    # rect 2 (x 110..150) is gone; a crop to x in [0, 75) cuts rect 1 with its centre outside
    for x1, expected in [(85, [0, 1, 3]), (75, [0, 3])]:
        mapper = SSDDatasetMapper(augmentations=[CropTransform(0, 0, x1, H)], image_format="BGR",
                                  recompute_boxes=False)
        inst = mapper(d)["instances"]
        assert inst.gt_classes.tolist() == expected
        assert (inst.gt_boxes.tensor[:, 2] <= x1).all()  # clipped to the crop
