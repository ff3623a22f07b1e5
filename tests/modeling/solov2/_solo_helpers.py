"""Small hand-made SOLO batches shared by the SOLO / SOLOv2 tests (unique module name)."""
import torch
from detectron2.structures import BitMasks, Boxes, Instances


def make_instances(size, boxes, masks, classes):
    inst = Instances(size)
    inst.gt_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
    inst.gt_classes = torch.tensor(classes, dtype=torch.int64)
    if len(classes):
        inst.gt_masks = BitMasks(torch.stack(masks))
    return inst


def rect(h, w, y0, y1, x0, x1):
    m = torch.zeros(h, w, dtype=torch.bool)
    m[y0:y1, x0:x1] = True
    return m


def hand_batch():
    """Image 0 (64×64): A = 16×16 square (class 1) at rows 8–23, cols 40–55; B = 32×32 square
    (class 5) at rows/cols 16–47. Image 1 (48×64, padded to 64×64): C whose box is too large for
    every level, D whose mask is empty (vanished when resized). Image 2: no object."""
    a, b = rect(64, 64, 8, 24, 40, 56), rect(64, 64, 16, 48, 16, 48)
    img0 = make_instances((64, 64), [[40, 8, 56, 24], [16, 16, 48, 48]], [a, b], [1, 5])
    c, d = rect(48, 64, 0, 40, 0, 60), torch.zeros(48, 64, dtype=torch.bool)
    img1 = make_instances((48, 64), [[0, 0, 300, 300], [10, 10, 20, 20]], [c, d], [2, 3])
    img2 = make_instances((64, 64), [], [], [])
    return [img0, img1, img2]


# Two levels: S = 4 (16-px cells) for sqrt(wh) in [1, 20], S = 2 (32-px cells) for [10, 100].
GRIDS, RANGES, SIGMA = [4, 2], [(1, 20), (10, 100)], 0.2


def random_image_batch(num_images, size, num_objects, seed=0, num_classes=8):
    """Detectron2-style training inputs with rectangle objects (float images 0..255)."""
    g = torch.Generator().manual_seed(seed)
    h, w = size
    batch = []
    for _ in range(num_images):
        masks, boxes = [], []
        for _ in range(num_objects):
            y0 = int(torch.randint(0, h // 2, (1,), generator=g))
            x0 = int(torch.randint(0, w // 2, (1,), generator=g))
            hh = int(torch.randint(6, h // 2, (1,), generator=g))
            ww = int(torch.randint(6, w // 2, (1,), generator=g))
            masks.append(rect(h, w, y0, y0 + hh, x0, x0 + ww))
            boxes.append([x0, y0, x0 + ww, y0 + hh])
        classes = torch.randint(0, num_classes, (num_objects,), generator=g).tolist()
        batch.append({
            "image": torch.rand(3, h, w, generator=g) * 255,
            "instances": make_instances((h, w), boxes, masks, classes),
            "height": h, "width": w,
        })
    return batch
