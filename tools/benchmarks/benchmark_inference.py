#!/usr/bin/env python
"""Inference speed (images/s) of two models on the same images (e.g. SOLOv2 vs Mask R-CNN).

    python tools/benchmarks/benchmark_inference.py \
        --config-a configs/shapes/mask_rcnn_R_18_FPN_quick.yaml \
        --config-b configs/shapes/solov2_R_18_FPN_quick.yaml \
        --weights-a output/shapes_mask_rcnn_R_18_FPN_quick/model_final.pth \
        --weights-b output/shapes_solov2_R_18_FPN_quick/model_final.pth --num-images 50

Both models are built from their configs (eval mode, ``torch.no_grad``) and run one image at a
time (batch 1, as Detectron2's evaluation) on the first ``--num-images`` images of
``--dataset`` (default: config A's first test set), each image read and resized by the model's
own test mapper before timing (data loading is not timed). The models alternate image by image
(A, B, then B, A, ...) so that load changes on a shared machine hit both alike. The timed call
is the whole ``model([input])`` (backbone, heads, post-processing, masks pasted at the original
image size). Prints median / mean seconds per image, images/s (1 / mean) and the mean number
of detections per image of each model in one table, and the ratio of the throughputs B / A.
Extra ``KEY VALUE`` pairs after ``--opts`` apply to both configs (``--opts-b`` to B only).

``--peak-memory`` adds, per model, the peak growth of the process's resident memory (CPU; CUDA:
peak allocated) during its largest single inference, sampled every millisecond (freed memory
that the allocator keeps is reused without growth: use ``--warmup 0`` for the first inference
of a fresh process).
``--crowded N`` replaces the dataset by one generated image (``--crowded-size``) holding N
filled rectangles and ellipses of random colours, timed ``--num-images`` times (e.g. the memory
of inference on a crowded image; add ``--opts MODEL.SOLOV2.SCORE_THR 0.0 ...`` to make every
cell × class a candidate).
"""
import argparse
import copy
import os
import statistics
import threading
import time


import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import DatasetCatalog, DatasetMapper
from detectron2.modeling import build_model

from rsloss_d2.data import check_dataset_files
from rsloss_d2.utils.benchmark import ab_configs, add_ab_arguments, machine_line, print_overrides


