"""Pascal VOC layout: one XML file per image (Annotations/) and an image folder."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from podkit.data.records import DEFAULT_MAX_PIXELS, BoxReport, Record, check_image, clean_boxes


def _parse(xml_path: Path) -> tuple[str, list[tuple[str, list[float], bool]]]:
    try:
        root = ET.parse(xml_path).getroot()
    except ET.ParseError as exc:
        raise ValueError(f"{xml_path}: malformed XML ({exc})") from exc
    filename = root.findtext("filename")
    if not filename:
        raise ValueError(f"{xml_path}: no <filename>")
    objects = []
    for obj in root.iter("object"):
        name = (obj.findtext("name") or "").strip()
        box = obj.find("bndbox")
        if not name or box is None:
            raise ValueError(f"{xml_path}: an <object> without <name> or <bndbox>")
        try:
            # VOC pixel indices are 1-based and inclusive: x1 - 1 .. x2 in 0-based continuous coordinates
            coords = [float(box.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")]
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{xml_path}: object {name!r} has a non-numeric bndbox") from exc
        coords[0] -= 1
        coords[1] -= 1
        objects.append((name, coords, (obj.findtext("difficult") or "0").strip() == "1"))
    return filename, objects


def load_voc(
    ann_dir: str | Path,
    images: str | Path,
    classes: list[str] | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> tuple[list[Record], list[str], BoxReport, bool]:
    """Records and class names; `classes` None discovers them (sorted); returns whether it did.

    Difficult objects become ignore regions, as in VOC evaluation.
    """
    ann_dir, images = Path(ann_dir), Path(images)
    if not ann_dir.is_dir():
        raise FileNotFoundError(f"{ann_dir}: VOC annotation folder not found")
    xml_files = sorted(ann_dir.glob("*.xml"))
    if not xml_files:
        raise ValueError(f"{ann_dir}: no .xml files")
    parsed = [(p, *_parse(p)) for p in xml_files]
    discovered = classes is None
    if discovered:
        classes = sorted({name for _, _, objs in parsed for name, _, _ in objs})
    label_of = {name: i for i, name in enumerate(classes)}
    report = BoxReport()
    records = []
    for image_id, (xml_path, filename, objects) in enumerate(parsed):
        path = images / filename
        width, height = check_image(path, str(xml_path), max_pixels)
        for name, _, _ in objects:
            if name not in label_of:
                raise ValueError(
                    f"{xml_path}: unknown category {name!r} (classes: {', '.join(classes)})"
                )
        normal = [o for o in objects if not o[2]]
        boxes, keep = clean_boxes(
            np.array([o[1] for o in normal], np.float32), width, height, report
        )
        labels = np.array([label_of[o[0]] for o in normal], np.int64)[keep]
        ignore, _ = clean_boxes(
            np.array([o[1] for o in objects if o[2]], np.float32), width, height, BoxReport()
        )
        records.append(Record(image_id, path, width, height, boxes, labels, ignore))
    return records, classes, report, discovered
