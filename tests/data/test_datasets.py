import json
import shutil

import pytest
from PIL import Image

from podkit.config import DatasetConfig
from podkit.data import load_dataset
from podkit.data.synthetic import CLASSES


def make_coco(tmp_path, images, annotations, categories=None):
    folder = tmp_path / "images"
    folder.mkdir(exist_ok=True)
    for im in images:
        Image.new("RGB", (im["width"], im["height"]), (10, 20, 30)).save(folder / im["file_name"])
    ann = tmp_path / "ann.json"
    ann.write_text(
        json.dumps(
            {
                "images": images,
                "annotations": annotations,
                "categories": categories or [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}],
            }
        )
    )
    return DatasetConfig("coco", str(ann), str(folder))


def test_coco_labels_crowd_negatives_and_box_cleaning(tmp_path):
    images = [
        {"id": 1, "file_name": "a.png", "width": 40, "height": 30},
        {"id": 2, "file_name": "b.png", "width": 20, "height": 20},
    ]
    annotations = [
        {"id": 1, "image_id": 1, "category_id": 7, "bbox": [5, 5, 10, 10], "iscrowd": 0},
        {
            "id": 2,
            "image_id": 1,
            "category_id": 3,
            "bbox": [30, 20, 20, 20],
            "iscrowd": 0,
        },  # clipped to 40x30
        {
            "id": 3,
            "image_id": 1,
            "category_id": 3,
            "bbox": [1, 1, 0, 5],
            "iscrowd": 0,
        },  # zero width: dropped
        {
            "id": 4,
            "image_id": 1,
            "category_id": 3,
            "bbox": [0, 0, 8, 8],
            "iscrowd": 1,
        },  # crowd: ignore region
    ]
    ds = load_dataset(make_coco(tmp_path, images, annotations))
    assert ds.classes == ["cat", "dog"] and ds.category_ids == [3, 7]
    a, b = ds.records
    assert a.labels.tolist() == [1, 0]
    assert a.boxes.tolist() == [[5, 5, 15, 15], [30, 20, 40, 30]]
    assert a.ignore.tolist() == [[0, 0, 8, 8]]
    assert len(b.boxes) == 0  # image without boxes kept as a negative
    assert ds.notes == [
        f"{tmp_path / 'ann.json'}: 1 boxes clipped to their image (annotations 2), 1 boxes of "
        "zero or negative size dropped (annotations 3)"
    ]


def test_synthetic_set_loads(synth_set):
    ds = load_dataset(
        DatasetConfig("coco", str(synth_set / "annotations/train.json"), str(synth_set / "train"))
    )
    assert len(ds.records) == 16 and ds.classes == [c[0] for c in CLASSES]
    assert sum(len(r.boxes) for r in ds.records) > 16


def test_bad_coco_inputs_name_the_file(tmp_path):
    images = [{"id": 1, "file_name": "a.png", "width": 40, "height": 30}]
    good = [{"id": 1, "image_id": 1, "category_id": 7, "bbox": [5, 5, 10, 10]}]
    cfg = make_coco(
        tmp_path, images, [{"id": 1, "image_id": 1, "category_id": 99, "bbox": [5, 5, 10, 10]}]
    )
    with pytest.raises(ValueError, match=r"ann.json: annotation 1 has unknown category 99"):
        load_dataset(cfg)
    cfg = make_coco(tmp_path, images, good)
    (tmp_path / "images" / "a.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"ann.json: image .*a.png not found"):
        load_dataset(cfg)
    (tmp_path / "images" / "a.png").write_bytes(b"garbage")
    with pytest.raises(ValueError, match=r"a.png is not a readable image"):
        load_dataset(cfg)
    (tmp_path / "ann.json").write_text('{"images": [}')
    with pytest.raises(ValueError, match=r"ann.json: malformed JSON at line 1"):
        load_dataset(cfg)
    (tmp_path / "ann.json").write_text('{"images": []}')
    with pytest.raises(ValueError, match=r"not a COCO annotation file"):
        load_dataset(cfg)
    with pytest.raises(FileNotFoundError, match="missing.json"):
        load_dataset(DatasetConfig("coco", str(tmp_path / "missing.json"), str(tmp_path)))
    with pytest.raises(ValueError, match="format: must be one of coco, voc, got 'yolo'"):
        load_dataset(DatasetConfig("yolo", "x", "y"))


def write_voc(tmp_path, objects_per_image):
    ann, img = tmp_path / "Annotations", tmp_path / "JPEGImages"
    ann.mkdir()
    img.mkdir()
    for i, objects in enumerate(objects_per_image):
        Image.new("RGB", (50, 40)).save(img / f"{i}.jpg")
        xml = "".join(
            f"<object><name>{n}</name><difficult>{int(d)}</difficult><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
            for n, b, d in objects
        )
        (ann / f"{i}.xml").write_text(f"<annotation><filename>{i}.jpg</filename>{xml}</annotation>")
    return ann, img


def test_voc_folder_discovers_classes_and_ignores_difficult(tmp_path):
    ann, img = write_voc(
        tmp_path,
        [
            [("person", (1, 1, 10, 20), False), ("car", (5, 5, 60, 30), False)],
            [("car", (2, 2, 9, 9), True)],
            [],
        ],
    )
    ds = load_dataset(DatasetConfig("voc", str(ann), str(img)))
    assert ds.classes == ["car", "person"]
    assert any("discovered 2 classes: car, person" in n for n in ds.notes)
    first, second, third = ds.records
    assert first.labels.tolist() == [1, 0]
    assert first.boxes.tolist() == [[0, 0, 10, 20], [4, 4, 50, 30]]  # 1-based -> 0-based, clipped
    assert len(second.boxes) == 0 and second.ignore.tolist() == [[1, 1, 9, 9]]
    assert len(third.boxes) == 0


def test_voc_bad_inputs(tmp_path):
    ann, img = write_voc(tmp_path, [[("person", (1, 1, 10, 20), False)]])
    with pytest.raises(ValueError, match=r"0.xml: unknown category 'person'"):
        load_dataset(DatasetConfig("voc", str(ann), str(img), classes=["car"]))
    (ann / "0.xml").write_text("<annotation><filename>0.jpg")
    with pytest.raises(ValueError, match=r"0.xml: malformed XML"):
        load_dataset(DatasetConfig("voc", str(ann), str(img)))
    shutil.rmtree(ann)
    with pytest.raises(FileNotFoundError, match="Annotations: VOC annotation folder not found"):
        load_dataset(DatasetConfig("voc", str(ann), str(img)))
