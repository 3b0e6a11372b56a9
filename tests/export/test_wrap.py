"""The export wrapper computes exactly what the detector computes, in a traceable form."""

import numpy as np
import pytest
import torch

from podkit.export import sample_image, torch_runner
from podkit.export.parity import compare_outputs
from podkit.export.wrap import ExportWrapper, check_input_size
from podkit.models.checkpoint import load_detector
from podkit.models.split_conv import SplitConv


@pytest.mark.parametrize("arch", ["faster_rcnn_fpn", "faster_rcnn_c4", "retinanet"])
@pytest.mark.parametrize("variant", ["baseline", "gsl", "fd"])
def test_wrapper_detections_equal_model(checkpoints, arch, variant):
    """A batch of two different images: each image's rows are the model's detections on it."""
    model, _, _, _ = load_detector(checkpoints(arch, variant))
    model.eval()
    images = sample_image((128, 160), batch=2)
    with torch.no_grad():
        refs = model([torch.from_numpy(image) for image in images]).detections
    boxes, scores, labels, count = torch_runner(ExportWrapper(model))(images)
    assert boxes.shape == (2, 100, 4) and count.shape == (2,)
    for k, ref in enumerate(refs):
        n = int(count[k])
        assert n == len(ref["boxes"]) > 0
        np.testing.assert_allclose(boxes[k, :n], ref["boxes"].numpy(), atol=1e-3)
        np.testing.assert_array_equal(labels[k, :n], ref["labels"].numpy())
        np.testing.assert_allclose(scores[k, :n], ref["scores"].numpy(), atol=1e-5)
        assert not boxes[k, n:].any() and not scores[k, n:].any()  # padding is zeros
    assert not np.array_equal(boxes[0], boxes[1])  # two images, two sets of detections


def test_input_size_rules():
    check_input_size(64, 96)
    with pytest.raises(ValueError, match="multiples of 32"):
        check_input_size(100, 128)


def test_compare_outputs_tolerates_only_ties():
    names = ["boxes", "scores", "labels", "num_detections"]
    boxes = np.array([[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]], np.float32)
    scores, labels = np.array([0.9, 0.5, 0.5], np.float32), np.array([1, 2, 3])

    def batch(*images):  # per image (boxes, scores, labels, count) -> the batched outputs
        return [np.stack(x) for x in zip(*images, strict=True)]

    ref = batch((boxes, scores, labels, 3))
    swapped = batch((boxes[[0, 2, 1]], scores, labels[[0, 2, 1]], 3))
    report = compare_outputs(names, ref, swapped)
    assert report["ok"] and report["reordered_ties"] == 2
    not_tied = batch((boxes[[1, 0, 2]], scores, labels[[1, 0, 2]], 3))
    assert not compare_outputs(names, ref, not_tied)["ok"]
    moved = batch((boxes + np.float32(0.01), scores, labels, 3))
    assert not compare_outputs(names, ref, moved)["ok"]
    # the box tolerance grows with the coordinate: 1e-3 + 2e-5 |x| px
    far = boxes + np.float32(1000)
    far_ref, far_moved = batch((far, scores, labels, 3)), batch((far + 0.015, scores, labels, 3))
    assert compare_outputs(names, far_ref, far_moved)["ok"]  # within 0.021 px at 1000 px
    assert not compare_outputs(names, far_ref, batch((far + 0.03, scores, labels, 3)))["ok"]
    fewer = batch((boxes, scores, labels, 2))
    assert "2 detections vs PyTorch 3" in compare_outputs(names, ref, fewer)["error"]
    # a batch of two: the second image's difference is found and named
    two = batch((boxes, scores, labels, 3), (boxes, scores, labels, 3))
    second_moved = batch((boxes, scores, labels, 3), (boxes + np.float32(0.01), scores, labels, 3))
    assert compare_outputs(names, two, two)["detections"] == 6
    assert compare_outputs(names, two, second_moved)["error"].startswith("image 1:")


def test_torch_compile_runner_matches_eager(checkpoints):
    """`bench latency --backend torch-compile` times the same function, compiled."""
    model, _, _, _ = load_detector(checkpoints("retinanet", "baseline"))
    wrapper = ExportWrapper(model)
    image = sample_image((128, 128))
    eager = torch_runner(wrapper)(image)
    compiled = torch_runner(wrapper, compile=True)(image)
    report = compare_outputs(wrapper.output_names, eager, compiled)
    assert report["ok"] and report["detections"] > 0, report


@pytest.mark.parametrize("arch", ["faster_rcnn_fpn", "faster_rcnn_c4", "retinanet"])
def test_wrapper_exports_on_the_first_strategy(checkpoints, arch):
    """torch.export (non-strict, the ONNX exporter's first strategy) takes the wrapper as it
    is: a data-dependent length read in the model makes it fail, and the exporter then dumps
    the partial graph on stderr and retraces with another strategy (twice the time)."""
    model, _, _, _ = load_detector(checkpoints(arch, "gsl"))
    program = torch.export.export(ExportWrapper(model), (torch.rand(2, 3, 128, 160),), strict=False)
    assert "podkit.nms" in str(program.graph)


def test_split_conv_norms_are_folded_into_the_parts(checkpoints):
    """onnxruntime cannot fold a norm through the parts' Concat: the wrapper does (the
    detections stay the model's: test_wrapper_detections_equal_model[fd])."""
    model, _, _, _ = load_detector(checkpoints("faster_rcnn_fpn", "fd"))
    wrapper = ExportWrapper(model.eval())

    def norms_after_splits(module):
        return [
            type(getattr(block, "bn" + name[4:])).__name__
            for block in module.modules()
            for name, child in block.named_children()
            if isinstance(child, SplitConv)
        ]

    before, after = norms_after_splits(model), norms_after_splits(wrapper)
    assert len(before) == len(after) > 0 and "Identity" not in before  # the model untouched
    assert set(after) == {"Identity"}
    parts = [p for m in wrapper.modules() if isinstance(m, SplitConv) for p in m.parts]
    assert all(p.bias is not None for p in parts)
