import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT, invoke, tiny_overrides


def test_synth_train_eval_info_through_the_cli(tmp_path):
    data = tmp_path / "data"
    code, out = invoke("data", "synth", data, "--train", 8, "--val", 4, "--size", 128, "--seed", 1)
    assert code == 0, out
    assert "% small" in out
    sets = [x for o in tiny_overrides(data, max_iter=3) for x in ("--set", o)]
    run = tmp_path / "run"
    code, out = invoke("train", ROOT / "configs/tiny/faster_rcnn_fpn.yaml", "--out", run, *sets)
    assert code == 0, out
    assert {"config.yaml", "last.pt", "metrics.jsonl", "eval.json"} <= {
        p.name for p in run.iterdir()
    }
    code, out = invoke("eval", run / "last.pt", "--out", tmp_path / "eval.json")
    assert code == 0, out
    again = json.loads((tmp_path / "eval.json").read_text())
    assert again == json.loads(
        (run / "eval.json").read_text()
    )  # same model, same data, same numbers
    assert set(again) == {"AP", "AP50", "AP75", "APs", "APm", "APl", "AP60", "AP70", "AP80", "AP90"}
    code, out = invoke("info", run / "last.pt")
    assert code == 0 and "faster_rcnn_fpn" in out and "3 of 3" in out
    code, out = invoke(
        "eval", run / "last.pt", "--snip", "--pyramid", "synthetic", "--out", tmp_path / "ms.json"
    )
    assert code == 0, out
    assert set(json.loads((tmp_path / "ms.json").read_text())) == set(again)
    code, out = invoke("eval", run / "last.pt", "--multiscale", "--merge", "wbf")
    assert code == 2 and "eval.merge: must be one of" in out


def test_user_errors_are_one_line_with_exit_code_2(tmp_path):
    code, out = invoke("train", tmp_path / "missing.yaml", "--out", tmp_path / "run")
    assert code == 2 and "missing.yaml: config file not found" in out and "Traceback" not in out
    code, out = invoke(
        "train",
        ROOT / "configs/tiny/faster_rcnn_fpn.yaml",
        "--out",
        tmp_path / "run",
        "--set",
        "train.lrr=1",
    )
    assert code == 2 and "did you mean 'lr'" in out
    code, out = invoke("eval", tmp_path / "nothing.pt")
    assert code == 2 and "nothing.pt: checkpoint not found" in out
    Path(tmp_path / "bad.pt").write_bytes(b"x")
    code, out = invoke("info", tmp_path / "bad.pt")
    assert code == 2 and "bad.pt: not a podkit checkpoint" in out and "weights_only" not in out


def test_help_everywhere():
    for args in ([], ["data", "synth"], ["train"], ["eval"], ["info"], ["demo"]):
        code, out = invoke(*args, "--help")
        assert code == 0 and "Usage" in out


