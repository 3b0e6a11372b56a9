"""COCO-format data sets: one json with images, annotations and categories."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
from pycocotools.coco import COCO

from podkit.data.records import BoxReport, Record, check_image, clean_boxes


def read_coco_json(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: annotation file not found")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(
            f"{path}: malformed JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
        ) from exc
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise ValueError(f"{path}: not a COCO annotation file (no {key!r} list)")
    return data


def load_coco(
    ann: str | Path, images: str | Path
) -> tuple[list[Record], list[str], list[int], BoxReport, COCO]:
    """Records, class names, the COCO category id of each label, the box report, and the COCO api.

    Categories map to contiguous labels in order of category id; crowd boxes become ignore
    regions; images without boxes stay (as negatives).
    """
    ann, images = Path(ann), Path(images)
    data = read_coco_json(ann)
    categories = sorted(data["categories"], key=lambda c: c["id"])
    cat_ids = [c["id"] for c in categories]
    label_of = {cid: i for i, cid in enumerate(cat_ids)}
    by_image: dict[int, list[dict]] = {}
    image_ids = {im["id"] for im in data["images"]}
    for a in data["annotations"]:
        if a.get("category_id") not in label_of:
            raise ValueError(
                f"{ann}: annotation {a.get('id')} has unknown category {a.get('category_id')!r}"
            )
        if a.get("image_id") not in image_ids:
            raise ValueError(
                f"{ann}: annotation {a.get('id')} refers to unknown image {a.get('image_id')!r}"
            )
        if not (isinstance(a.get("bbox"), list) and len(a["bbox"]) == 4):
            raise ValueError(f"{ann}: annotation {a.get('id')} has no [x, y, w, h] bbox")
        by_image.setdefault(a["image_id"], []).append(a)
    report = BoxReport()
    records = []
    for im in data["images"]:
        path = images / im["file_name"]
        width, height = check_image(path, str(ann))
        anns = by_image.get(im["id"], [])
        xywh = np.array([a["bbox"] for a in anns], np.float32).reshape(-1, 4)
        xyxy = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
        crowd = np.array([bool(a.get("iscrowd", 0)) for a in anns], bool)
        labels = np.array([label_of[a["category_id"]] for a in anns], np.int64)
        boxes, keep = clean_boxes(xyxy[~crowd], width, height, report)
        ignore, _ = clean_boxes(xyxy[crowd], width, height, BoxReport())
        records.append(Record(im["id"], path, width, height, boxes, labels[~crowd][keep], ignore))
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        api = COCO(str(ann))
    return records, [c["name"] for c in categories], cat_ids, report, api
