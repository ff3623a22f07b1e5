#!/usr/bin/env bash
# Scripted, idempotent install of rsloss_d2 and its dependencies into .venv/ at the repository root.
#
#   bash tools/install.sh            # create/update .venv and install everything
#
# Steps: venv -> torch/torchvision -> pinned requirements -> detectron2's Python package taken
# from the cp310-tagged sal-detectron2 wheel (without its cp310 `_C` binary) -> rsloss_d2 (editable)
# -> the `deploy` extra (onnx, onnxruntime).
# Fails loudly on any error and ends by importing detectron2 and rsloss_d2.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null || PY=python3
"$PY" -c 'import sys; assert sys.version_info[:2] == (3, 11), "rsloss_d2 needs Python 3.11, got %s" % sys.version' \
  || { echo "install.sh: Python 3.11 is required (set PYTHON=/path/to/python3.11)" >&2; exit 1; }

START=$(date +%s)
if [ ! -x .venv/bin/python ]; then
  echo "[install] creating .venv with $PY"
  "$PY" -m venv .venv
fi
VPY="$ROOT/.venv/bin/python"
export PIP_DISABLE_PIP_VERSION_CHECK=1

echo "[install] torch + torchvision"
"$VPY" -m pip install -q -c constraints.txt "torch==2.14.1" "torchvision==0.29.1"

echo "[install] pinned requirements"
"$VPY" -m pip install -q -r requirements.txt -c constraints.txt
# lvis 0.5.3 asks for opencv-python (GUI build), which would clash with opencv-python-headless:
# its real needs (numpy, matplotlib, pycocotools-free API, six, dateutil) are all pinned above.
"$VPY" -m pip install -q --no-deps "lvis==0.5.3"

D2_VERSION=0.7.2
SITE="$("$VPY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
if ! "$VPY" -c "import detectron2, sys; sys.exit(0 if detectron2.__version__ == '$D2_VERSION' else 1)" 2>/dev/null; then
  echo "[install] detectron2 $D2_VERSION (pure-Python part of the sal-detectron2 wheel)"
  TMP="$(mktemp -d)"
  trap 'rm -rf "$TMP"' EXIT
  "$VPY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.10 \
      -d "$TMP" "sal-detectron2==$D2_VERSION"
  "$VPY" - "$TMP" "$SITE" <<'PYEOF'
import glob, os, shutil, sys, zipfile
tmp, site = sys.argv[1], sys.argv[2]
whl = glob.glob(os.path.join(tmp, "sal_detectron2-*.whl"))
assert len(whl) == 1, whl
dst = os.path.join(site, "detectron2")
shutil.rmtree(dst, ignore_errors=True)
n = 0
with zipfile.ZipFile(whl[0]) as z:
    for name in z.namelist():
        # only the detectron2/ package; the cp310 extension module cannot load on 3.11
        if not name.startswith("detectron2/") or name.endswith(".so"):
            continue
        z.extract(name, site)
        n += 1
print(f"[install] extracted {n} files of detectron2 into {site}")
PYEOF
fi

echo "[install] rsloss_d2 (editable)"
"$VPY" -m pip install -q --no-deps --no-build-isolation -e .

echo "[install] deploy extra: onnx, onnxruntime (tools/deploy; versions from constraints.txt)"
"$VPY" -m pip install -q -c constraints.txt onnx onnxruntime

"$VPY" -c "import detectron2, rsloss_d2, torch, torchvision; print('[install] ok: detectron2', detectron2.__version__, '| rsloss_d2', rsloss_d2.__version__, '| torch', torch.__version__)"
echo "[install] done in $(( $(date +%s) - START )) s"
