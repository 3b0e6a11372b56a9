"""podkit's default TVM CPU schedules against numpy, on the box head's shape of kernel."""

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")

from tvm import relax, tirx  # noqa: E402

from podkit.export import tvm as tvm_backend  # noqa: E402
from podkit.export.tvm_schedule import cpu_default_schedule  # noqa: E402


def _box_head_layer(k: int, n: int, seed: int = 0):
    """relu(x @ w + b) with a symbolic row count, as the exported box head after NMS."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((k, n)).astype("float32") / np.sqrt(k)
    b = rng.standard_normal(n).astype("float32")
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType([tirx.Var("rois", "int64"), k], "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = relax.op.nn.relu(relax.op.add(relax.op.matmul(x, relax.const(w)), relax.const(b)))
            out = bb.emit_output(bb.emit(y))
        bb.emit_func_output(out)
    return bb.get(), w, b


@pytest.mark.parametrize("n", [128, 81])  # hidden layer (vectorised blocks), class scores
def test_matmul_schedule_equals_numpy(n):
    mod, w, b = _box_head_layer(300, n)
    target = tvm_backend.host_target()
    with target:
        scheduled = cpu_default_schedule()(tvm_backend._lower(mod, target))
    funcs = [f for _, f in scheduled.functions_items() if isinstance(f, tirx.PrimFunc)]
    assert funcs and all(f.attrs["tirx.is_scheduled"] for f in funcs)
    assert all("T.parallel" in f.script() for f in funcs)
    vm = relax.VirtualMachine(tvm.compile(scheduled, target=target), tvm.cpu())
    for rows in (1, 7, 130):  # the symbolic row count at run time
        x = np.random.default_rng(rows).standard_normal((rows, 300)).astype("float32")
        out = vm["main"](tvm.runtime.tensor(x)).numpy()
        np.testing.assert_allclose(out, np.maximum(x @ w + b, 0), rtol=1e-4, atol=1e-4)


def test_symbolic_tasks_are_found():
    mod, _, _ = _box_head_layer(64, 64)
    target = tvm_backend.host_target()
    lowered = tvm_backend._lower(mod, target)
    funcs = [f for _, f in lowered.functions_items() if isinstance(f, tirx.PrimFunc)]
    assert funcs and all(tvm_backend._has_symbolic_shape(f) for f in funcs)
    static = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType([4, 64], "float32"))
    with static.function("main", [x]):
        static.emit_func_output(static.emit(relax.op.nn.relu(x)))
    lowered = tvm_backend._lower(static.get(), target)
    funcs = [f for _, f in lowered.functions_items() if isinstance(f, tirx.PrimFunc)]
    assert funcs and not any(tvm_backend._has_symbolic_shape(f) for f in funcs)