def _rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakMemory:
    """Peak growth of resident memory (CPU, sampled every 1 ms) or CUDA peak allocation."""

    def __init__(self, cuda):
        self.cuda = cuda
        self.peak = 0

    def __enter__(self):
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
            return self
        self.base = _rss_bytes()
        self.top = self.base
        self.stop = threading.Event()

        def sample():
            while not self.stop.is_set():
                self.top = max(self.top, _rss_bytes())
                time.sleep(0.001)
        self.thread = threading.Thread(target=sample, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        if self.cuda:
            self.peak = torch.cuda.max_memory_allocated() - self.base
        else:
            self.stop.set()
            self.thread.join()
            self.peak = max(self.top, _rss_bytes()) - self.base


class Runner:
    """One model in eval mode; ``run(input)`` times one inference."""

    def __init__(self, cfg, weights, inputs, peak_memory):
        torch.manual_seed(0)
        self.model = build_model(cfg)
        if weights:
            DetectionCheckpointer(self.model).load(weights)
        self.model.eval()
        self.inputs = inputs
        self.cuda = cfg.MODEL.DEVICE.startswith("cuda")
        self.peak_memory = peak_memory
        self.times, self.dets, self.peak = [], [], 0

    @torch.no_grad()
    def run(self, i, record):
        inp = copy.copy(self.inputs[i])
        if self.cuda:
            torch.cuda.synchronize()
        mem = PeakMemory(self.cuda) if (self.peak_memory and record) else None
        if mem is not None:
            mem.__enter__()
        start = time.perf_counter()
        out = self.model([inp])[0]
        if self.cuda:
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
        if mem is not None:
            mem.__exit__()
            self.peak = max(self.peak, mem.peak)
        if record:
            self.times.append(elapsed)
            self.dets.append(len(out["instances"]) if "instances" in out else 0)


def load_inputs(cfg, dataset, num_images):
    dicts = DatasetCatalog.get(dataset)[:num_images]
    mapper = DatasetMapper(cfg, is_train=False)
    return [mapper(copy.deepcopy(d)) for d in dicts]


def crowded_inputs(num_objects, size, copies, seed=0):
    """One generated H×W image with ``num_objects`` random rectangles / ellipses (BGR uint8 →
    the model input format of Detectron2's mapper: (3, H, W) float, no resize)."""
    g = torch.Generator().manual_seed(seed)
    h, w = size
    img = torch.full((3, h, w), 114.0)
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    for k in range(num_objects):
        rh, rw = (torch.randint(4, max(5, h // 6), (2,), generator=g)).tolist()
        cy = int(torch.randint(0, h, (1,), generator=g))
        cx = int(torch.randint(0, w, (1,), generator=g))
        if k % 2:
            region = ((ys - cy) / rh) ** 2 + ((xs - cx) / rw) ** 2 <= 1
        else:
            region = ((ys - cy).abs() <= rh) & ((xs - cx).abs() <= rw)
        img[:, region] = (torch.rand(3, 1, generator=g) * 255).expand(3, int(region.sum()))
    return [{"image": img, "height": h, "width": w, "image_id": 0}] * copies


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="", help="default: config A's first test set")
    parser.add_argument("--num-images", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=3, help="untimed images per model")
    parser.add_argument("--crowded", type=int, default=0,
                        help="time one generated image with this many objects instead")
    parser.add_argument("--crowded-size", type=int, nargs=2, default=[256, 256],
                        metavar=("H", "W"))
    parser.add_argument("--peak-memory", action="store_true",
                        help="also report the peak memory growth of one inference")
    add_ab_arguments(parser, "configs/shapes/mask_rcnn_R_18_FPN_quick.yaml",
                     "configs/shapes/solov2_R_18_FPN_quick.yaml")
    args = parser.parse_args(argv)
    cfg_a, cfg_b = ab_configs(args)
    if args.crowded:
        dataset = f"one generated image, {args.crowded} objects, {tuple(args.crowded_size)}"

        def inputs(cfg):
            return crowded_inputs(args.crowded, tuple(args.crowded_size), args.num_images)
    else:
        dataset = args.dataset or cfg_a.DATASETS.TEST[0]
        check_dataset_files([dataset])

        def inputs(cfg):
            return load_inputs(cfg, dataset, args.num_images)
    runners = [Runner(cfg, w, inputs(cfg), args.peak_memory)
               for cfg, w in ((cfg_a, args.weights_a), (cfg_b, args.weights_b))]
    n = len(runners[0].inputs)
    for step in range(args.warmup + n):
        i = step % n
        order = runners if step % 2 == 0 else runners[::-1]
        for runner in order:
            runner.run(i, record=step >= args.warmup)

    print(machine_line(args.device))
    print(f"dataset: {dataset}, {n} images, batch 1, warm-up {args.warmup} per model, "
          f"alternating A/B")
    mem_col = " peak MiB |" if args.peak_memory else ""
    header = (f"| {'model':<5} | {'config':<48} | {'median s':>8} | {'mean s':>7} "
              f"| {'img/s':>6} | {'dets/img':>8} |{mem_col}")
    print(header)
    print("|" + "|".join("-" * len(c) for c in header.split("|")[1:-1]) + "|")
    rates = []
    for name, cfg_file, r in (("A", args.config_a, runners[0]), ("B", args.config_b, runners[1])):
        med, mean = statistics.median(r.times), statistics.fmean(r.times)
        rates.append(1.0 / mean)
        mem = f" {r.peak / 2**20:8.1f} |" if args.peak_memory else ""
        print(f"| {name:<5} | {os.path.relpath(cfg_file):<48} | {med:8.4f} | {mean:7.4f} "
              f"| {1.0 / mean:6.2f} | {statistics.fmean(r.dets):8.1f} |{mem}")
    print_overrides(args)
    print(f"throughput ratio B / A (images/s): {rates[1] / rates[0]:.3f}")
    return rates[1] / rates[0]


if __name__ == "__main__":
    main()
