#!/usr/bin/env bash
# The CUDA checks of the README's "GPU" section, in one run on a machine with one GPU:
#   1. every model family trains its `shapes` schedule in fp16 with gradient scaling (Detectron2's
#      AMPTrainer, SOLVER.AMP.ENABLED True), then evaluates (fp32) — all families at once, one
#      process each; in parallel, tools/diagnostics/count_host_syncs.py counts the host syncs per step of the
#      ranking-loss heads (not timed, so sharing the GPU does not matter);
#   2. then, alone on the GPU: tools/benchmarks/benchmark_losses.py and tools/benchmarks/benchmark_train.py.
#
#   bash tools/gpu_checks.sh OUT_DIR [PHASE1_TIMEOUT_S]
#
# Sections (environment variables, defaults = the full check):
#   AMP_CONFIGS    configs (under configs/, without .yaml) trained in fp16 AMP (default: one per
#                  family); empty = none
#   FP32_CONFIGS   configs trained in fp32, seed 1, beside them (side-by-side tables); default none
#   THR0_CONFIGS   of those, the ones evaluated again at score threshold 0
#                  (MODEL.RETINANET.SCORE_THRESH_TEST 0.0)
#   INFER_PAIRS    "A:B ..." pairs of FP32 configs whose trained weights tools/benchmarks/benchmark_inference.py
#                  times against each other on shapes_val
#   SYNCS=1 LOSSES=1 TRAIN_BENCH=1   tools/diagnostics/count_host_syncs.py / benchmark_losses.py /
#                  benchmark_train.py (0 skips)
#   SYNC_LIST      configs whose host syncs are counted (default: AMP_CONFIGS)
#   PY             the Python to use (default: python)
#
# Needs the shapes / shapes_lt datasets generated beforehand (python -m rsloss_d2.data.synthetic):
# the parallel trainings would otherwise all generate them at once. Writes OUT_DIR/summary.md and
# OUT_DIR/logs.tar.gz (every log and metrics.json).
set -u
OUT=${1:?usage: gpu_checks.sh OUT_DIR [AMP_TIMEOUT_S]}
AMP_TIMEOUT=${2:-210}
PY=${PY:-python}
# dry run on a CPU machine (the sync count needs CUDA and fails there):
#   DEVICE=cpu EXTRA_OPTS="SOLVER.MAX_ITER 2 DATASETS.TEST ()" BENCH_WARMUP=1 BENCH_ITERS=1 \
#   BENCH_SIZES=10x1e3 bash tools/gpu_checks.sh /tmp/dry
DEVICE=${DEVICE:-cuda}
EXTRA_OPTS=${EXTRA_OPTS:-}
BENCH_WARMUP=${BENCH_WARMUP:-5}
BENCH_ITERS=${BENCH_ITERS:-30}
BENCH_SIZES=${BENCH_SIZES:-100x1e4,1000x1e5,1000x1e6,5000x1e6}
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
WORK=$(mktemp -d)
LOGS=$WORK/logs
mkdir -p "$OUT" "$LOGS"
export OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1

$PY - <<'EOF' 2>&1 | tee "$LOGS/env.txt"
import torch, torchvision, detectron2, rsloss_d2
print("torch", torch.__version__, "| torchvision", torchvision.__version__, "| detectron2",
      detectron2.__version__, "| rsloss_d2", rsloss_d2.__version__)
print("GPU:", torch.cuda.get_device_name(), "| CUDA", torch.version.cuda,
      "| cuDNN", torch.backends.cudnn.version())
EOF

# 1. fp16 AMP training of every family (the RS / ranking variant where a family has one)
FAMILIES="${AMP_CONFIGS-shapes/rs_mask_rcnn_R_18_FPN_quick shapes/rs_faster_rcnn_R_18_FPN_quick
shapes/rs_cascade_rcnn_R_18_FPN_quick shapes/alrp_loss_retinanet_R_18_FPN_quick
shapes/ap_loss_retinanet_R_18_FPN_quick shapes/rs_atss_R_18_FPN_quick shapes/rs_paa_R_18_FPN_quick
shapes/rs_solov2_R_18_FPN_quick shapes/rs_yolact_R_18_quick shapes_lt/gol_mask_rcnn_R_18_FPN_rfs}"
FP32_CONFIGS=${FP32_CONFIGS:-}
THR0_CONFIGS=${THR0_CONFIGS:-}
INFER_PAIRS=${INFER_PAIRS:-}
T0=$(date +%s)
for f in $FAMILIES; do
  name=$(basename "$f")
  timeout "$AMP_TIMEOUT" $PY tools/train_net.py --config-file "configs/$f.yaml" \
    SOLVER.AMP.ENABLED True MODEL.DEVICE "$DEVICE" SEED 1 DATALOADER.NUM_WORKERS 1 \
    SOLVER.CHECKPOINT_PERIOD 100000 OUTPUT_DIR "$WORK/amp/$name" $EXTRA_OPTS > "$LOGS/amp_$name.log" 2>&1 &
