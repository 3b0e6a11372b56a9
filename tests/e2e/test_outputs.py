"""No command destroys a file it was not asked to replace: an output that is one of the
command's inputs, has another extension than the command writes, or exists without
--overwrite is refused in one line before any work, and the input's bytes stay as they were."""

import json
import shutil

import pytest

from podkit.outputs import replacing
from tests.conftest import invoke, one_line_error


@pytest.fixture
def files(tiny_run, tmp_path):
    """A copy of the tiny run's checkpoint and a few other files a user may have."""
    ckpt = tmp_path / "last.pt"
    shutil.copyfile(tiny_run / "last.pt", ckpt)
    (tmp_path / "config.yaml").write_text("model: {}\n")
    (tmp_path / "scales.json").write_text(json.dumps({"images": 1, "layers": []}))
    (tmp_path / "model.onnx").write_bytes(b"an artefact")
    (tmp_path / "eval.json").write_text("{}")
    return tmp_path


def bytes_of(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


CASES = {
    # command line (names relative to the files fixture) -> words the refusal holds
    "export onto its checkpoint": (
        ["export", "last.pt", "--target", "onnx", "--out", "last.pt"],
        "--out must end in .onnx",
    ),
    "export onto its checkpoint, right extension": (
        ["export", "last.pt", "--target", "tvm", "--out", "model.onnx"],
        "must end in .so",
    ),
    "export onto another file": (
        ["export", "last.pt", "--target", "onnx", "--out", "config.yaml"],
        "must end in .onnx",
    ),
    "export onto an artefact": (
        ["export", "last.pt", "--target", "onnx", "--out", "model.onnx"],
        "exists; pass --overwrite",
    ),
    "eval onto its checkpoint": (["eval", "last.pt", "--out", "last.pt"], "must end in .json"),
    "eval onto an artefact": (["eval", "model.onnx", "--out", "model.onnx"], "must end in .json"),
    "eval onto an earlier eval": (["eval", "last.pt", "--out", "eval.json"], "--overwrite"),
    "bench onto its checkpoint": (
        ["bench", "latency", "last.pt", "--backend", "torch", "--out", "last.pt"],
        ".json",
    ),
    "bench markdown onto a json": (
        [
            "bench",
            "latency",
            "last.pt",
            "--backend",
            "torch",
            "--out",
            "r.json",
            "--md",
            "eval.json",
        ],
        "--md must end in .md",
    ),  # fmt: skip
    "scales onto its checkpoint": (["scales", "last.pt", "--out", "last.pt"], ".json"),
    "scales onto an existing file": (["scales", "last.pt", "--out", "scales.json"], "--overwrite"),
    "decompose onto its checkpoint": (
        ["decompose", "last.pt", "--scales", "scales.json", "--out", "last.pt"],
        "an input",
    ),
    "decompose plan onto its scales": (
        [
            "decompose",
            "last.pt",
            "--scales",
            "scales.json",
            "--out",
            "fd.pt",
            "--plan",
            "scales.json",
        ],
        "an input",
    ),  # fmt: skip
    "decompose plan and out the same": (
        ["decompose", "last.pt", "--scales", "scales.json", "--out", "fd.pt", "--plan", "fd.pt"],
        "given as both",
    ),  # fmt: skip
}


@pytest.mark.parametrize("case", CASES)
def test_no_writer_replaces_a_file_it_was_not_asked_to(files, case, monkeypatch):
    args, words = CASES[case]
    monkeypatch.chdir(files)
    before = bytes_of(files)
    code, out = invoke(*args)
    one_line_error(code, out, words)
    assert bytes_of(files) == before  # nothing replaced, nothing added


def test_an_existing_output_is_replaced_with_overwrite(files):
    code, out = invoke("eval", files / "last.pt", "--out", files / "eval.json", "--overwrite")
    assert code == 0, out
    assert "AP" in json.loads((files / "eval.json").read_text())
    assert not [p for p in files.iterdir() if p.name.startswith(".")]  # no temporary left


def test_a_failed_write_leaves_the_old_file_whole(tmp_path):
    old = tmp_path / "report.json"
    old.write_text("old")
    with pytest.raises(RuntimeError), replacing(old) as tmp:
        tmp.write_text("half")
        raise RuntimeError("the writer died")
    assert old.read_text() == "old" and list(tmp_path.iterdir()) == [old]
    with replacing(old) as tmp:
        tmp.write_text("new")
    assert old.read_text() == "new" and list(tmp_path.iterdir()) == [old]


def test_predict_never_writes_over_a_users_files(tiny_run, synth_set, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "images.json").write_text("mine")
    image = next((synth_set / "val").iterdir())
    code, text = invoke("predict", tiny_run / "last.pt", image, "--out", out)
    one_line_error(code, text, "images.json: exists", "--overwrite")
    assert (out / "images.json").read_text() == "mine"
    (out / "drawn").mkdir()
    inside = out / "drawn" / image.name
    shutil.copyfile(image, inside)
    for extra in ([], ["--overwrite"]):
        code, text = invoke("predict", tiny_run / "last.pt", inside, "--out", out, *extra)
        one_line_error(code, text, "an input image lies in", "drawn")
        assert inside.read_bytes() == image.read_bytes()


def test_data_synth_refuses_a_folder_holding_a_set(tmp_path):
    args = ("data", "synth", tmp_path / "s", "--train", 2, "--val", 1, "--size", 64)
    assert invoke(*args)[0] == 0
    before = (tmp_path / "s/annotations/train.json").read_bytes()
    code, out = invoke(*args, "--seed", 5)
    one_line_error(code, out, "train.json: exists", "--overwrite")
    assert (tmp_path / "s/annotations/train.json").read_bytes() == before
    assert invoke(*args, "--seed", 5, "--overwrite")[0] == 0
    assert (tmp_path / "s/annotations/train.json").read_bytes() != before


def test_predict_sees_an_exif_rotated_photo_as_displayed(tiny_run, synth_set, tmp_path):
    """A stored image with EXIF orientation 6 and the same pixels saved already turned give
    the same sizes and the same boxes: both are read in the displayed frame."""
    import numpy as np
    from PIL import Image

    raw = np.asarray(Image.open(next((synth_set / "val").iterdir())).convert("RGB"))
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed turned 90 degrees clockwise
    Image.fromarray(np.ascontiguousarray(np.rot90(raw, k=1))).save(
        tmp_path / "stored.png", exif=exif.tobytes()
    )
    Image.fromarray(raw).save(tmp_path / "shown.png")
    found = {}
    for name in ("stored", "shown"):
        code, text = invoke("predict", tiny_run / "last.pt", tmp_path / f"{name}.png",
                            "--out", tmp_path / name, "--no-draw")  # fmt: skip
        assert code == 0, text
        image = json.loads((tmp_path / name / "images.json").read_text())["images"][0]
        found[name] = (
            (image["width"], image["height"]),
            json.loads((tmp_path / name / "detections.json").read_text()),
        )
    assert found["stored"][0] == found["shown"][0] == (raw.shape[1], raw.shape[0])
    boxes = [[d["bbox"] for d in found[n][1]] for n in ("stored", "shown")]
    assert len(boxes[0]) == len(boxes[1]) > 0
    assert np.allclose(boxes[0], boxes[1], atol=1e-3)