def python_with_podkit_from_its_wheel(tmp_path: Path) -> Path:
    """A fresh venv holding podkit installed from a wheel built from this tree (the
    dependencies come from this environment, without its editable podkit)."""
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (ROOT / name).is_file():
            shutil.copy(ROOT / name, source / name)
    shutil.copytree(
        ROOT / "podkit", source / "podkit", ignore=shutil.ignore_patterns("__pycache__")
    )
    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", tmp_path / "dist",
                    source], check=True, capture_output=True)  # fmt: skip
    (wheel,) = (tmp_path / "dist").glob("podkit-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
    (site,) = venv.glob("lib/python*/site-packages")
    subprocess.run([*pip, "install", "--no-deps", "--no-index", "--target", site, wheel],
                   check=True, capture_output=True)  # fmt: skip
    # a .pth adds this environment's site-packages without running its .pth files (the
    # editable install's finder among them), so only the wheel's podkit can be imported
    (site / "deps.pth").write_text("\n".join(p for p in sys.path if p.endswith("site-packages")))
    return venv / "bin" / "python"


def test_reduced_demo_from_an_installed_wheel(tmp_path):
    """`pip install podkit` then `podkit demo`: the shipped configs come with the package.
    Timed in PyTorch only: exporting the demo's three models (GSL everywhere) would double
    the test, and `bench latency` through onnxruntime is tested on its own."""
    python = python_with_podkit_from_its_wheel(tmp_path)
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    where = subprocess.run([python, "-c", "import podkit; print(podkit.__file__)"], cwd=work,
                           env=env, capture_output=True, text=True, check=True)  # fmt: skip
    assert Path(where.stdout.strip()).is_relative_to(tmp_path / "venv")
    demo = work / "demo"
    args = ["demo", "--out", demo, "--iters", 3, "--train-images", 8, "--val-images", 2,
            "--size", 96, "--backends", "torch", "--bench-iters", 2]  # fmt: skip
    proc = subprocess.run([python, "-m", "podkit.cli", *map(str, args)], cwd=work, env=env,
                          capture_output=True, text=True, timeout=900)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = (demo / "report.md").read_text()
    for row in ("| baseline |", "| GSL |", "| FD-WT |", "| FD-WT | torch | fp32 | 96x96 |"):
        assert row in report
    assert (demo / "scales.png").is_file() and (demo / "latency.png").is_file()
    latency = json.loads((demo / "latency.json").read_text())
    assert {(r["model"], r["backend"]) for r in latency["results"]} == {
        (m, "torch") for m in ("baseline", "GSL", "FD-WT")
    }


def test_malformed_coco_is_refused_through_the_cli_naming_the_id(tmp_path):
    """Duplicate ids, bad boxes, paths outside the image folder: exit 2, one line, no run."""
    from PIL import Image

    (tmp_path / "images").mkdir()
    Image.new("RGB", (40, 30)).save(tmp_path / "images/a.png")
    image = {"id": 1, "file_name": "a.png", "width": 40, "height": 30}
    box = {"id": 5, "image_id": 1, "category_id": 1, "bbox": [5, 5, 10, 10], "iscrowd": 0}
    cats = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]
    cases = {
        "duplicate image id 1": ([image, dict(image)], [box], cats),
        "duplicate annotation id 5": ([image], [box, dict(box)], cats),
        "duplicate category id 2": ([image], [box], [*cats, {"id": 2, "name": "c"}]),
        "annotation 5 has no [x, y, w, h] bbox of 4 finite numbers": (
            [image],
            [dict(box, bbox=["10", 5, 10, 10])],
            cats,
        ),
        "annotation 6 has no [x, y, w, h] bbox": (
            [image],
            [box, dict(box, id=6, bbox=[5, 5, float("nan"), 10])],
            cats,
        ),
        "image 1 file_name '../a.png' points outside the image folder": (
            [dict(image, file_name="../a.png")],
            [box],
            cats,
        ),
        "top level is not an object": None,
    }
    for i, (message, content) in enumerate(cases.items()):
        ann = tmp_path / f"ann{i}.json"
        if content is None:
            ann.write_text("[]")
        else:
            images, annotations, categories = content
            ann.write_text(
                json.dumps({"images": images, "annotations": annotations, "categories": categories})
            )
        run = tmp_path / f"run{i}"
        sets = [f"data.train.ann={ann}", f"data.train.images={tmp_path / 'images'}"]
        sets += ["data.val.ann=''", "model.num_classes=2"]
        code, out = invoke(
            "train", ROOT / "configs/tiny/faster_rcnn_fpn.yaml", "--out", run,
            *[x for s in sets for x in ("--set", s)],
        )  # fmt: skip
        assert code == 2 and message in out and str(ann) in out.replace("\n", ""), (message, out)
        assert "Traceback" not in out and not run.exists()


def test_box_report_names_the_first_annotations(tmp_path):
    from PIL import Image

    from podkit.config import DatasetConfig
    from podkit.data import load_dataset

    Image.new("RGB", (40, 30)).save(tmp_path / "a.png")
    anns = [
        {"id": 10 + k, "image_id": 1, "category_id": 1, "bbox": [30, 20, 20, 20]} for k in range(7)
    ] + [{"id": 99, "image_id": 1, "category_id": 1, "bbox": [1, 1, 0, 5]}]
    data = {
        "images": [{"id": 1, "file_name": "a.png", "width": 40, "height": 30}],
        "annotations": anns,
        "categories": [{"id": 1, "name": "a"}],
    }
    (tmp_path / "ann.json").write_text(json.dumps(data))
    ds = load_dataset(DatasetConfig("coco", str(tmp_path / "ann.json"), str(tmp_path)))
    assert ds.notes == [
        f"{tmp_path / 'ann.json'}: 7 boxes clipped to their image (annotations 10, 11, 12, 13, "
        "14, ...), 1 boxes of zero or negative size dropped (annotations 99)"
    ]
