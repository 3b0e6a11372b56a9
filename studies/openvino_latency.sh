#!/bin/bash
# OpenVINO against onnxruntime, every precision side by side in one interleaved run per
# model and size (2 threads, a quiet machine): random-weight R50-FPN and R50-C4 baseline and
# FD (decomposed with weight transfer, studies/pod_speed.py) for the speed, and a trained
# scale-benchmark checkpoint for the AP each artefact keeps (--data); the POD study's trained
# C4 baseline and FD (seed 0), where they exist, for FD / baseline and AP on trained weights.
# Run: bash studies/openvino_latency.sh [TRAINED_CHECKPOINT]   (figures: docs/benchmarks.md)
set -e
PY=.venv/bin/python
OUT=runs/bench/openvino
COMMON="--backend onnxruntime,openvino --precision fp32,bf16,int8 --models baseline,FD --iters 8 --calib 16 --calib-data data/scale --threads 2"
$PY -m studies.deploy_latency --arch faster_rcnn_fpn --size 512 $COMMON --out $OUT/r50fpn_512
$PY -m studies.deploy_latency --arch faster_rcnn_fpn --size 800x1216 $COMMON --out $OUT/r50fpn_800
$PY -m studies.deploy_latency --arch faster_rcnn_c4 --size 512 $COMMON --out $OUT/r50c4_512
$PY -m studies.deploy_latency --arch faster_rcnn_c4 --size 800x1216 $COMMON --out $OUT/r50c4_800
if [ -n "$1" ]; then
  .venv/bin/podkit bench latency "$1" --backend onnxruntime,openvino --precision fp32,bf16,int8 \
      --input-size 448x640 --iters 8 --threads 2 --calib 32 --data --cache-dir $OUT/cache \
      --out $OUT/trained.json --md $OUT/trained.md --overwrite
fi
BASE=runs/study/c4_baseline/seed0/last.pt
FD=runs/study/c4_fd/seed0/last.pt
if [ -f "$BASE" ] && [ -f "$FD" ]; then
  .venv/bin/podkit bench latency "$BASE" "$FD" --labels baseline,FD \
      --backend onnxruntime,openvino --precision fp32,bf16,int8 --input-size 448x640 --iters 8 \
      --threads 2 --calib 32 --data --cache-dir $OUT/c4_cache \
      --out $OUT/c4_trained.json --md $OUT/c4_trained.md --overwrite
fi
