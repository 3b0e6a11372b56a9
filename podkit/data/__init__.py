"""Data: COCO / VOC / built-in synthetic sets -> records -> batches."""

from __future__ import annotations

from dataclasses import dataclass

from pycocotools.coco import COCO

from podkit.config import DatasetConfig
from podkit.data.coco import load_coco
from podkit.data.records import DEFAULT_MAX_PIXELS, BoxReport, Record
from podkit.data.voc import load_voc


@dataclass
class LoadedDataset:
    """Records plus what evaluation needs: class names and the COCO ground truth."""

    records: list[Record]
    classes: list[str]
    category_ids: list[int]  # COCO category id of each label (1-based for VOC)
    coco: COCO | None  # the original annotations (COCO sets); None: built from records
    source: str
    notes: list[str]  # box-cleaning report, discovered classes: printed once at start
    report: BoxReport  # what cleaning did to the boxes (clipped, dropped)


def load_dataset(cfg: DatasetConfig, max_pixels: int = DEFAULT_MAX_PIXELS) -> LoadedDataset:
    """The split `cfg` names; images over `max_pixels` (data.max_image_pixels) are refused."""
    if not cfg.ann:
        raise ValueError("no annotation path: set data.train.ann / data.val.ann")
    notes = []
    if cfg.format == "coco":
        records, classes, cat_ids, report, api = load_coco(cfg.ann, cfg.images, max_pixels)
        if cfg.classes is not None and list(cfg.classes) != classes:
            raise ValueError(
                f"{cfg.ann}: categories {classes} differ from data classes {cfg.classes}"
            )
    else:
        records, classes, report, discovered = load_voc(
            cfg.ann, cfg.images, cfg.classes, max_pixels
        )
        cat_ids, api = list(range(1, len(classes) + 1)), None
        if discovered:
            notes.append(f"{cfg.ann}: discovered {len(classes)} classes: {', '.join(classes)}")
    message = report.message(cfg.ann)
    if message:
        notes.append(message)
    return LoadedDataset(records, classes, cat_ids, api, cfg.ann, notes, report)
