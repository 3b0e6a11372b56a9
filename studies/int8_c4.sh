# INT8 / FP32 AP of the POD study's trained C4 checkpoints (seed 0) on onnxruntime, and the any-batch INT8 path.
# Run after `python -m studies.study pod` has trained c4, c4_gsl and c4_fdwt (docs/benchmarks.md).
set -x
K=.venv/bin/podkit
S=runs/study
O=runs/int8c4
mkdir -p $O
$K bench latency $S/c4_baseline/seed0/last.pt $S/c4_gsl/seed0/last.pt $S/c4_fdwt/seed0/last.pt --labels baseline,GSL,FD-WT --backend onnxruntime --precision fp32,int8 --input-size 640x640 --warmup 1 --iters 2 --calib 64 --data --cache-dir $O/cache --out $O/report.json --md $O/report.md
$K export $S/c4_baseline/seed0/last.pt --target onnx --dynamic-batch --int8 --calib 64 --input-size 640x640 --out $O/c4_anybatch_int8.onnx
$K eval $O/c4_anybatch_int8.onnx --out $O/c4_anybatch_int8_eval.json
$K export $S/c4_baseline/seed0/last.pt --target onnx --dynamic-batch --input-size 640x640 --out $O/c4_anybatch.onnx
$K eval $O/c4_anybatch.onnx --out $O/c4_anybatch_eval.json
# each at its own sizes (--dynamic): is a FP32 static artefact's AP gap the 640x640 canvas?
for arm in c4_baseline c4_gsl c4_fdwt; do
  $K export $S/$arm/seed0/last.pt --target onnx --dynamic --input-size 640x640 --out $O/${arm}_dynamic.onnx
  $K eval $O/${arm}_dynamic.onnx --out $O/${arm}_dynamic_eval.json
done
