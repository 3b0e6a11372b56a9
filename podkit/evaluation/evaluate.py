"""COCO-style evaluation through pycocotools: AP, AP50, AP75, APs/m/l and AP60-AP90, in percent."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from podkit.config import Config
from podkit.data import LoadedDataset, load_dataset
from podkit.data.loader import DetectionDataset, eval_batches, make_loader
from podkit.data.records import Record, load_image
from podkit.data.transforms import to_tensor
from podkit.evaluation.image_pyramid import get_pyramid, keep_in_range, merge_detections
from podkit.models.output import Detector
from podkit.ops.image_batch import ImageBatch
from podkit.ops.tiles import inner_edge_contact, merge_tiles, tile_grid

METRIC_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AP60", "AP70", "AP80", "AP90")


def coco_from_records(records: list[Record], classes: list[str], category_ids: list[int]) -> COCO:
    """A COCO ground-truth object for data sets that were not COCO json (VOC); ignore regions
    become crowd boxes, which COCOeval neither rewards nor penalises."""
    images, anns = [], []
    for rec in records:
        images.append({"id": rec.image_id, "width": rec.width, "height": rec.height})
        for boxes, labels, crowd in (
            (rec.boxes, rec.labels, 0),
            (rec.ignore, np.zeros(len(rec.ignore), np.int64), 1),
        ):
            for box, label in zip(boxes.tolist(), labels.tolist(), strict=True):
                w, h = box[2] - box[0], box[3] - box[1]
                anns.append(
                    {
                        "id": len(anns) + 1,
                        "image_id": rec.image_id,
                        "category_id": category_ids[label],
                        "bbox": [box[0], box[1], w, h],
                        "area": w * h,
                        "iscrowd": crowd,
                    }
                )
    api = COCO()
    api.dataset = {
        "images": images,
        "annotations": anns,
        "categories": [{"id": c, "name": n} for c, n in zip(category_ids, classes, strict=True)],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        api.createIndex()
    return api


def to_coco_results(
    detections: list[dict], image_ids: list[int], category_ids: list[int]
) -> list[dict]:
    """Detections (original pixels, contiguous labels) as COCO result entries (xywh); a label
    whose category id is None is left out."""
    results = []
    for det, image_id in zip(detections, image_ids, strict=True):
        boxes = det["boxes"].tolist()
        for box, score, label in zip(
            boxes, det["scores"].tolist(), det["labels"].tolist(), strict=True
        ):
            if category_ids[label] is None:  # a class the ground truth does not have
                continue
            results.append(
                {
                    "image_id": int(image_id),
                    "category_id": category_ids[label],
                    "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]],
                    "score": float(score),
                }
            )
    return results


def coco_metrics(
    coco_gt: COCO, results: list[dict], image_ids: list[int] | None = None
) -> dict[str, float | None]:
    """Run COCOeval (bbox); undefined metrics (no GT of that kind) are None."""
    if not results:
        return dict.fromkeys(METRIC_KEYS, 0.0)
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes(results)
        evaluator = COCOeval(coco_gt, coco_dt, "bbox")
        if image_ids is not None:
            evaluator.params.imgIds = sorted(image_ids)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    stats = evaluator.stats
    out = {k: _percent(stats[i]) for i, k in enumerate(METRIC_KEYS[:6])}
    precision = evaluator.eval["precision"]  # [T, R, K, A, M]; T = 0.50:0.05:0.95
    for key, t in (("AP60", 2), ("AP70", 4), ("AP80", 6), ("AP90", 8)):
        p = precision[t, :, :, 0, -1]  # all areas, 100 detections
        out[key] = _percent(float(np.mean(p[p > -1]))) if (p > -1).any() else None
    return out


def _percent(x: float) -> float | None:
    return None if x < 0 else round(100.0 * float(x), 3)


def predict(
    model: Detector, dataset: LoadedDataset, cfg: Config, device, progress=None
) -> tuple[list[dict], list[int]]:
    """Detections for every image of `dataset` (original pixels, CPU): at the config's test
    size, or with `eval.multiscale` / `eval.snip` at every resolution of `eval.pyramid`,
    merged (SNIP keeps each resolution's detections inside its test range first)."""
    records = dataset.records[: cfg.eval.max_images] if cfg.eval.max_images else dataset.records
    if cfg.eval.tile is not None or not (cfg.eval.multiscale or cfg.eval.snip):
        return predict_records(model, records, cfg, device, progress)
    per_resolution = []
    for res in get_pyramid(cfg.eval.pyramid, cfg.data.test_min_size):
        detections, image_ids = predict_at(
            model, records, cfg, device, res.min_size, res.max_size, progress
        )
        if cfg.eval.snip:
            detections = [keep_in_range(d, res.test_range) for d in detections]
        per_resolution.append(detections)
    merged = [
        merge_detections(list(dets), cfg.eval.merge, _merge_iou(cfg.eval.merge))
        for dets in zip(*per_resolution, strict=True)
    ]
    return merged, image_ids


def predict_records(
    model: Detector, records: list[Record], cfg: Config, device, progress=None
) -> tuple[list[dict], list[int]]:
    """Single-scale detections as eval, predict and video predict make them: sliced into
    tiles with `eval.tile`, else each image at the config's test size."""
    if cfg.eval.tile is not None:
        return predict_tiled(model, records, cfg, device, progress)
    return predict_at(
        model, records, cfg, device, cfg.data.test_min_size, cfg.data.max_size, progress
    )


@torch.inference_mode()
def predict_tiled(
    model: Detector, records: list[Record], cfg: Config, device, progress=None
) -> tuple[list[dict], list[int]]:
    """Detections of each image sliced into `eval.tile` tiles fed at their own pixels
    (`eval.batch_size` tiles a call), shifted back to the image and merged (ops/tiles.py),
    with the whole image at the test size too when `eval.tile.whole`."""
    tile = cfg.eval.tile
    whole = None
    if tile.whole:
        whole, _ = predict_at(
            model, records, cfg, device, cfg.data.test_min_size, cfg.data.max_size
        )
    was_training = isinstance(model, torch.nn.Module) and model.training
    if was_training:
        model.eval()
    detections = []
    for i, record in enumerate(records):
        image = to_tensor(load_image(record.file))
        height, width = image.shape[-2:]
        grid = tile_grid(height, width, tile.size, tile.overlap)
        parts, cut = [], []
        for first in range(0, len(grid), cfg.eval.batch_size):
            group = grid[first : first + cfg.eval.batch_size]
            crops = [image[:, y0:y1, x0:x1] for x0, y0, x1, y1 in group]
            batch = ImageBatch.from_tensors(crops, cfg.data.size_divisible).to(device)
            for (x0, y0, x1, y1), det in zip(group, model(batch).detections, strict=True):
                shift = torch.tensor([x0, y0, x0, y0], dtype=torch.float32)
                det = {k: v.cpu() for k, v in det.items()}
                det["boxes"] = det["boxes"] + shift
                parts.append(det)
                cut.append(inner_edge_contact(det["boxes"], (x0, y0, x1, y1), height, width))
        if whole is not None:
            parts.append(whole[i])
            cut.append(torch.zeros(len(whole[i]["scores"]), dtype=torch.bool))
        merged = {k: torch.cat([p[k] for p in parts]) for k in ("boxes", "scores", "labels")}
        detections.append(merge_tiles(merged, torch.cat(cut)))
        if progress is not None:
            progress(1)
    if was_training:
        model.train()
    return detections, [r.image_id for r in records]


def _merge_iou(method: str) -> float:
    """NMS across resolutions at 0.5; linear soft-NMS decays above 0.3 (Bodla et al.)."""
    return 0.5 if method == "nms" else 0.3


@torch.inference_mode()
def predict_at(
    model: Detector,
    records: list[Record],
    cfg: Config,
    device,
    min_size: int,
    max_size: int,
    progress=None,
) -> tuple[list[dict], list[int]]:
    """Detections for `records` resized to (min_size, max_size)."""
    batches = eval_batches(len(records), cfg.eval.batch_size, min_size)
    loader = make_loader(
        DetectionDataset(records, max_size), batches, cfg.train.workers, cfg.data.size_divisible
    )
    was_training = isinstance(model, torch.nn.Module) and model.training
    if was_training:
        model.eval()
    detections, image_ids = [], []
    for batch in loader:
        out = model(batch.images.to(device))
        detections += [{k: v.cpu() for k, v in d.items()} for d in out.detections]
        image_ids += [m["image_id"] for m in batch.meta]
        if progress is not None:
            progress(len(batch.meta))
    if was_training:
        model.train()
    return detections, image_ids


def evaluate(
    model: Detector,
    dataset: LoadedDataset,
    cfg: Config,
    device,
    progress=None,
    category_ids: list[int] | None = None,
) -> dict[str, float | None]:
    """COCO metrics of `model` on `dataset`; `category_ids`: the category id of each of the
    model's labels, when its classes are the data set's in another order."""
    detections, image_ids = predict(model, dataset, cfg, device, progress)
    gt = dataset.coco or coco_from_records(dataset.records, dataset.classes, dataset.category_ids)
    results = to_coco_results(detections, image_ids, category_ids or dataset.category_ids)
    return coco_metrics(gt, results, image_ids)


def model_category_ids(dataset: LoadedDataset, classes: list[str], source) -> list[int]:
    """The category id of each of the model's labels, matched by class name: the data set's
    own ids when the names agree, matched by name when the model knows every class of the set
    (in another order, or more classes: a COCO model's others are None, not scored), one line
    naming both lists when the names differ (same ids, other names would be scored against
    the wrong classes). A model without recorded names is matched by position."""
    if not classes or list(classes) == dataset.classes:
        return dataset.category_ids
    if set(dataset.classes) <= set(classes):  # the model's other classes are not scored
        by_name = dict(zip(dataset.classes, dataset.category_ids, strict=True))
        return [by_name.get(name) if classes.count(name) == 1 else None for name in classes]
    raise ValueError(
        f"{dataset.source}: classes {dataset.classes[:6]} differ from the ones {source} was "
        f"trained on {list(classes)[:6]}; evaluate on a set with the model's classes"
    )


def format_metrics(metrics: dict[str, float | None]) -> str:
    """One line of the COCO figures, in percent (`-`: no ground truth of that size)."""
    figures = "  ".join(f"{k} {'-' if v is None else f'{v:.1f}'}" for k, v in metrics.items())
    return f"{figures}  (percent)"


def evaluate_on_val(
    model: Detector, cfg: Config, device, source, console=None, classes: list[str] | None = None
) -> dict[str, float | None]:
    """The metrics of `model` (a checkpoint's model or an artefact, from `source`, trained on
    `classes`) on the config's data.val, printed on `console` if given."""
    if not cfg.data.val.ann:
        raise ValueError(
            f"{source}: its config has no data.val; pass --set data.val.ann=... --set data.val.images=..."
        )
    dataset = load_dataset(cfg.data.val, cfg.data.max_image_pixels)
    # a model that records its class names is matched by name (a set of some of them, such as
    # a few COCO categories for a COCO model, is scored on those); one without, by position
    if not classes and len(dataset.classes) != cfg.model.num_classes:
        raise ValueError(
            f"{cfg.data.val.ann}: {len(dataset.classes)} classes, the model has {cfg.model.num_classes}"
        )
    category_ids = model_category_ids(dataset, classes or [], source)
    if category_ids != dataset.category_ids and console is not None:
        unscored = sum(c is None for c in category_ids)
        console.print(f"note: {dataset.source} lists the model's classes in another order"
                      + (f" ({unscored} of the model's classes are not in it)" if unscored else "")
                      + "; detections are matched to them by name")  # fmt: skip
    metrics = evaluate(model, dataset, cfg, device, category_ids=category_ids)
    if console is not None:
        console.print(format_metrics(metrics))
    return metrics
