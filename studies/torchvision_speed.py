"""podkit against torchvision on the same Faster R-CNN R50-FPN weights: eager inference and
one training step (forward + backward) in PyTorch, and each one's ONNX export on
onnxruntime, the two timed side by side in one interleaved run (podkit.bench.latency).

torchvision does not load beside podkit's CPU torch, so this runs in the environment that
builds the converter's reference (studies/torchvision_reference.py), with podkit on the path:
    ~/tvref/bin/pip install pyyaml onnxscript pillow rich typer onnxruntime
    PYTHONPATH=. ~/tvref/bin/python -m studies.torchvision_speed --size 800x1216 --iters 10

The weights are regenerated from each tensor's name (studies/reference_inputs.py), saved as
torchvision lays them out and converted by `podkit convert`; both models see the same image
(a generated scene at SIZE, a multiple of 32, so neither resizes or pads). Training: both
with the stem and res2 frozen (podkit's freeze_at 2), one image, four boxes. ONNX:
torchvision's documented path (`torch.onnx.export(model, [image], opset_version=11)`,
the TorchScript exporter) and podkit's exporter (opset 18, NMS in the graph).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
import torchvision

from podkit.bench.latency import time_interleaved
from podkit.convert import convert_weights
from podkit.export import onnx as podkit_onnx
from podkit.models.checkpoint import load_detector
from podkit.ops.image_batch import ImageBatch
from studies.reference_inputs import scene
from studies.torchvision_reference import build

ARCH = "fasterrcnn_resnet50_fpn"
# training boxes as fractions of the image (x1, y1, x2, y2)
BOXES = [
    [0.05, 0.08, 0.25, 0.3],
    [0.4, 0.15, 0.55, 0.5],
    [0.65, 0.6, 0.72, 0.68],
    [0.1, 0.5, 0.6, 0.9],
]


def session(path: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--size", default="800x1216", help="HxW, multiples of 32")
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="JSON of the timings")
    args = parser.parse_args()
    h, w = (int(x) for x in args.size.split("x"))
    torch.set_num_threads(args.threads)
    folder = Path(tempfile.mkdtemp(prefix="tv-speed-"))
    theirs = build(ARCH, (h, w))
    torch.save(theirs.state_dict(), folder / "tv.pth")
    convert_weights(folder / "tv.pth", "torchvision", ARCH, folder / "podkit.pt", log=print)
    ours, _, _, _ = load_detector(folder / "podkit.pt")
    ours.eval()
    image = torch.from_numpy(scene(1, h, w)).permute(2, 0, 1).contiguous()
    batch = ImageBatch.from_tensors([image], 32)

    def tv_eval():
        with torch.inference_mode():
            return theirs([image])

    def podkit_eval():
        with torch.inference_mode():
            return ours(batch)

    rows = {}
    print("eager inference ...", flush=True)
    times = time_interleaved([tv_eval, podkit_eval], args.iters)
    rows["eager inference"] = times

    boxes = torch.tensor(BOXES) * torch.tensor([w, h, w, h], dtype=torch.float32)
    for name, p in theirs.named_parameters():  # podkit's freeze_at 2: stem and res2 frozen
        p.requires_grad_(not name.startswith(("backbone.body.conv1", "backbone.body.layer1")))
    target_tv = [{"boxes": boxes, "labels": torch.tensor([1, 3, 18, 62])}]
    target_pk = [{"boxes": boxes, "labels": torch.tensor([0, 2, 17, 61])}]

    def tv_train():
        theirs.train()
        losses = theirs([image], target_tv)
        sum(losses.values()).backward()
        theirs.zero_grad(set_to_none=True)

    def podkit_train():
        ours.train()
        losses = ours(batch, target_pk).losses
        sum(losses.values()).backward()
        ours.zero_grad(set_to_none=True)

    print("training step ...", flush=True)
    rows["training step (forward + backward)"] = time_interleaved(
        [tv_train, podkit_train], max(args.iters // 2, 3)
    )
    theirs.eval()
    ours.eval()

    print("ONNX exports ...", flush=True)
    tv_onnx, pk_onnx = folder / "tv.onnx", folder / "podkit.onnx"
    torch.onnx.export(theirs, ([image],), str(tv_onnx), opset_version=11, dynamo=False)
    podkit_onnx.export(ours.cpu(), pk_onnx, (h, w))
    tv_session, pk_session = session(tv_onnx, args.threads), session(pk_onnx, args.threads)
    tv_in = {tv_session.get_inputs()[0].name: image.numpy()}
    pk_in = {pk_session.get_inputs()[0].name: image[None].numpy()}
    tv_out, pk_out = tv_session.run(None, tv_in), pk_session.run(None, pk_in)
    print(f"ONNX detections: torchvision {len(tv_out[1])}, podkit {int(pk_out[-1][0])}")
    rows["onnxruntime inference"] = time_interleaved(
        [lambda: tv_session.run(None, tv_in), lambda: pk_session.run(None, pk_in)], args.iters
    )

    report = {
        "size": [h, w], "threads": args.threads, "iters": args.iters,
        "versions": {"torch": torch.__version__, "torchvision": torchvision.__version__,
                     "onnxruntime": ort.__version__},
        "median_ms": {k: {"torchvision": statistics.median(v[0]), "podkit": statistics.median(v[1])}
                      for k, v in rows.items()},
    }  # fmt: skip
    print(
        f"| {h}x{w}, {args.threads} threads | torchvision ms | podkit ms | podkit / torchvision |"
    )
    print("|---|---|---|---|")
    for name, m in report["median_ms"].items():
        ratio = m["podkit"] / m["torchvision"]
        print(f"| {name} | {m['torchvision']:.0f} | {m['podkit']:.0f} | {ratio:.2f} |")
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))
    np.testing.assert_equal(len(tv_out), 3)


if __name__ == "__main__":
    main()
