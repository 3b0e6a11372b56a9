#!/usr/bin/env bash
# The GPU path in one command (`make gpu-check`), on a machine with an NVIDIA GPU:
#   1. the CUDA tests (tests/gpu: AMP training steps, nccl DDP over the GPUs present, the
#      onnxruntime CUDA provider, TVM `cuda`, torch.compile), each against its reference;
#   2. baseline / GSL / FD latency (R50-FPN, 512x512) on every GPU backend installed
#      (torch, torch.compile, onnxruntime CUDA, TensorRT when present), batch 1 and 8,
#      FP32 and FP16, timed side by side.
# Usage: studies/gpu_check.sh [OUT] [WORK]. Figures go to OUT (default runs/gpu_check): env.txt,
# tests.log, report_b1.md/.json, report_b8.md/.json, deploy_b*.log; the checkpoints and
# artefacts to WORK (default OUT/work). BATCHES="1" runs one batch size only.
# Uses the Python on PATH (a CUDA build of torch), not the CPU venv; podkit from this tree.
set -u
OUT=${1:-runs/gpu_check}
WORK=${2:-$OUT/work}
PY=${PYTHON:-python3}
mkdir -p "$OUT" "$WORK"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.device_count(), 'GPUs')"
  for m in onnxruntime tvm tensorrt; do
    $PY -c "import $m; print('$m', $m.__version__, getattr($m, 'get_available_providers', lambda: '')())" 2>&1 | tail -1
  done
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"
$PY -m pytest tests/gpu -v -p no:cacheprovider 2>&1 | tee "$OUT/tests.log" | tail -15
BACKENDS=torch,torch-compile,onnxruntime
$PY -c "import tensorrt" 2>/dev/null && BACKENDS=$BACKENDS,tensorrt
for B in ${BATCHES:-1 8}; do
  $PY -m studies.deploy_latency --device cuda --backend $BACKENDS --precision fp32,fp16 \
    --batch $B --size 512 --iters 50 --out "$WORK/deploy_b$B" > "$OUT/deploy_b$B.log" 2>&1 \
    && cp "$WORK/deploy_b$B/report.md" "$OUT/report_b$B.md" \
    && cp "$WORK/deploy_b$B/report.json" "$OUT/report_b$B.json" \
    || { echo "latency at batch $B failed: see $OUT/deploy_b$B.log"; tail -5 "$OUT/deploy_b$B.log"; }
done
cat "$OUT"/report_b*.md 2>/dev/null
