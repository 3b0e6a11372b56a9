"""An artefact is scored like its checkpoint: same detections, same COCO metrics, and
`podkit predict` writes results pycocotools loads.

The ground truth is the checkpoint's own most confident detections (an untrained detector
scores ~0 AP on the real boxes, which any artefact would match): the checkpoint then scores a
high AP, and a box the artefact maps back to the wrong pixels, a resize that differs, or a lost
detection lowers the artefact's."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from podkit.evaluation.artefacts import evaluate_path
from podkit.evaluation.predict import predict_images
from podkit.export import (
    ExportOptions,
    export_checkpoint,
    load,
    read_record,
    sample_image,
    torch_runner,
    write_record,
)
from podkit.export.precision import (
    NETWORK_OPS,
    calibration_images,
    convert_fp16,
    head_outputs,
    quantize_int8,
)
from podkit.export.wrap import ExportWrapper
from podkit.models.checkpoint import load_detector
from tests.conftest import invoke
from tests.export.conftest import detections_of, pseudo_ground_truth

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def artefact(checkpoints, tmp_path_factory):
    """The checkpoint exported static 96x128 with a batch of two (batch 1 is exported
    throughout tests/export/test_targets.py); export_checkpoint checks it against PyTorch
    on two different images."""
    out = tmp_path_factory.mktemp("artefact") / "model.onnx"
    export_checkpoint(checkpoints(), "onnx", out, ExportOptions((96, 128), batch=2), log=str)
    return out


def test_artefact_carries_what_scoring_needs(checkpoints, artefact):
    record = read_record(artefact)
    assert record["input_size"] == [96, 128] and not record["dynamic"] and record["nms"]
    assert record["batch"] == 2 and record["precision"] == "fp32"
    assert record["outputs"] == ["boxes", "scores", "labels", "num_detections"]
    assert record["config"]["model"]["arch"] == "faster_rcnn_fpn"


def test_artefact_detections_equal_the_checkpoints(reference, artefact, val_set):
    got, got_ids = detections_of(artefact, val_set)
    assert got_ids == reference[1]
    for r, g in zip(reference[0], got, strict=True):
        assert len(r["scores"]) == len(g["scores"]) > 0
        assert r["boxes"][:, 2].max() > 128  # in original pixels (fed at half size)
        np.testing.assert_allclose(g["boxes"], r["boxes"], atol=1e-2)
        np.testing.assert_allclose(g["scores"], r["scores"], atol=1e-4)
        assert (g["labels"] == r["labels"]).all()


def test_artefact_ap_equals_checkpoint_ap(checkpoints, reference, artefact, val_set, tmp_path):
    overrides = pseudo_ground_truth(reference, val_set, tmp_path)
    reference = evaluate_path(checkpoints(), overrides)
    got = evaluate_path(artefact, overrides)
    assert reference["AP"] > 30  # the test has teeth: a mis-scaled box would cost AP
    for key in ("AP", "AP50", "AP75", "AP90"):
        assert abs(got[key] - reference[key]) <= 0.1, (key, got[key], reference[key])


def test_predict_writes_coco_results_pycocotools_loads(checkpoints, artefact, val_set, tmp_path):
    images = sorted(Path(val_set[1].split("=", 1)[1]).glob("*.png"))[:3]
    for model in (checkpoints(), artefact):
        out = tmp_path / Path(model).suffix[1:]
        summary = predict_images(
            model, [str(p) for p in images], out, 0.0, per_image_json=True, overrides=val_set
        )
        assert summary["images"] == 3
        gt = COCO(str(out / "images.json"))
        results = gt.loadRes(str(out / "detections.json"))
        assert len(results.getAnnIds()) == summary["detections"] > 0
        assert {a["image_id"] for a in results.loadAnns(results.getAnnIds())} <= {1, 2, 3}
        COCOeval(gt, results, "bbox")  # the two files are one consistent COCO pair
        assert sorted(p.name for p in (out / "drawn").iterdir()) == [p.name for p in images]
        per_image = json.loads((out / "json" / f"{images[0].stem}.json").read_text())
        assert per_image["file"] == str(images[0]) and per_image["detections"]
    checkpoint_dets = json.loads((tmp_path / "pt" / "detections.json").read_text())
    artefact_dets = json.loads((tmp_path / "onnx" / "detections.json").read_text())
    assert len(checkpoint_dets) == len(artefact_dets)


def test_predict_cli_finds_images_and_protects_earlier_output(artefact, synth_set, tmp_path):
    out = tmp_path / "pred"
    code, text = invoke("predict", artefact, f"{synth_set}/val/*.png", "--out", out, "--no-draw")
    assert code == 0, text
    assert "8 images" in text and not (out / "drawn").exists()
    code, text = invoke("predict", artefact, synth_set / "val", "--out", out)
    assert code == 2 and "--overwrite" in text
    code, text = invoke("predict", artefact, tmp_path / "nothing*.png", "--out", tmp_path / "x")
    assert code == 2 and "no image file" in text


def test_artefact_without_record_or_detections_is_refused(artefact, tmp_path):
    import onnx

    record = read_record(artefact)
    raw = tmp_path / "raw.onnx"
    shutil.copyfile(artefact, raw)
    write_record(raw, {**record, "nms": False})  # what --no-nms records
    code, text = invoke("eval", raw, "--out", tmp_path / "eval.json")
    assert code == 2 and "--no-nms" in text
    model = onnx.load(str(raw))
    del model.metadata_props[:]
    onnx.save(model, str(tmp_path / "foreign.onnx"))
    code, text = invoke("eval", tmp_path / "foreign.onnx", "--out", tmp_path / "eval.json")
    assert code == 2 and "no podkit record" in text


def test_batch_two_artefact_equals_two_batch_one_runs(checkpoints, artefact):
    """Each image's rows of a batch-2 call are PyTorch's detections of that image alone."""
    model, _, _, _ = load_detector(checkpoints())
    alone = torch_runner(ExportWrapper(model))
    images = sample_image((96, 128), seed=3, batch=2)
    pair = load(artefact)(images)
    for k in range(2):
        single = alone(images[k : k + 1])
        assert int(single[3][0]) > 0
        for name, a, b in zip(read_record(artefact)["outputs"], pair, single, strict=True):
            np.testing.assert_allclose(a[k], b[0], atol=1e-4, err_msg=name)


def test_any_batch_artefact_runs_each_image_as_alone(checkpoints, reference, val_set, tmp_path):
    """`--dynamic-batch`: one graph for 1 and 3 images, each image's rows PyTorch's detections
    of it alone, and scored through the loader's batches of 3 like the checkpoint."""
    path = tmp_path / "any.onnx"
    code, text = invoke("export", checkpoints(), "--target", "onnx", "--out", path,
                        "--input-size", "96x128", "--dynamic-batch")  # fmt: skip
    assert code == 0, text
    assert "batch any" in text and text.count("parity vs PyTorch") == 3
    assert read_record(path)["batch"] is None
    model, _, _, _ = load_detector(checkpoints())
    alone = torch_runner(ExportWrapper(model))
    run = load(path)
    for n in (1, 3):
        images = sample_image((96, 128), seed=n, batch=n)
        outputs = run(images)
        assert outputs[0].shape == (n, 100, 4)
        for k in range(n):
            single = alone(images[k : k + 1])
            assert int(single[3][0]) > 0
            for name, a, b in zip(read_record(path)["outputs"], outputs, single, strict=True):
                np.testing.assert_allclose(a[k], b[0], atol=1e-4, err_msg=name)
    got, _ = detections_of(path, val_set)
    for r, g in zip(reference[0], got, strict=True):
        assert len(r["scores"]) == len(g["scores"]) > 0
        np.testing.assert_allclose(g["boxes"], r["boxes"], atol=1e-2)
    code, text = invoke("export", checkpoints(), "--target", "tvm", "--out", tmp_path / "m.so",
                        "--dynamic-batch")  # fmt: skip
    assert code == 2 and "--batch N" in text


