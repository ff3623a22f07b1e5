"""Seeded synthetic COCO-format ground truth and detections, for the evaluation benchmark
(`tools/benchmarks/benchmark_eval.py`) and the tests of the oLRP evaluation.

GTs have sizes from a few pixels to most of the image (so all three COCO area ranges are
populated), a skewed class distribution and some crowd regions; detections are GT boxes
perturbed by noise proportional to their size (sometimes with the wrong class) plus random
false positives, with higher scores for the better boxes.
"""
import numpy as np

__all__ = ["make_synthetic_coco", "make_synthetic_lvis"]


def make_synthetic_coco(num_images=100, num_classes=10, dets_per_image=100, seed=0,
                        gts_per_image=(1, 12), crowd_frac=0.03, image_size=(640, 480),
                        score_decimals=None):
    """Returns `(gt, detections)`: a COCO-format dict and a list of COCO result dicts.

    Args:
        num_images, num_classes: dataset size.
        dets_per_image: detections per image (exactly; over all classes).
        seed: RNG seed (the output is a function of the arguments only).
        gts_per_image: inclusive range of the number of GT objects per image.
        crowd_frac: fraction of GTs marked `iscrowd` (their boxes are enlarged).
        image_size: (width, height) of every image.
        score_decimals: round scores to this many decimals (None: keep float64), which makes
            ties in scores, as real detectors' rounded outputs have.
    """
    rng = np.random.default_rng(seed)
    W, H = image_size
    class_p = rng.dirichlet(np.full(num_classes, 0.7))
    images = [{"id": i + 1, "width": W, "height": H, "file_name": f"{i + 1:06d}.jpg"}
              for i in range(num_images)]
    categories = [{"id": c + 1, "name": f"class_{c + 1}"} for c in range(num_classes)]

    n_gt = rng.integers(gts_per_image[0], gts_per_image[1] + 1, size=num_images)
    img_of_gt = np.repeat(np.arange(num_images), n_gt)
    G = len(img_of_gt)
    side = np.exp(rng.uniform(np.log(4), np.log(0.9 * min(W, H)), size=G))
    aspect = np.exp(rng.uniform(-0.7, 0.7, size=G))
    gw = np.minimum(side * np.sqrt(aspect), W - 1)
    gh = np.minimum(side / np.sqrt(aspect), H - 1)
    gx = rng.uniform(0, W - gw)
    gy = rng.uniform(0, H - gh)
    gcat = rng.choice(num_classes, size=G, p=class_p)
    crowd = rng.random(G) < crowd_frac
    gw = np.where(crowd, np.minimum(gw * 2, W - gx), gw)
    gh = np.where(crowd, np.minimum(gh * 2, H - gy), gh)
    annotations = [
        {"id": int(j + 1), "image_id": int(img_of_gt[j] + 1), "category_id": int(gcat[j] + 1),
         "bbox": [float(gx[j]), float(gy[j]), float(gw[j]), float(gh[j])],
         "area": float(gw[j] * gh[j]), "iscrowd": int(crowd[j])}
        for j in range(G)]
    gt = {"images": images, "annotations": annotations, "categories": categories}

    # detections: up to ~60% of each image's budget from perturbed GTs, the rest random FPs
    per_gt = rng.integers(1, 4, size=G)
    budget = (0.6 * dets_per_image) // np.maximum(n_gt, 1)
    per_gt = np.minimum(per_gt, budget[img_of_gt]).astype(np.int64)
    src = np.repeat(np.arange(G), per_gt)
    noise = rng.normal(0, 1, size=(len(src), 4)) * rng.uniform(0.01, 0.2, size=(len(src), 1))
    dx = gx[src] + noise[:, 0] * gw[src]
    dy = gy[src] + noise[:, 1] * gh[src]
    dw = gw[src] * np.exp(noise[:, 2])
    dh = gh[src] * np.exp(noise[:, 3])
    quality = np.exp(-3 * np.abs(noise).mean(1))
    dcat = np.where(rng.random(len(src)) < 0.1, rng.choice(num_classes, size=len(src), p=class_p),
                    gcat[src])
    dimg = img_of_gt[src]
    n_tp = np.bincount(dimg, minlength=num_images)
    n_fp = dets_per_image - n_tp
    fimg = np.repeat(np.arange(num_images), n_fp)
    F = len(fimg)
    fside = np.exp(rng.uniform(np.log(4), np.log(0.7 * min(W, H)), size=F))
    fw, fh = fside * rng.uniform(0.6, 1.4, F), fside * rng.uniform(0.6, 1.4, F)
    fx, fy = rng.uniform(0, W - 4, F), rng.uniform(0, H - 4, F)
    fcat = rng.choice(num_classes, size=F, p=class_p)
    score_tp = np.clip(quality * rng.beta(5, 2, len(src)), 1e-4, 1)
    score_fp = np.clip(rng.beta(1, 8, F), 1e-4, 1)

    img = np.concatenate([dimg, fimg])
    box = np.concatenate([np.stack([dx, dy, dw, dh], 1), np.stack([fx, fy, fw, fh], 1)])
    cat = np.concatenate([dcat, fcat])
    score = np.concatenate([score_tp, score_fp])
    if score_decimals is not None:
        score = np.round(score, score_decimals)
    order = np.lexsort((rng.random(len(img)), img))  # group by image, random order inside
    detections = [
        {"image_id": int(img[i] + 1), "category_id": int(cat[i] + 1),
         "bbox": [float(v) for v in box[i]], "score": float(score[i])}
        for i in order]
    return gt, detections


def make_synthetic_lvis(num_images=100, num_classes=50, dets_per_image=300, seed=0,
                        neg_per_image=10, not_exhaustive_frac=0.1, **kwargs):
    """`make_synthetic_coco` turned into LVIS format: no crowd; the categories in the fewest
    images are rare, then common, then frequent, in LVIS v1's proportions (337 / 461 / 405 of
    1,203); each image gets `neg_per_image` random absent
    categories as `neg_category_ids` and a `not_exhaustive_frac` share of its present ones as
    `not_exhaustive_category_ids`. Other arguments as `make_synthetic_coco`."""
    rng = np.random.default_rng(seed + 7919)
    gt, dets = make_synthetic_coco(num_images=num_images, num_classes=num_classes,
                                   dets_per_image=dets_per_image, seed=seed, crowd_frac=0.0,
                                   **kwargs)
    img = np.array([a["image_id"] for a in gt["annotations"]], dtype=np.int64) - 1
    cat = np.array([a["category_id"] for a in gt["annotations"]], dtype=np.int64) - 1
    for a in gt["annotations"]:
        del a["iscrowd"]
    present = np.zeros((num_images, num_classes), dtype=bool)
    present[img, cat] = True
    rank = np.empty(num_classes, dtype=np.int64)
    rank[np.argsort(present.sum(0), kind="stable")] = np.arange(num_classes)
    share = rank / max(num_classes, 1)
    freq = np.where(share < 337 / 1203, "r", np.where(share < 798 / 1203, "c", "f"))
    for c, f in zip(gt["categories"], freq):
        c["frequency"] = str(f)
    for i, im in enumerate(gt["images"]):
        pos = np.flatnonzero(present[i])
        absent = np.flatnonzero(~present[i])
        neg = rng.choice(absent, size=min(neg_per_image, len(absent)), replace=False)
        im["neg_category_ids"] = sorted(int(c) + 1 for c in neg)
        im["not_exhaustive_category_ids"] = [int(c) + 1 for c in pos
                                             if rng.random() < not_exhaustive_frac]
    return gt, dets
