"""The exported R50-FPN's onnxruntime latency for the podkit checkout at CHECKOUT: compare two
commits side by side (alternate the runs) when a change touches the exported graph.

Run:
    git worktree add /tmp/old COMMIT
    for r in old new old new; do d=/tmp/old; [ $r = new ] && d=$PWD
        .venv/bin/python bench/checkout_export_latency.py $d $r; done

R50-FPN with random weights (the RPN still keeps its 1000 proposals, so the R-CNN stage does
its full work), 512x512, batch 1, 2 intra-op threads; prints the median of 8 runs after 2
warm-up runs and the graph's RoiAlign / NonZero node counts.
"""

import statistics
import sys
import time

import numpy as np
import onnx
import onnxruntime as ort
import torch

checkout, label = sys.argv[1], sys.argv[2]
sys.path.insert(0, checkout)  # that checkout's podkit, not the installed one

from podkit.config import load_config  # noqa: E402
from podkit.export.onnx import export  # noqa: E402
from podkit.models import build_detector  # noqa: E402

cfg = load_config(
    f"{checkout}/podkit/configs/faster_rcnn_r50_fpn_1x.yaml", ["model.backbone_weights=null"]
)
torch.manual_seed(0)
path = f"/tmp/checkout_export_{label}.onnx"
export(build_detector(cfg.model).eval(), path, (512, 512))
options = ort.SessionOptions()
options.intra_op_num_threads = 2
session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
feed = {session.get_inputs()[0].name: np.random.rand(1, 3, 512, 512).astype(np.float32)}
for _ in range(2):
    session.run(None, feed)
times = []
for _ in range(8):
    start = time.perf_counter()
    session.run(None, feed)
    times.append(time.perf_counter() - start)
ops = [n.op_type for n in onnx.load(path).graph.node]
print(f"{label}: median {statistics.median(times):.3f} s, RoiAlign nodes {ops.count('RoiAlign')}, "
      f"NonZero {ops.count('NonZero')}")  # fmt: skip
