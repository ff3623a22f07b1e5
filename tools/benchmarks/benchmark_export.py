#!/usr/bin/env python
"""Inference speed of exported models: eager vs TorchScript vs ONNX Runtime, CPU, batch 1.

    python tools/benchmarks/benchmark_export.py --num-images 20 --threads 1 2 \\
        --config configs/shapes/rs_mask_rcnn_R_18_FPN_quick.yaml \\
            MODEL.WEIGHTS output/shapes_rs_mask_rcnn_R_18_FPN_quick/model_final.pth

For every ``--config`` (repeat the option; ``KEY VALUE`` pairs after a config file apply to it;
default: one config per family of configs/shapes), the model is built, its weights loaded
(``MODEL.WEIGHTS``) or, with ``--train-iters N`` and no weights, trained N SGD steps on the
config's training set (a trace needs detections, which random weights rarely give), exported
by tools/deploy/export_model.py's code (tracing) to TorchScript and ONNX in a temporary folder,
and the three runtimes are timed on the first ``--num-images`` images of ``DATASETS.TEST[0]``,
each prepared as the exported model takes it ((3, H, W) float32, resized at the test size;
preparation not timed). Per thread count (``torch.set_num_threads`` for eager / TorchScript,
ONNX Runtime's intra-op threads) the runtimes alternate image by image so that load changes on
a shared machine hit all three alike; one warm-up pass over the images first. The timed call is
the whole model, from the image tensor to the output tensors (eager: the family's export
inference function run eagerly, which equals the model's own inference). Prints one row per
(config, threads, runtime): images/s (1 / mean), median ms, speed-up over eager.
CUDA is not measured here (CPU runtimes only).
"""
import argparse
import os
import platform
import statistics
import sys
import tempfile
import time

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import DatasetCatalog
from detectron2.data import detection_utils as utils
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from rsloss_d2.engine import Trainer, load_config
from rsloss_d2.export import build_adapter, export_model
from rsloss_d2.export.inputs import image_tensor
from rsloss_d2.export.runtime import ExportedPredictor

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_CONFIGS = [
    "configs/shapes/rs_mask_rcnn_R_18_FPN_quick.yaml",
    "configs/shapes/rs_cascade_rcnn_R_18_FPN_quick.yaml",
    "configs/shapes/rs_paa_R_18_FPN_quick.yaml",
    "configs/shapes/rs_yolact_R_18_quick.yaml",
    "configs/shapes/rs_solov2_R_18_FPN_quick.yaml",
]


def parse_configs(items):
    """['a.yaml', 'K', 'V', 'b.yaml'] → [('a.yaml', ['K', 'V']), ('b.yaml', [])]."""
    out = []
    for item in items:
        if item.endswith(".yaml"):
            out.append((item, []))
        elif not out:
            raise SystemExit(f"--config: {item!r} comes before any config file")
        else:
            out[-1][1].append(item)
    return out


def short_train(cfg, model, iters):
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=cfg.SOLVER.BASE_LR, momentum=0.9, weight_decay=1e-4)
    data = iter(Trainer.build_train_loader(cfg))
    model.train()
    with EventStorage():
        for _ in range(iters):
            losses = model(next(data))
            optimizer.zero_grad()
            sum(losses.values()).backward()
            torch.nn.utils.clip_grad_norm_(params, 10.0)
            optimizer.step()


def time_runtimes(runtimes, images, threads):
    """{name: [seconds per image]}; runtimes alternate image by image."""
    torch.set_num_threads(threads)
    times = {name: [] for name in runtimes}
    for img in images:  # warm-up
        for fn in runtimes.values():
            fn(img)
    for i, img in enumerate(images):
        names = list(runtimes) if i % 2 == 0 else list(reversed(runtimes))
        for name in names:
            start = time.perf_counter()
            runtimes[name](img)
            times[name].append(time.perf_counter() - start)
    return times


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", nargs="+", action="append", default=None,
                   help="config file followed by its KEY VALUE pairs (repeatable)")
    p.add_argument("--num-images", type=int, default=20)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--train-iters", type=int, default=0,
                   help="without MODEL.WEIGHTS: SGD steps before exporting (0: random weights)")
    p.add_argument("--opts", nargs="*", default=[], help="KEY VALUE pairs for every config")
    args = p.parse_args(argv)
    configs = parse_configs(sum(args.config, [])) if args.config else [
        (c, []) for c in DEFAULT_CONFIGS]

    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs; batch 1; CUDA: not measured")
    rows = []
    for config, opts in configs:
        cfg = load_config(os.path.join(REPO, config) if not os.path.isabs(config) else config,
                          list(args.opts) + opts)
        cfg.MODEL.DEVICE = "cpu"
        cfg.DATALOADER.NUM_WORKERS = 0
        torch.manual_seed(0)
        model = build_model(cfg)
        if cfg.MODEL.WEIGHTS:
            DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
        elif args.train_iters:
            short_train(cfg, model, args.train_iters)
        model.eval()
        dicts = DatasetCatalog.get(cfg.DATASETS.TEST[0])[: args.num_images]
        images = [image_tensor(cfg, utils.read_image(d["file_name"], format=cfg.INPUT.FORMAT))
                  for d in dicts]
        with tempfile.TemporaryDirectory() as tmp:
            ts_path = export_model(model, images[0], os.path.join(tmp, "ts"), "torchscript")
            onnx_path = export_model(model, images[0], os.path.join(tmp, "onnx"), "onnx")
            eager = build_adapter(model, images[0])
            ts = ExportedPredictor(ts_path)
            for threads in args.threads:
                ort = ExportedPredictor(onnx_path, num_threads=threads)
                times = time_runtimes({"eager": eager, "torchscript": ts, "onnxruntime": ort},
                                      images, threads)
                base = statistics.mean(times["eager"])
                for name, t in times.items():
                    rows.append((os.path.basename(config), threads, name,
                                 1 / statistics.mean(t), 1000 * statistics.median(t),
                                 base / statistics.mean(t)))
                    print(f"  {rows[-1][0]} threads={threads} {name}: {rows[-1][3]:.2f} img/s",
                          flush=True)

    print("\n| config | threads | runtime | images/s | median ms | vs eager |")
    print("|---|---|---|---|---|---|")
    for config, threads, name, ips, med, ratio in rows:
        print(f"| {config} | {threads} | {name} | {ips:.2f} | {med:.1f} | {ratio:.2f}× |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
