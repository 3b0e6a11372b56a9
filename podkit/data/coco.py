"""COCO-format data sets: one json with images, annotations and categories."""

from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path

import numpy as np
from pycocotools.coco import COCO

from podkit.data.records import DEFAULT_MAX_PIXELS, BoxReport, Record, check_image, clean_boxes


def read_coco_json(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: annotation file not found")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(
            f"{path}: malformed JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
        ) from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not a COCO annotation file (the top level is not an object)")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise ValueError(f"{path}: not a COCO annotation file (no {key!r} list)")
    for key, what in (
        ("images", "image"),
        ("annotations", "annotation"),
        ("categories", "category"),
    ):
        seen = set()
        for entry in data[key]:
            if not isinstance(entry, dict) or "id" not in entry:
                raise ValueError(f"{path}: an entry of {key!r} has no id: {str(entry)[:80]}")
            if entry["id"] in seen:  # pycocotools would keep the last silently: wrong AP
                raise ValueError(f"{path}: duplicate {what} id {entry['id']!r}")
            seen.add(entry["id"])
    return data


def check_bbox(bbox, source: Path, ann_id) -> list[float]:
    """A COCO bbox must be 4 finite numbers (not strings, booleans or NaN)."""
    ok = isinstance(bbox, list) and len(bbox) == 4
    ok = ok and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in bbox)
    if not ok or not all(math.isfinite(v) for v in bbox):
        raise ValueError(
            f"{source}: annotation {ann_id} has no [x, y, w, h] bbox of 4 finite numbers: {bbox!r}"
        )
    return bbox


def image_path(folder: Path, file_name, source: Path, image_id) -> Path:
    """The image inside `folder`: a file_name that is absolute or climbs out is refused."""
    if not isinstance(file_name, str) or not file_name:
        raise ValueError(f"{source}: image {image_id} has no file_name")
    relative = Path(file_name)
    if relative.is_absolute() or ".." in relative.parts:
        raise ValueError(
            f"{source}: image {image_id} file_name {file_name!r} points outside the image folder"
        )
    return folder / relative


def size_mismatch(ann, mismatched: list) -> str:
    """One line for images whose declared width/height differ from the file's (as displayed):
    the boxes were drawn on other pixels (images resized after labelling, or an EXIF
    orientation the labelling ignored)."""
    image_id, path, (dw, dh), (w, h) = mismatched[0]
    why = (
        " (the file's EXIF orientation turns it; boxes must be in the displayed frame)"
        if (dw, dh) == (h, w)
        else " (resized after labelling?)"
    )
    more = f"; {len(mismatched)} images disagree" if len(mismatched) > 1 else ""
    return (
        f"{ann}: image id {image_id} ({path}) is declared {dw}x{dh} but the file is "
        f"{w}x{h}{why}{more}"
    )


def load_coco(
    ann: str | Path, images: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS
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
        check_bbox(a.get("bbox"), ann, a.get("id"))
        by_image.setdefault(a["image_id"], []).append(a)
    report = BoxReport()
    records, mismatched = [], []
    for im in data["images"]:
        path = image_path(images, im.get("file_name"), ann, im["id"])
        width, height = check_image(path, f"{ann}: image id {im['id']}", max_pixels)
        declared = (im.get("width"), im.get("height"))
        if None not in declared and declared != (width, height):
            mismatched.append((im["id"], path, declared, (width, height)))
        anns = by_image.get(im["id"], [])
        xywh = np.array([a["bbox"] for a in anns], np.float32).reshape(-1, 4)
        xyxy = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
        crowd = np.array([bool(a.get("iscrowd", 0)) for a in anns], bool)
        labels = np.array([label_of[a["category_id"]] for a in anns], np.int64)
        ids = [a.get("id") for a in anns if not a.get("iscrowd", 0)]
        boxes, keep = clean_boxes(xyxy[~crowd], width, height, report, ids)
        ignore, _ = clean_boxes(xyxy[crowd], width, height, BoxReport())
        records.append(Record(im["id"], path, width, height, boxes, labels[~crowd][keep], ignore))
    if mismatched:
        raise ValueError(size_mismatch(ann, mismatched))
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        api = COCO(str(ann))
    return records, [c["name"] for c in categories], cat_ids, report, api
