"""Large images: whole-image inference at the recipe's test size against sliced inference
(podkit's --tile, with and without the whole-image pass) and against SAHI's own slicing
(`sahi.predict.get_sliced_prediction` driving the same podkit model), on the aerial preset.

Run (resumable: the data, the trained checkpoint and each finished evaluation are kept):
    .venv/bin/python -m studies.aerial_study --out runs/aerial             # data + training
    .venv/bin/python -m studies.aerial_study --out runs/aerial --evaluate  # AP and latency

Setup. `podkit data synth --preset aerial` (2000-4000 px images, 30-90 objects of 6-40 px, a
few of 40-120 px, some of 300-900 px); the scale benchmark's Faster R-CNN recipe trained on
tiles (`data.tile`: 320 px, overlap 0.2, a box less than half inside a tile ignored) fed at
their own pixels. Every method is scored with pycocotools on the same validation images
(COCO's protocol: the 100 best detections per image) and timed per image, the methods
taking turns image by image (podkit.bench.latency.time_interleaved), on a quiet machine.
SAHI runs with its defaults for merging (GREEDYNMM, IOS 0.5) and the model's own score
threshold; its standard (whole-image) pass is fed at the recipe's test size, as podkit's.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from podkit.bench.latency import time_interleaved
from podkit.config import load_config
from podkit.data import load_dataset
from podkit.data.records import load_image
from podkit.data.synthetic import preset_style, write_split
from podkit.data.transforms import to_tensor
from podkit.evaluation.evaluate import coco_metrics, predict_at, predict_tiled, to_coco_results
from podkit.models.checkpoint import load_detector
from podkit.ops.image_batch import ImageBatch
from podkit.train.loop import train

ROOT = Path(__file__).resolve().parents[1]
TILE, OVERLAP = 320, 0.2
KEYS = ("AP", "AP50", "APs", "APm", "APl")


def recipe(data: Path, iters: int, extra: list[str] = ()) -> object:
    sets = [f"data.{s}.{k}={data}/{p}" for s in ("train", "val")
            for k, p in (("ann", f"annotations/{s}.json"), ("images", s))]  # fmt: skip
    return load_config(ROOT / "configs/scale/faster_rcnn_fpn.yaml", [
        *sets, f"data.tile={{size: {TILE}, overlap: {OVERLAP}, min_visible: 0.5}}",
        f"data.min_size=[{TILE}]", "data.test_min_size=800", "data.max_size=1333",
        f"train.max_iter={iters}", "train.eval_every=0", "data.val.ann=", *extra,
    ])  # fmt: skip


def prepare(
    out: Path, train_images: int, val_images: int, iters: int, init: Path | None, sets: list[str]
) -> Path:
    data = out / "data"
    for split, count in (("train", train_images), ("val", val_images)):
        if not (data / "annotations" / f"{split}.json").exists():
            write_split(data, split, count, preset_style("aerial"), seed=0)
    run = out / "run"
    if not (run / "done").exists():
        extra = [f"model.init_from={init.resolve()}"] if init else []
        cfg = recipe(data, iters, [*extra, *sets])
        train(cfg, run, resume=(run / "last.pt").exists(), overwrite=True)
        (run / "done").write_text("1\n")
    return run / "last.pt"


def sahi_model(model, cfg):
    """The podkit detector as a SAHI DetectionModel: a slice is fed at its own pixels; an
    image larger than a slice (SAHI's standard pass) at the recipe's test size."""
    from sahi.models.base import DetectionModel
    from sahi.prediction import ObjectPrediction

    class PodkitModel(DetectionModel):
        def load_model(self):
            pass

        def set_model(self, model, **kwargs):
            self.model = model

        def perform_inference(self, image: np.ndarray) -> None:
            pil = Image.fromarray(image)
            h, w = image.shape[:2]
            if max(h, w) > TILE:
                scale = min(cfg.data.test_min_size / min(h, w), cfg.data.max_size / max(h, w))
                pil = pil.resize((round(w * scale), round(h * scale)), Image.BILINEAR)
            pixels = to_tensor(pil)
            batch = ImageBatch.from_tensors([pixels], 32)
            batch.original_sizes = [(h, w)]
            with torch.inference_mode():
                self._original_predictions = self.model(batch).detections

        def _create_object_prediction_list_from_original_predictions(
            self, shift_amount_list=None, full_shape_list=None
        ):
            shift, full = shift_amount_list or [0, 0], full_shape_list
            while isinstance(shift[0], (list, tuple)):  # [[x, y]] or [x, y], by SAHI's caller
                shift = shift[0]
            while full is not None and isinstance(full[0], (list, tuple)):
                full = full[0]
            det = self._original_predictions[0]
            self._object_prediction_list_per_image = [[
                ObjectPrediction(bbox=b, category_id=int(c), score=float(s),
                                 shift_amount=shift, full_shape=full)
                for b, s, c in zip(det["boxes"].tolist(), det["scores"].tolist(),
                                   det["labels"].tolist(), strict=True)
                if s >= self.confidence_threshold
            ]]  # fmt: skip

    threshold = cfg.model.roi_heads.score_threshold
    detector = PodkitModel(confidence_threshold=threshold, load_at_init=False)
    detector.set_model(model)
    return detector


def evaluate(out: Path, checkpoint: Path, limit: int | None) -> dict:
    from sahi.predict import get_sliced_prediction

    model, cfg, _, device = load_detector(checkpoint)
    model.eval()
    data = out / "data"
    cfg_val = recipe(data, 1, [f"data.val.ann={data}/annotations/val.json"])
    dataset = load_dataset(cfg_val.data.val, cfg_val.data.max_image_pixels)
    records = dataset.records[:limit] if limit else dataset.records
    cfg.data.test_min_size, cfg.data.max_size = 800, 1333
    tiled_cfg = load_config(None, [f"eval.tile={{size: {TILE}, overlap: {OVERLAP}}}"]).eval.tile
    whole_cfg = load_config(
        None, [f"eval.tile={{size: {TILE}, overlap: {OVERLAP}, whole: true}}"]
    ).eval.tile
    detector = sahi_model(model, cfg)
    found: dict[str, list] = {
        k: [] for k in ("whole", "tiled", "tiled + whole", "SAHI", "SAHI + whole")
    }
    times: dict[str, list] = {k: [] for k in found}

    def podkit_run(record, tile):
        cfg.eval.tile = tile
        if tile is None:
            return predict_at(model, [record], cfg, device, 800, 1333)[0][0]
        return predict_tiled(model, [record], cfg, device)[0][0]

    def sahi_run(record, standard):
        result = get_sliced_prediction(
            np.asarray(load_image(record.file)), detector, TILE, TILE, OVERLAP, OVERLAP,
            perform_standard_pred=standard, verbose=0,
        )  # fmt: skip
        preds = result.object_prediction_list
        return {
            "boxes": torch.tensor([p.bbox.to_xyxy() for p in preds]).reshape(-1, 4),
            "scores": torch.tensor([p.score.value for p in preds]),
            "labels": torch.tensor([p.category.id for p in preds], dtype=torch.int64),
        }

    for i, record in enumerate(records):
        calls = {
            "whole": lambda r=record: podkit_run(r, None),
            "tiled": lambda r=record: podkit_run(r, tiled_cfg),
            "tiled + whole": lambda r=record: podkit_run(r, whole_cfg),
            "SAHI": lambda r=record: sahi_run(r, False),
            "SAHI + whole": lambda r=record: sahi_run(r, True),
        }
        outputs = {name: call() for name, call in calls.items()}  # also the warm-up
        ms = time_interleaved(list(calls.values()), 1, warmup=0)
        for (name, det), t in zip(outputs.items(), ms, strict=True):
            found[name].append(det)
            times[name].append(t[0])
        print(f"image {i + 1}/{len(records)}: " + ", ".join(
            f"{k} {v[-1]:.0f} ms" for k, v in times.items()), flush=True)  # fmt: skip
    ids = [r.image_id for r in records]
    report = {}
    for name, dets in found.items():
        metrics = coco_metrics(dataset.coco, to_coco_results(dets, ids, dataset.category_ids), ids)
        report[name] = {
            **{k: metrics[k] for k in KEYS},
            "ms_per_image": statistics.median(times[name]),
        }
    return report


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("runs/aerial"))
    parser.add_argument("--train-images", type=int, default=40)
    parser.add_argument("--val-images", type=int, default=12)
    parser.add_argument("--iters", type=int, default=1500)
    parser.add_argument(
        "--init", type=Path, default=None, help="weights to start from (model.init_from)"
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="K=V",
        help="recipe overrides, e.g. train.amp=false (a CPU without bf16)",
    )
    parser.add_argument("--evaluate", action="store_true", help="score and time the methods")
    parser.add_argument("--limit", type=int, default=None, help="validation images to use")
    args = parser.parse_args()
    torch.set_num_threads(2)
    checkpoint = prepare(
        args.out, args.train_images, args.val_images, args.iters, args.init, args.overrides
    )
    if not args.evaluate:
        return
    report = evaluate(args.out, checkpoint, args.limit)
    (args.out / "report.json").write_text(json.dumps(report, indent=2))
    print("| method | " + " | ".join(KEYS) + " | ms / image |")
    print("|---" * (len(KEYS) + 2) + "|")
    for name, row in report.items():
        cells = " | ".join("-" if row[k] is None else f"{row[k]:.1f}" for k in KEYS)
        print(f"| {name} | {cells} | {row['ms_per_image']:.0f} |")


if __name__ == "__main__":
    main()
