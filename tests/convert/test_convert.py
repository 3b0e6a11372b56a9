"""`podkit convert` through the CLI: what a converted torchvision detector can do next (its
recipe, GSL, fine-tuning on other classes, export) and the one-line refusals of bad files."""

import io
import pickle

import pytest
import torch
from rich.console import Console

from podkit.config import config_from_dict, load_config, to_dict
from podkit.convert import SOURCES
from podkit.models import build_detector
from podkit.models.checkpoint import load_checkpoint, load_detector
from podkit.train.loop import load_model_weights, train
from tests.conftest import ROOT, invoke, one_line_error, tiny_overrides
from tests.convert.conftest import assert_same_detections


@pytest.mark.parametrize(
    "source,arch", [(source, arch) for source, archs in SOURCES.items() for arch in archs]
)
def test_the_recipe_builds_the_converted_model(source, arch):
    """configs/converted/SOURCE_ARCH.yaml trains the model `convert` writes."""
    recipe = load_config(ROOT / f"configs/converted/{source}_{arch}.yaml")
    converted = config_from_dict({"model": SOURCES[source][arch][0]})
    ours, theirs = to_dict(recipe.model), to_dict(converted.model)
    ours.pop("category_ids"), theirs.pop("category_ids")
    assert ours == theirs


def test_convert_through_the_cli_and_its_refusals(torchvision_files, tmp_path):
    source, _ = torchvision_files["fasterrcnn_resnet50_fpn"]
    out = tmp_path / "frcnn.pt"
    args = ("convert", source, "--from", "torchvision", "--arch", "fasterrcnn_resnet50_fpn")
    code, text = invoke(*args, "--out", out)
    assert code == 0, text
    ckpt = load_checkpoint(out)
    assert len(ckpt["classes"]) == 90 and ckpt["classes"][0] == "person"
    assert ckpt["converted_from"]["arch"] == "fasterrcnn_resnet50_fpn"
    code, text = invoke("info", out)
    assert code == 0 and "converted from" in text and "torchvision fasterrcnn_resnet50_fpn" in text
    one_line_error(*invoke(*args, "--out", out), "exists; pass --overwrite")
    one_line_error(*invoke(*args, "--out", source), "--out must end in .pt")
    as_pt = tmp_path / "weights.pt"
    as_pt.write_bytes(source.read_bytes())
    one_line_error(*invoke("convert", as_pt, *args[2:], "--out", as_pt), "an input")
    as_pt.unlink()

    retina, _ = torchvision_files["retinanet_resnet50_fpn"]
    code, text = invoke("convert", retina, "--from", "torchvision", "--arch",
                        "fasterrcnn_resnet50_fpn", "--out", tmp_path / "x.pt")  # fmt: skip
    one_line_error(code, text, "retinanet_resnet50_fpn.pth: not torchvision's", "missing")
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(source.read_bytes()[:100_000])
    code, text = invoke("convert", truncated, *args[2:], "--out", tmp_path / "y.pt")
    one_line_error(code, text, "truncated.pth: not a readable weights file")

    class RunsCode:
        def __reduce__(self):
            return (print, ("this pickle ran code",))

    hostile = tmp_path / "hostile.pth"
    hostile.write_bytes(pickle.dumps({"model": RunsCode()}, protocol=2))
    code, text = invoke("convert", hostile, *args[2:], "--out", tmp_path / "z.pt")
    one_line_error(code, text, "hostile.pth: a pickle that would run code (", "print)")
    assert "this pickle ran code" not in text
    mmdet = tmp_path / "mmdet.pth"
    torch.save({"meta": {}, "state_dict": {"backbone.conv1.weight": torch.zeros(1)}}, mmdet)
    code, text = invoke("convert", mmdet, *args[2:], "--out", tmp_path / "w.pt")
    one_line_error(code, text, "mmdet.pth: an MMDetection checkpoint")
    code, text = invoke(
        "convert", source, "--from", "caffe", "--arch", "x", "--out", tmp_path / "v.pt"
    )
    one_line_error(code, text, "--from must be one of")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "frcnn.pt",
        "hostile.pth",
        "mmdet.pth",
        "truncated.pth",
    ]


def test_gsl_from_a_converted_model_starts_as_the_model(converted):
    """GSL's dilations start at 1: the GSL network initialised from the converted weights
    (as `train --set model.gsl=true --set model.init_from=CKPT` builds it) detects what the
    converted model detects."""
    path = converted["fasterrcnn_resnet50_fpn"]
    model, cfg, _, _ = load_detector(path)
    gsl = build_detector(config_from_dict(to_dict(cfg), ["model.gsl=true"]).model)
    assert "loaded" in load_model_weights(gsl, path)
    assert_same_detections(model, gsl, 1, 256, 320, least=11)