done
for f in $FP32_CONFIGS; do
  name=$(basename "$f")
  thr0=""
  case " $THR0_CONFIGS " in *" $f "*) thr0=1 ;; esac
  timeout "$AMP_TIMEOUT" bash -c "
    $PY tools/train_net.py --config-file configs/$f.yaml MODEL.DEVICE $DEVICE SEED 1 \
      DATALOADER.NUM_WORKERS 1 SOLVER.CHECKPOINT_PERIOD 100000 OUTPUT_DIR $WORK/fp32/$name \
      $EXTRA_OPTS > $LOGS/fp32_$name.log 2>&1
    if [ -n '$thr0' ]; then
      $PY tools/train_net.py --config-file configs/$f.yaml --eval-only MODEL.DEVICE $DEVICE \
        MODEL.WEIGHTS $WORK/fp32/$name/model_final.pth MODEL.RETINANET.SCORE_THRESH_TEST 0.0 \
        OUTPUT_DIR $WORK/thr0/$name > $LOGS/thr0_$name.log 2>&1
    fi" &
done
if [ "${SYNCS:-1}" = 1 ]; then
  SYNC_CONFIGS=""
  for f in ${SYNC_LIST:-$FAMILIES}; do SYNC_CONFIGS="$SYNC_CONFIGS configs/$f.yaml"; done
  timeout "$AMP_TIMEOUT" $PY tools/diagnostics/count_host_syncs.py --config-files $SYNC_CONFIGS \
    > "$LOGS/count_host_syncs.log" 2>&1 &
fi
wait
echo "phase 1 (trainings + sync counts): $(( $(date +%s) - T0 )) s" | tee "$LOGS/times.txt"

# 2. benchmarks, alone on the GPU
T0=$(date +%s)
[ "${LOSSES:-1}" = 1 ] && timeout 120 $PY tools/benchmarks/benchmark_losses.py --devices "$DEVICE" --repeats 10 \
  --sizes "$BENCH_SIZES" > "$LOGS/benchmark_losses.log" 2>&1
echo "benchmark_losses: $(( $(date +%s) - T0 )) s" | tee -a "$LOGS/times.txt"
T0=$(date +%s)
[ "${TRAIN_BENCH:-1}" = 1 ] && timeout "${TRAIN_BENCH_TIMEOUT:-240}" $PY - "$DEVICE" "$BENCH_WARMUP" "$BENCH_ITERS" > "$LOGS/benchmark_train.log" 2>&1 <<'EOF'
import sys
device, warmup, iters = sys.argv[1:4]
sys.path.insert(0, "tools")
import benchmark_train
RS_ATSS_ANCHORS = ["MODEL.ANCHOR_GENERATOR.SIZES",
                   "[[16, 20.158737, 25.398417], [32, 40.317474, 50.796834], "
                   "[64, 80.634947, 101.593667], [128, 161.269894, 203.187335], "
                   "[256, 322.539789, 406.374669]]", "MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS", "[[1.0]]"]
PAIRS = [
    ("shapes/mask_rcnn_R_18_FPN_quick", "shapes/rs_mask_rcnn_R_18_FPN_quick", []),
    ("shapes/faster_rcnn_R_18_FPN_quick", "shapes/rs_faster_rcnn_R_18_FPN_quick", []),
    ("shapes/retinanet_R_18_FPN_quick", "shapes/alrp_loss_retinanet_R_18_FPN_quick",
     ["MODEL.RANKING_RETINANET.SELF_BALANCE_PERIOD", "100"]),
    ("shapes/retinanet_R_18_FPN_quick", "shapes/rs_atss_R_18_FPN_quick", RS_ATSS_ANCHORS),
    ("shapes/solov2_R_18_FPN_quick", "shapes/rs_solov2_R_18_FPN_quick", []),
    ("shapes/yolact_R_18_quick", "shapes/rs_yolact_R_18_quick", []),
    ("shapes_lt/mask_rcnn_R_18_FPN_rfs_softmax", "shapes_lt/gol_mask_rcnn_R_18_FPN_rfs", []),
]
for a, b, opts in PAIRS:
    print(f"\n$ benchmark_train.py --config-a configs/{a}.yaml --config-b configs/{b}.yaml "
          f"--warmup {warmup} --iters {iters} --opts {' '.join(opts)}", flush=True)
    try:
        benchmark_train.main(["--config-a", f"configs/{a}.yaml", "--config-b", f"configs/{b}.yaml",
                              "--warmup", warmup, "--iters", iters, "--device", device,
                              "--opts", *opts])
    except Exception as e:  # one broken pair must not hide the others
        print("FAILED:", type(e).__name__, e, flush=True)
