import contextlib
import io
import json

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from podkit.config import DatasetConfig
from podkit.data import load_dataset
from podkit.evaluation.evaluate import METRIC_KEYS, coco_from_records, coco_metrics, to_coco_results


def noisy_detections(dataset, seed=0):
    """Detections near the ground truth, some wrong labels, some spurious: a realistic mix."""
    g = np.random.default_rng(seed)
    dets = []
    for rec in dataset.records:
        boxes = rec.boxes + g.normal(0, 3, rec.boxes.shape)
        labels = np.where(
            g.random(len(rec.labels)) < 0.2,
            g.integers(0, len(dataset.classes), len(rec.labels)),
            rec.labels,
        )
        spurious = g.uniform(0, 100, (3, 2))
        boxes = np.concatenate([boxes, np.concatenate([spurious, spurious + 20], 1)])
        labels = np.concatenate([labels, g.integers(0, len(dataset.classes), 3)])
        dets.append(
            {
                "boxes": torch.tensor(boxes, dtype=torch.float32),
                "scores": torch.tensor(g.random(len(boxes)), dtype=torch.float32),
                "labels": torch.tensor(labels),
            }
        )
    return dets


def direct_cocoeval(ann_file, results_file, iou_thrs=None):
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(ann_file))
        dt = gt.loadRes(str(results_file))
        e = COCOeval(gt, dt, "bbox")
        if iou_thrs is not None:
            e.params.iouThrs = np.array(iou_thrs)
        e.evaluate()
        e.accumulate()
        e.summarize()
    return e.stats


def test_metrics_equal_pycocotools_run_directly(synth_set, tmp_path):
    ann = synth_set / "annotations/val.json"
    ds = load_dataset(DatasetConfig("coco", str(ann), str(synth_set / "val")))
    results = to_coco_results(
        noisy_detections(ds), [r.image_id for r in ds.records], ds.category_ids
    )
    results_file = tmp_path / "results.json"
    results_file.write_text(json.dumps(results))
    ours = coco_metrics(ds.coco, results)
    stats = direct_cocoeval(ann, results_file)
    for i, key in enumerate(METRIC_KEYS[:6]):
        expected = None if stats[i] < 0 else round(100 * stats[i], 3)
        assert ours[key] == expected, key
    # AP at one IoU threshold, from COCOeval asked for exactly that threshold
    for key, thr in (("AP60", 0.6), ("AP70", 0.7), ("AP80", 0.8), ("AP90", 0.9)):
        assert ours[key] == pytest.approx(
            100 * direct_cocoeval(ann, results_file, [thr])[0], abs=1e-3
        ), key
    assert 0 < ours["AP"] < 100


def test_records_as_ground_truth_match_the_json(synth_set):
    """The COCO object built from records (VOC path) scores like the original json."""
    ds = load_dataset(
        DatasetConfig("coco", str(synth_set / "annotations/val.json"), str(synth_set / "val"))
    )
    results = to_coco_results(
        noisy_detections(ds, 1), [r.image_id for r in ds.records], ds.category_ids
    )
    from_json = coco_metrics(ds.coco, results)
    from_records = coco_metrics(coco_from_records(ds.records, ds.classes, ds.category_ids), results)
    assert from_records == pytest.approx(from_json)


def test_perfect_and_empty_detections(synth_set):
    ds = load_dataset(
        DatasetConfig("coco", str(synth_set / "annotations/val.json"), str(synth_set / "val"))
    )
    perfect = [
        {
            "boxes": torch.tensor(r.boxes),
            "scores": torch.ones(len(r.boxes)),
            "labels": torch.tensor(r.labels),
        }
        for r in ds.records
    ]
    metrics = coco_metrics(
        ds.coco, to_coco_results(perfect, [r.image_id for r in ds.records], ds.category_ids)
    )
    assert metrics["AP"] == pytest.approx(100.0) and metrics["AP90"] == pytest.approx(100.0)
    assert coco_metrics(ds.coco, []) == dict.fromkeys(METRIC_KEYS, 0.0)


def test_a_model_whose_classes_are_listed_in_another_order_is_scored_by_name(synth_set, tmp_path):
    """The same set under other category ids, listed in reverse: a model trained on the
    original order, matched by class name, scores what it scores on the original (checked on
    detections near the truth); names that differ are refused."""
    from podkit.evaluation.evaluate import model_category_ids

    original = load_dataset(
        DatasetConfig("coco", str(synth_set / "annotations/val.json"), str(synth_set / "val"))
    )
    model_classes = original.classes
    dets = noisy_detections(original)  # labels in the model's (original) order
    image_ids = [r.image_id for r in original.records]
    expected = coco_metrics(original.coco, to_coco_results(dets, image_ids, original.category_ids))
    val = json.loads((synth_set / "annotations/val.json").read_text())
    new_id = {c["id"]: 1000 - c["id"] for c in val["categories"]}  # reverses the id order
    val["categories"] = [{**c, "id": new_id[c["id"]]} for c in val["categories"]]
    for a in val["annotations"]:
        a["category_id"] = new_id[a["category_id"]]
    (tmp_path / "reordered.json").write_text(json.dumps(val))
    reordered = load_dataset(
        DatasetConfig("coco", str(tmp_path / "reordered.json"), str(synth_set / "val"))
    )
    assert reordered.classes == model_classes[::-1]
    ids = model_category_ids(reordered, model_classes, "model.pt")
    assert coco_metrics(reordered.coco, to_coco_results(dets, image_ids, ids)) == expected
    by_position = to_coco_results(dets, image_ids, reordered.category_ids)
    assert coco_metrics(reordered.coco, by_position)["AP"] < expected["AP"] / 2  # unmatched
    with pytest.raises(ValueError, match="reordered.json: classes .* differ from the ones"):
        model_category_ids(reordered, [f"x{i}" for i in range(len(model_classes))], "model.pt")
