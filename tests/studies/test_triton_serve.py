"""studies/triton_serve.py without a server: what its client sends, and the comparison that
says whether the server's detections are podkit's."""

import json

import numpy as np
from PIL import Image

from studies.triton_serve import client_input, compare


def test_client_sends_the_image_over_255_zero_padded_to_multiples_of_32(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, (70, 100, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    sent, h, w = client_input(tmp_path / "a.png")
    assert sent.shape == (1, 3, 96, 128) and sent.dtype == np.float32 and (h, w) == (70, 100)
    np.testing.assert_array_equal(
        sent[0, :, :70, :100], pixels.transpose(2, 0, 1) / np.float32(255)
    )
    assert not sent[0, :, 70:].any() and not sent[0, :, :, 100:].any()


def predict_folder(tmp_path, boxes):
    """A `podkit predict` output folder: one image, its detections (xyxy, COCO ids 1..)."""
    out = tmp_path / "podkit"
    out.mkdir()
    images = {"images": [{"id": 7, "file_name": "/x/a.png", "width": 100, "height": 70}],
              "categories": [{"id": 1, "name": "p"}, {"id": 2, "name": "q"}]}  # fmt: skip
    (out / "images.json").write_text(json.dumps(images))
    results = [{"image_id": 7, "category_id": 2, "score": 0.9 - 0.1 * k,
                "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]]} for k, b in enumerate(boxes)]  # fmt: skip
    (out / "detections.json").write_text(json.dumps(results))
    return out


def test_compare_holds_the_server_to_podkits_detections(tmp_path):
    boxes = [[10.0, 12.0, 40.0, 50.0], [60.0, 20.0, 99.0, 69.0]]
    folder = predict_folder(tmp_path, boxes)
    served = {"boxes": boxes, "scores": [0.9, 0.8], "labels": [1, 1]}  # contiguous labels

    def verdict(**change):
        return compare(folder, {"detections": {"a.png": served | change}})["ok"]

    assert verdict()
    assert not verdict(boxes=[boxes[0], [60.0, 20.0, 99.0, 68.0]])  # one pixel off
    assert not verdict(labels=[1, 0])  # another class
    assert not verdict(boxes=boxes[:1], scores=[0.9], labels=[1])  # a detection missing
