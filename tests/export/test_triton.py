"""A Triton model repository: its config.pbtxt parses into Triton's own ModelConfig (the
protobuf tritonclient ships), its names, types and dims are the ONNX file's, batching is
declared as the artefact takes images, and the repository scores like the ONNX artefact."""

import onnx
import pytest

from podkit.export import BACKENDS, ExportOptions, backend_of, export_checkpoint, read_record
from tests.conftest import invoke
from tests.export.conftest import detections_of

pytest.importorskip("tritonclient")
from google.protobuf import text_format  # noqa: E402
from tritonclient.grpc import model_config_pb2 as pb  # noqa: E402


def parsed_config(repo, name="detector") -> pb.ModelConfig:
    return text_format.Parse((repo / name / "config.pbtxt").read_text(), pb.ModelConfig())


def onnx_io(path) -> list[tuple[str, int, list[int]]]:
    """(name, elem type, dims) of the ONNX file's inputs then outputs, -1 for a free dim."""
    graph = onnx.load(str(path)).graph
    return [
        (v.name, v.type.tensor_type.elem_type,
         [d.dim_value if d.HasField("dim_value") else -1 for d in v.type.tensor_type.shape.dim])
        for v in [*graph.input, *graph.output]
    ]  # fmt: skip


TYPES = {1: pb.TYPE_FP32, 7: pb.TYPE_INT64}


@pytest.fixture(scope="module")
def any_batch_repo(checkpoints, tmp_path_factory):
    repo = tmp_path_factory.mktemp("triton") / "repo"
    opts = ExportOptions((96, 128), batch=None, name="det")
    report = export_checkpoint(checkpoints(), "triton", repo, opts, log=str)
    assert all(p["ok"] for p in report["parity"])
    return repo


def test_any_batch_repository_declares_batching_and_the_onnx_files_io(any_batch_repo):
    repo = any_batch_repo
    assert sorted(p.relative_to(repo).as_posix() for p in repo.rglob("*") if p.is_file()) == [
        "det/1/model.onnx", "det/config.pbtxt", "det/podkit.json"
    ]  # fmt: skip
    config = parsed_config(repo, "det")
    assert config.name == "det" and config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == 8 and config.HasField("dynamic_batching")
    assert [g.kind for g in config.instance_group] == [pb.ModelInstanceGroup.KIND_CPU]
    declared = [(t.name, t.data_type, list(t.dims)) for t in [*config.input, *config.output]]
    expected = [
        (name, TYPES[t], dims[1:] or [1]) for name, t, dims in onnx_io(repo / "det/1/model.onnx")
    ]
    assert declared == expected
    assert [t.name for t in config.output] == read_record(repo)["outputs"]
    assert expected[0] == ("image", pb.TYPE_FP32, [3, 96, 128])
    # a value per image (num_detections) is a [1] reshaped to a scalar
    (count,) = [t for t in config.output if t.name == "num_detections"]
    assert list(count.dims) == [1] and count.HasField("reshape") and not count.reshape.shape


def test_static_repository_declares_full_shapes(checkpoints, tmp_path):
    repo = tmp_path / "repo"
    export_checkpoint(checkpoints(), "triton", repo, ExportOptions((96, 128), batch=2), log=str)
    config = parsed_config(repo)
    assert config.max_batch_size == 0 and not config.HasField("dynamic_batching")
    assert list(config.input[0].dims) == [2, 3, 96, 128]
    declared = [(t.name, list(t.dims)) for t in [*config.input, *config.output]]
    assert declared == [(n, d) for n, _, d in onnx_io(repo / "detector/1/model.onnx")]


def test_repository_scores_like_its_checkpoint(reference, any_batch_repo, val_set):
    assert backend_of(any_batch_repo) is BACKENDS["triton"]
    got, ids = detections_of(any_batch_repo, val_set)
    assert ids == reference[1]
    for r, g in zip(reference[0], got, strict=True):
        assert len(r["scores"]) == len(g["scores"]) > 0
        assert (abs(g["boxes"] - r["boxes"]).max() <= 1e-2) and (g["labels"] == r["labels"]).all()


def test_export_cli_writes_protects_and_replaces_a_repository(checkpoints, tmp_path):
    repo = tmp_path / "repo"
    args = ["export", checkpoints(), "--target", "triton", "--out", repo, "--input-size", "96x128",
            "--dynamic-batch", "--no-check"]  # fmt: skip
    code, text = invoke(*args)
    assert code == 0, text
    code, text = invoke("info", repo)
    assert code == 0 and "96x128" in text
    code, text = invoke(*args)
    assert code == 2 and "exists; pass --overwrite" in text
    (repo / "detector" / "1" / "model.onnx").write_bytes(b"stale")
    code, text = invoke(*args, "--overwrite")
    assert code == 0, text
    assert (repo / "detector" / "1" / "model.onnx").stat().st_size > 1000  # written again
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    code, text = invoke(*args[:5], mine, *args[6:], "--overwrite")
    assert code == 2 and "not a podkit triton repository" in text
    assert (mine / "notes.txt").read_text() == "keep"


def test_a_plan_without_tensorrt_is_refused_before_any_export(checkpoints, tmp_path):
    code, text = invoke("export", checkpoints(), "--target", "triton", "--out", tmp_path / "r",
                        "--triton-model", "tensorrt")  # fmt: skip
    assert code == 2 and ("TensorRT is not installed" in text or "NVIDIA GPU" in text)
    assert not (tmp_path / "r").exists()