EOF
echo "benchmark_train: $(( $(date +%s) - T0 )) s" | tee -a "$LOGS/times.txt"
T0=$(date +%s)
for pair in $INFER_PAIRS; do
  a=${pair%%:*}; b=${pair##*:}
  echo "\$ benchmark_inference.py --config-a configs/$a.yaml --config-b configs/$b.yaml (trained fp32 weights of phase 1) --num-images 50 --warmup 5" >> "$LOGS/benchmark_inference.log"
  timeout 60 $PY tools/benchmarks/benchmark_inference.py --config-a "configs/$a.yaml" --config-b "configs/$b.yaml" \
    --weights-a "$WORK/fp32/$(basename "$a")/model_final.pth" \
    --weights-b "$WORK/fp32/$(basename "$b")/model_final.pth" --num-images 50 --warmup 5 \
    --device "$DEVICE" >> "$LOGS/benchmark_inference.log" 2>&1
done
echo "benchmark_inference: $(( $(date +%s) - T0 )) s" | tee -a "$LOGS/times.txt"

# summary: per family the last losses, non-finite count, final AP; the benchmark tables
$PY - "$WORK" "$LOGS" > "$OUT/summary.md" 2>&1 <<'EOF'
import glob, json, math, os, re, sys
work, logs = sys.argv[1], sys.argv[2]
print(open(os.path.join(logs, "env.txt")).read())
print(open(os.path.join(logs, "times.txt")).read())
print("## trainings (amp: fp16 AMPTrainer; fp32: seed 1; thr0: eval-only at score threshold 0)\n")
print("| run | config | iterations | non-finite total_loss | last total_loss | result |")
print("|---|---|---|---|---|---|")
logs_found = [(k, p) for k in ("amp", "fp32", "thr0")
              for p in sorted(glob.glob(os.path.join(logs, k + "_*.log")))]
for kind, log in logs_found:
    name = os.path.basename(log)[len(kind) + 1:-4]
    rows = []
    mj = os.path.join(work, kind, name, "metrics.json")
    if os.path.isfile(mj):
        for line in open(mj):
            try:
                rows.append(json.loads(line))
            except ValueError:
                pass
    train = [r for r in rows if "total_loss" in r]
    nonfinite = sum(1 for r in train if not math.isfinite(r["total_loss"]))
    last = train[-1] if train else {}
    text = open(log, errors="replace").read()
    res = re.findall(r"copypaste: (Task: \w+)\n.*?copypaste: ([^\n]+)\n.*?copypaste: ([^\n]+)", text, re.S)
    parts = []
    for task, header, values in res:
        d = dict(zip(header.split(","), values.split(",")))
        parts.append(task[6:] + " " + " ".join(f"{k} {float(d[k]):.1f}" for k in ("AP", "AP50", "oLRP") if k in d))
    result = "; ".join(parts) or (
        "ERROR: " + text.strip().splitlines()[-1][:200] if "Error" in text[-3000:] else "no evaluation")
    print(f"| {kind} | {name} | {last.get('iteration', '-')} | {nonfinite} | "
          f"{last.get('total_loss', float('nan')):.4f} | {result} |")
for f in ("count_host_syncs.log", "benchmark_losses.log", "benchmark_train.log",
          "benchmark_inference.log"):
    path = os.path.join(logs, f)
    if os.path.isfile(path):
        text = "\n".join(l for l in open(path, errors="replace").read().splitlines()
                         if "Warning" not in l and "warn" not in l)
        print(f"\n## {f}\n")
        print(text[-14000:])
EOF
for k in amp fp32 thr0; do cp -r "$WORK/$k" "$LOGS/${k}_outputs" 2>/dev/null; done
find "$LOGS" -name "*.pth" -delete 2>/dev/null
tar -czf "$OUT/logs.tar.gz" -C "$WORK" logs
cat "$OUT/summary.md"