def test_finetuning_on_other_classes_reinitialises_the_predictor(converted, synth_set, tmp_path):
    """The recipe with model.init_from = the converted COCO model and a training method, on a
    10-class set: every tensor loads but the predictor's, which the start-up note names."""
    path = converted["fasterrcnn_resnet50_fpn"]
    cfg = load_config(
        ROOT / "configs/converted/torchvision_fasterrcnn_resnet50_fpn.yaml",
        [*(o for o in tiny_overrides(synth_set, max_iter=1) if not o.startswith("model.")),
         f"model.init_from={path}", "data.val.ann=",
         "methods=[{name: dynamic_rcnn, interval: 1}]",
         "model.num_classes=10", "train.eval_every=0"],
    )  # fmt: skip
    log = io.StringIO()
    result = train(cfg, tmp_path / "run", console=Console(file=log, width=400))
    note = " ".join(log.getvalue().split())
    assert "re-initialised for this model's classes: roi_heads.predictor.cls_score.weight" in note
    source = load_checkpoint(path)["model"]
    state = result.model.state_dict()
    assert state["roi_heads.predictor.cls_score.weight"].shape[0] == 11
    # frozen stem: exactly the converted weights
    assert torch.equal(state["backbone.body.conv1.weight"], source["backbone.body.conv1.weight"])


def test_a_converted_model_exports_with_parity(converted, tmp_path):
    """ONNX of the converted Faster R-CNN at a size whose P6 grid is not a whole stride
    (224 / 64): the floor anchor rule and the unaligned RoIAlign reach the graph (the export
    checks the artefact against PyTorch on scenes)."""
    out = tmp_path / "frcnn.onnx"
    code, text = invoke("export", converted["fasterrcnn_resnet50_fpn"], "--target", "onnx",
                        "--out", out, "--input-size", "192x224")  # fmt: skip
    assert code == 0, text
    assert "parity" in text and out.exists()


def test_a_converted_model_scores_and_predicts_in_cocos_ids(converted, synth_set, tmp_path):
    """A set labelled with three COCO categories (COCO's ids): eval matches the model's
    classes by name (the others are not scored), predict writes COCO's ids."""
    import json

    from podkit.convert.coco import TORCHVISION_LABELS

    names = {1: "person", 3: "car", 18: "dog"}
    val = json.loads((synth_set / "annotations/val.json").read_text())
    ids = [c["id"] for c in val["categories"]]
    remap = {old: list(names)[i % 3] for i, old in enumerate(ids)}
    val["categories"] = [{"id": i, "name": n} for i, n in names.items()]
    val["annotations"] = [{**a, "category_id": remap[a["category_id"]]} for a in val["annotations"]]
    (tmp_path / "coco_named.json").write_text(json.dumps(val))
    path = converted["fasterrcnn_resnet50_fpn"]
    sets = ["--set", f"data.val.ann={tmp_path / 'coco_named.json'}", "--set",
            f"data.val.images={synth_set / 'val'}", "--set", "data.test_min_size=128",
            "--set", "data.max_size=160"]  # fmt: skip
    code, out = invoke("eval", path, "--out", tmp_path / "eval.json", *sets)
    assert code == 0, out
    assert "matched to them by name" in " ".join(out.split())
    assert "AP" in json.loads((tmp_path / "eval.json").read_text())
    image = next((synth_set / "val").iterdir())
    code, out = invoke("predict", path, image, "--out", tmp_path / "pred", "--no-draw")
    assert code == 0, out
    found = {d["category_id"] for d in json.loads((tmp_path / "pred/detections.json").read_text())}
    assert found and found <= {
        i for i, n in enumerate(TORCHVISION_LABELS) if n not in ("N/A", "__background__")
    }


def test_pod_flow_on_a_converted_model(converted, synth_set, tmp_path):
    """GSL initialised from the converted Faster R-CNN (dilations at 1), `podkit scales` on
    two training images, `podkit decompose`: the FD network detects what the converted
    model detects (scales of 1 decompose into the plain convs)."""
    from podkit.models.checkpoint import save_checkpoint

    path = converted["fasterrcnn_resnet50_fpn"]
    model, cfg, ckpt, _ = load_detector(path)
    data = [f"data.train.ann={synth_set}/annotations/train.json", f"data.train.images={synth_set}/train",
            "data.test_min_size=128", "data.max_size=160"]  # fmt: skip
    gsl_cfg = config_from_dict(to_dict(cfg), ["model.gsl=true", *data])
    gsl = build_detector(gsl_cfg.model)
    load_model_weights(gsl, path)
    save_checkpoint({"model": gsl.state_dict(), "config": to_dict(gsl_cfg),
                     "classes": ckpt["classes"], "iteration": 0}, tmp_path / "gsl.pt")  # fmt: skip
    code, out = invoke("scales", tmp_path / "gsl.pt", "--images", 2, "--out", tmp_path / "s.json")
    assert code == 0, out
    code, out = invoke("decompose", tmp_path / "gsl.pt", "--scales", tmp_path / "s.json",
                       "--out", tmp_path / "fd.pt")  # fmt: skip
    assert code == 0, out
    fd, fd_cfg, _, _ = load_detector(tmp_path / "fd.pt")
    assert fd_cfg.model.fd_plan
    assert_same_detections(model, fd, 3, 128, 160, least=6)
