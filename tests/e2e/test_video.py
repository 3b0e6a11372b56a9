"""`podkit predict MODEL VIDEO`: one result per kept frame, the frame index as image id, a
drawn video, and each frame detected as the same picture saved as an image."""

import json

import numpy as np
import pytest
from PIL import Image

from tests.conftest import invoke, one_line_error

av = pytest.importorskip("av")  # the `video` extra; `make test` installs it


@pytest.fixture
def video(synth_set, tmp_path):
    """Six frames (the synthetic val images at 128x128) as an H.264 MP4 at 5 fps."""
    path = tmp_path / "clip.mp4"
    container = av.open(str(path), "w")
    stream = container.add_stream("libx264", rate=5)
    stream.width, stream.height, stream.pix_fmt = 128, 128, "yuv420p"
    for file in sorted((synth_set / "val").iterdir())[:6]:
        pixels = np.asarray(Image.open(file).convert("RGB").resize((128, 128)))
        for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    container.close()
    return path


def decoded(path):
    with av.open(str(path)) as container:
        return [f.to_image() for f in container.decode(video=0)]


def test_every_frame_gets_its_result_and_the_drawn_video(tiny_run, video, tmp_path):
    out = tmp_path / "out"
    code, text = invoke(
        "predict", tiny_run / "last.pt", video, "--out", out, "--score-threshold", 0
    )
    assert code == 0, text
    images = json.loads((out / "images.json").read_text())["images"]
    assert [im["id"] for im in images] == list(range(6))
    results = json.loads((out / "detections.json").read_text())
    assert results and {r["image_id"] for r in results} <= set(range(6))
    assert len(decoded(out / "drawn.mp4")) == 6
    # frame 3 saved as a picture and predicted as an image: the same detections
    frame = tmp_path / "frame3.png"
    decoded(video)[3].convert("RGB").save(frame)
    code, text = invoke(
        "predict", tiny_run / "last.pt", frame, "--out", tmp_path / "img", "--no-draw"
    )
    assert code == 0, text
    alone = json.loads((tmp_path / "img/detections.json").read_text())
    in_video = [r for r in results if r["image_id"] == 3]
    assert len(alone) == len(in_video) > 0
    for a, b in zip(alone, in_video, strict=True):
        assert a["category_id"] == b["category_id"]
        assert np.allclose(a["bbox"], b["bbox"], atol=1e-3) and abs(a["score"] - b["score"]) < 1e-5


def test_every_nth_frame_and_the_refusals(tiny_run, video, synth_set, tmp_path):
    out = tmp_path / "out"
    code, text = invoke(
        "predict", tiny_run / "last.pt", video, "--out", out, "--every", 2, "--no-draw"
    )
    assert code == 0, text
    assert [im["id"] for im in json.loads((out / "images.json").read_text())["images"]] == [0, 2, 4]
    assert not (out / "drawn.mp4").exists()
    broken = tmp_path / "broken.mp4"
    broken.write_text("not a video")
    code, text = invoke("predict", tiny_run / "last.pt", broken, "--out", tmp_path / "b")
    one_line_error(code, text, "broken.mp4: cannot decode this video")
    image = next((synth_set / "val").iterdir())
    code, text = invoke(
        "predict", tiny_run / "last.pt", image, "--out", tmp_path / "c", "--every", 2
    )
    one_line_error(code, text, "--every picks a video's frames")
    code, text = invoke("predict", tiny_run / "last.pt", video, "--out", out, "--every", 2)
    one_line_error(code, text, "detections.json: exists", "--overwrite")
