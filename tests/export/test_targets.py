"""ONNX and TVM artefacts against PyTorch; the TensorRT audit; missing backends."""

import importlib.util

import onnx
import pytest
from onnx import TensorProto, helper

from podkit.export import BackendUnavailable, ExportOptions, export_checkpoint, load, sample_image
from podkit.export.tensorrt import audit


@pytest.mark.parametrize(
    "arch,variant,nms",
    [
        # FPN baseline and GSL with NMS: the dynamic GSL graph in the next test holds both
        ("faster_rcnn_fpn", "baseline", False),
        ("faster_rcnn_fpn", "fd", True),
        ("retinanet", "baseline", True),
        ("retinanet", "gsl", False),  # RetinaNet FD: the dynamic test below
        ("faster_rcnn_c4", "fd", True),
    ],
)
def test_onnx_static_parity(checkpoints, tmp_path, arch, variant, nms):
    report = export_checkpoint(
        checkpoints(arch, variant),
        "onnx",
        tmp_path / "m.onnx",
        ExportOptions((128, 160), nms=nms),
        log=str,
    )
    (parity,) = report["parity"]
    assert parity["ok"]
    if nms:
        assert parity["detections"] > 0 and parity["max_box_error"] <= 1e-3
    else:
        assert parity["max_rel_error"] <= 1e-4
    assert audit(tmp_path / "m.onnx") == []  # what TensorRT would import


@pytest.mark.parametrize(
    "arch,variant,nms",
    [  # Faster R-CNN FPN with GSL: the baseline's dynamic graph and the dilation predictors
        ("faster_rcnn_fpn", "gsl", True),
        ("retinanet", "fd", False),  # raw outputs: every anchor of any input size
    ],
)
def test_onnx_dynamic_parity_at_two_sizes(checkpoints, tmp_path, arch, variant, nms):
    report = export_checkpoint(
        checkpoints(arch, variant),
        "onnx",
        tmp_path / "m.onnx",
        ExportOptions((128, 128), dynamic=True, nms=nms),
        log=str,
    )
    assert [p["input"] for p in report["parity"]] == [[128, 128], [192, 224]]
    assert all(p["ok"] for p in report["parity"])
    first = load(tmp_path / "m.onnx")(sample_image((64, 320)))[0]
    if nms:
        assert all(p["detections"] > 0 for p in report["parity"])
        assert first.shape == (1, 100, 4)  # (batch, max_detections, 4)
    else:  # raw logits for every anchor of a 64x320 image (9 anchors per location, P3-P7)
        cells = sum(-(-64 // s) * -(-320 // s) for s in (8, 16, 32, 64, 128))
        assert first.shape[0] == 9 * cells


def test_tvm_parity_untuned(checkpoints, tmp_path):
    """Faster R-CNN FD (RoIAlign, NMS, split convs) through TVM; reusing an ONNX export is
    tested with any backend in test_backends.py."""
    ckpt = checkpoints("faster_rcnn_fpn", "fd")
    # the intermediate ONNX is temporary: a user's m.onnx beside m.so stays as it was
    (tmp_path / "m.onnx").write_text("the user's own export")
    report = export_checkpoint(ckpt, "tvm", tmp_path / "m.so", ExportOptions((128, 160)), log=str)
    assert (tmp_path / "m.onnx").read_text() == "the user's own export"
    assert {p.name for p in tmp_path.iterdir()} == {
        "m.onnx", "m.so", "m.so.json", "m.so.build.log"}  # fmt: skip
    (parity,) = report["parity"]
    assert parity["ok"] and parity["detections"] > 0
    assert (tmp_path / "m.so").is_file() and report["tvm"]["input_size"] == [128, 160]


def test_tvm_refuses_dynamic(checkpoints, tmp_path):
    with pytest.raises(ValueError, match="one input size"):
        export_checkpoint(
            checkpoints(), "tvm", tmp_path / "m.so", ExportOptions(dynamic=True), log=str
        )


def _model(nodes, inputs, initializers=(), opset=18):
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
        [helper.make_tensor_value_info(nodes[-1].output[0], TensorProto.FLOAT, None)],
        initializer=list(initializers),
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def test_audit_on_crafted_graphs(tmp_path):
    w = helper.make_tensor("w", TensorProto.FLOAT, [4, 3, 3, 3], [0.1] * 108)
    fine = _model(
        [
            helper.make_node("Conv", ["x", "w"], ["c"], dilations=[2, 3], pads=[2, 3, 2, 3]),
            helper.make_node("Relu", ["c"], ["y"]),
        ],
        [("x", [1, 3, 16, 16])],
        [w],
    )
    onnx.save(fine, tmp_path / "fine.onnx")
    assert audit(tmp_path / "fine.onnx") == []

    bad = _model(
        [
            helper.make_node("Unique", ["x"], ["u"]),
            helper.make_node("Shape", ["x"], ["s"]),
            helper.make_node("Gather", ["s", "i"], ["k"], axis=0),
            helper.make_node("TopK", ["x", "k"], ["t", "ti"]),
            helper.make_node("MaxPool", ["x"], ["p"], kernel_shape=[2, 2], dilations=[2, 2]),
            helper.make_node("MaxRoiPool", ["x", "r"], ["y"], pooled_shape=[2, 2]),
        ],
        [("x", [1, 3, 16, 16]), ("r", [2, 5])],
        [helper.make_tensor("i", TensorProto.INT64, [1], [3])],
    )
    onnx.save(bad, tmp_path / "bad.onnx")
    problems = " | ".join(audit(tmp_path / "bad.onnx"))
    assert "Unique: not supported" in problems
    assert "MaxRoiPool: not supported" in problems
    assert "TopK: input 'K' is computed" in problems
    assert "pooling dilations" in problems

    grid = _model(
        [helper.make_node("GridSample", ["x", "g"], ["y"], mode="linear")],
        [("x", [1, 3, 8, 8]), ("g", [1, 4, 4, 2])],
        opset=20,
    )
    onnx.save(grid, tmp_path / "grid.onnx")
    assert "TensorRT#4646" in audit(tmp_path / "grid.onnx")[0]


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT present")
def test_tensorrt_missing_is_a_clear_error(checkpoints, tmp_path):
    report = export_checkpoint(
        checkpoints("faster_rcnn_fpn", "fd"), "tensorrt", tmp_path / "m.engine",
        ExportOptions((128, 160), check_only=True), log=str,
    )  # fmt: skip
    assert report["audit"] == []  # the audit runs without TensorRT
    said = []
    with pytest.raises(BackendUnavailable, match="pip install 'podkit\\[tensorrt\\]'"):
        export_checkpoint(
            checkpoints("faster_rcnn_fpn", "fd"), "tensorrt", tmp_path / "m.engine",
            ExportOptions((128, 160)), log=said.append,
        )  # fmt: skip
    assert said == [] and list(tmp_path.iterdir()) == []  # said so before exporting anything
