"""`podkit predict`: a checkpoint or an artefact on the user's own images.

The images go through the evaluation path (`predict_records`: the config's test size, or tiles; the same
loader), so what `predict` draws is what `eval` scores. Writes, under OUT:

- `detections.json`: COCO results (image_id, category_id, bbox xywh, score), every detection
  the model returns (its own score threshold), for scoring with pycocotools;
- `images.json`: the COCO image and category lists those ids refer to (no annotations), so
  `COCO("images.json").loadRes("detections.json")` works as it stands;
- `drawn/NAME`: each image with its boxes, class names and scores at or above
  `score_threshold`; `json/STEM.json` per image on request (same threshold).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from PIL import Image, ImageDraw

from podkit.data.images import find_images, image_records
from podkit.data.records import load_image
from podkit.evaluation.artefacts import open_detector
from podkit.evaluation.evaluate import predict_records, to_coco_results

PALETTE = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6",
           "#bfef45", "#fabed4", "#469990", "#dcbeff", "#9a6324", "#800000", "#000075"]  # fmt: skip


def predict_images(
    model_path: str | Path,
    images: list[str],
    out: Path,
    score_threshold: float = 0.3,
    per_image_json: bool = False,
    draw: bool = True,
    overrides: list[str] | tuple[str, ...] = (),
    progress: Callable[[int], None] | None = None,
    overwrite: bool = False,
) -> dict:
    """Detect on every image; returns a summary (images, detections, files written). Any file
    it would write that exists is refused unless `overwrite`; an input image where a drawing
    or a per-image JSON would go is refused always."""
    files = find_images(images)
    names = output_names(files)
    check_prediction_outputs(out, files, names, draw, per_image_json, overwrite)
    detector, cfg, classes, device = open_detector(model_path, overrides)
    records = image_records(files, cfg.data.max_image_pixels)
    classes = classes or [f"class{i}" for i in range(cfg.model.num_classes)]
    detections, image_ids = predict_records(detector, records, cfg, device, progress)
    category_ids = cfg.model.category_ids or list(range(1, len(classes) + 1))
    out.mkdir(parents=True, exist_ok=True)
    (out / "detections.json").write_text(
        json.dumps(to_coco_results(detections, image_ids, category_ids))
    )
    coco_images = {
        "images": [
            {"id": r.image_id, "file_name": str(r.file), "width": r.width, "height": r.height}
            for r in records
        ],
        "categories": [{"id": i, "name": n} for i, n in zip(category_ids, classes, strict=True)],
        "annotations": [],
    }
    (out / "images.json").write_text(json.dumps(coco_images, indent=1))
    if per_image_json:
        (out / "json").mkdir(exist_ok=True)
    if draw:
        (out / "drawn").mkdir(exist_ok=True)
    shown = 0
    for record, det, name in zip(records, detections, names, strict=True):
        keep = det["scores"] >= score_threshold
        boxes, scores = det["boxes"][keep].tolist(), det["scores"][keep].tolist()
        labels = det["labels"][keep].tolist()
        shown += len(boxes)
        if per_image_json:
            items = [
                {"box": b, "score": s, "label": c, "class": classes[c]}
                for b, s, c in zip(boxes, scores, labels, strict=True)
            ]
            entry = {"file": str(record.file), "width": record.width, "height": record.height}
            (out / "json" / f"{Path(name).stem}.json").write_text(
                json.dumps({**entry, "detections": items}, indent=1)
            )
        if draw:
            drawn = draw_detections(load_image(record.file), boxes, scores, labels, classes)
            drawn.save(out / "drawn" / name)
    return {
        "images": len(records),
        "detections": sum(len(d["scores"]) for d in detections),
        "shown": shown,
        "score_threshold": score_threshold,
        "out": str(out),
    }


def check_prediction_outputs(
    out: Path,
    files: list[Path],
    names: list[str],
    draw: bool,
    per_image_json: bool,
    overwrite: bool,
) -> None:
    """Before any work: no input image inside OUT/drawn or OUT/json (it would be replaced by
    its own drawing, or read back as input next time), and no existing output file replaced
    without `overwrite`."""
    for folder in (out / "drawn", out / "json"):
        inside = [f for f in files if f.resolve().is_relative_to(folder.resolve())]
        if inside:
            raise ValueError(
                f"{inside[0]}: an input image lies in {folder}, where predict writes; move "
                "it or choose another --out"
            )
    written = [out / "detections.json", out / "images.json"]
    written += [out / "drawn" / n for n in names] if draw else []
    written += [out / "json" / f"{Path(n).stem}.json" for n in names] if per_image_json else []
    existing = [w for w in written if w.exists()]
    if existing and not overwrite:
        raise ValueError(
            f"{existing[0]}: exists ({len(existing)} of the files predict writes in {out}); "
            "choose another --out, or pass --overwrite to replace them"
        )


def output_names(files: list[Path]) -> list[str]:
    """A file name per image for drawn/ and json/: its own, or `stem_ID.suffix` where two
    images share a name."""
    counts: dict[str, int] = {}
    for f in files:
        counts[f.name] = counts.get(f.name, 0) + 1
    return [
        f.name if counts[f.name] == 1 else f"{f.stem}_{i}{f.suffix}"
        for i, f in enumerate(files, start=1)
    ]


def draw_detections(
    image: Image.Image, boxes: list, scores: list, labels: list, classes: list[str]
) -> Image.Image:
    """Boxes with `class score` labels, one colour per class."""
    draw = ImageDraw.Draw(image)
    width = max(1, round(max(image.size) / 300))
    for box, score, label in zip(boxes, scores, labels, strict=True):
        colour = PALETTE[label % len(PALETTE)]
        draw.rectangle(box, outline=colour, width=width)
        text = f"{classes[label]} {score:.2f}"
        left, top, right, bottom = draw.textbbox((box[0], box[1]), text)
        lift = bottom - top + 2
        draw.rectangle((left, top - lift, right + 2, bottom - lift), fill=colour)
        draw.text((box[0] + 1, box[1] - lift), text, fill="white")
    return image