def test_int8_keeps_float_only_the_layers_that_feed_post_processing():
    """FD's split convs meet in a Concat that feeds the network: they are quantised; a head's
    predictor whose output is concatenated with other levels' for decoding stays float."""
    from onnx import TensorProto, helper

    conv = lambda name, x: helper.make_node("Conv", [x, f"w_{name}"], [name], name=name)  # noqa: E731
    nodes = [
        conv("part_a", "image"), conv("part_b", "image"),
        helper.make_node("Concat", ["part_a", "part_b"], ["split"], axis=1),
        helper.make_node("BatchNormalization", ["split", "g", "b", "m", "v"], ["normed"]),
        conv("after_norm", "normed"),
        helper.make_node("Relu", ["after_norm"], ["act"]),
        conv("predictor_p3", "act"), conv("predictor_p4", "act"),
        helper.make_node("Concat", ["predictor_p3", "predictor_p4"], ["levels"], axis=1),
        helper.make_node("Reshape", ["levels", "shape"], ["logits"]),
    ]  # fmt: skip
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("image", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, None)],
    )  # fmt: skip
    assert head_outputs(helper.make_model(graph)) == ["predictor_p3", "predictor_p4"]


def test_int8_artefact_is_quantised_per_channel_and_keeps_its_ap(
    checkpoints, artefact, reference, val_set, tmp_path
):
    """The INT8 form of the FP32 artefact (what `export --int8` writes after its FP32 export;
    that path runs in test_bench_latency), calibrated on 8 training images."""
    import onnx

    path = tmp_path / "int8.onnx"
    record = read_record(artefact)
    images = list(calibration_images(record["config"], tuple(record["input_size"]), 8, batch=2))
    assert len(images) == 4 and images[0].shape == (2, 3, 96, 128)
    quantize_int8(artefact, path, images)
    write_record(path, {**record, "precision": "int8"})
    graph = onnx.load(str(path)).graph
    produced_by = {out: node for node in graph.node for out in node.output}
    layers = [n for n in graph.node if n.op_type in ("Conv", "Gemm")]
    quantised = [n for n in layers if n.input[1] in produced_by]
    assert all(produced_by[n.input[1]].op_type == "DequantizeLinear" for n in quantised)
    # every float layer is a head's predictor (named by its weight, e.g. rpn.head.cls_logits)
    floats = {n.input[1].split(".")[-2] for n in layers if n not in quantised}
    assert floats == {"cls_logits", "bbox_pred", "cls_score"} and len(quantised) > 10
    weights = {i.name: i for i in graph.initializer}
    first = produced_by[quantised[0].input[1]]
    scale = onnx.numpy_helper.to_array(weights[first.input[1]])
    assert scale.size == onnx.numpy_helper.to_array(weights[first.input[0]]).shape[0] > 1
    # the network's layers are quantised, the heads' predictors and all after them are not
    consumers: dict = {}
    for node in graph.node:
        for k, name in enumerate(node.input):
            consumers.setdefault(name, []).append((node.op_type, k))
    fed = {c for n in graph.node if n.op_type == "DequantizeLinear" for c in consumers[n.output[0]]}
    # (Slice: each image's view of the batch's features, which RoiAlign pools in float)
    network = {(op, k) for op in NETWORK_OPS for k in range(3)} - {("RoiAlign", 1)}
    assert fed <= network | {("Slice", 0)}, fed
    assert not any(n.op_type == "DequantizeLinear" for n in produced_by.values()
                   if n.output[0] in {o.name for o in graph.output})  # fmt: skip
    overrides = pseudo_ground_truth(reference, val_set, tmp_path)
    fp32 = evaluate_path(checkpoints(), overrides)
    int8 = evaluate_path(path, overrides)
    assert int8["AP"] >= fp32["AP"] - 1.0, (int8["AP"], fp32["AP"])  # the stated drop


def test_fp16_artefact_runs_with_float32_io_and_keeps_its_ap(
    checkpoints, artefact, reference, val_set, tmp_path
):
    """The FP16 form of the FP32 file: half-precision weights, float32 inputs and outputs,
    NMS and RoiAlign in float; it runs (here on the CPU provider) and scores like FP32."""
    import onnx

    half = tmp_path / "fp16.onnx"
    convert_fp16(artefact, half)
    write_record(half, {**read_record(artefact), "precision": "fp16"})
    model = onnx.load(str(half))
    f16, f32 = onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT
    conv_weights = {n.input[1] for n in model.graph.node if n.op_type == "Conv"}
    assert {i.data_type for i in model.graph.initializer if i.name in conv_weights} == {f16}
    assert {i.type.tensor_type.elem_type for i in model.graph.input} == {f32}
    assert model.graph.output[0].type.tensor_type.elem_type == f32
    overrides = pseudo_ground_truth(reference, val_set, tmp_path)
    fp32, fp16 = evaluate_path(artefact, overrides), evaluate_path(half, overrides)
    assert fp16["AP"] >= fp32["AP"] - 1.0, (fp16["AP"], fp32["AP"])
