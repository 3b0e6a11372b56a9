"""studies/tvm_conv_trials.py's graphs through podkit's TVM path, against onnxruntime."""

import numpy as np
import pytest

pytest.importorskip("tvm")
pytest.importorskip("onnxruntime")

from podkit.export import ort  # noqa: E402
from podkit.export import tvm as tvm_backend  # noqa: E402
from studies import tvm_conv_trials as trials  # noqa: E402


def test_a_one_output_graph_of_any_channel_count_compiles(tmp_path):
    """8 input channels (not an image's 3) and one output (the VM returns a tensor, not a
    tuple): TVM's result equals onnxruntime's on the same graph."""
    gflops = trials.conv_onnx(tmp_path / "conv.onnx", 8, 16, 3, 12)
    assert gflops == pytest.approx(2 * 8 * 16 * 9 * 144 / 1e9)
    tvm_backend.export(tmp_path / "conv.onnx", tmp_path / "conv.so", (12, 12), log=lambda _: None)
    x = np.random.default_rng(0).standard_normal((1, 8, 12, 12)).astype("float32")
    (ours,) = tvm_backend.load(tmp_path / "conv.so")(x)
    (reference,) = ort.load(tmp_path / "conv.onnx")(x)
    assert ours.shape == (1, 16, 12, 12)
    np.testing.assert_allclose(ours, reference, rtol=1e-4, atol=1e-4)
