"""The Backend interface: a backend added to the one table is exported to, loaded, scored
and timed by every caller without any other edit."""

import shutil
from dataclasses import replace
from pathlib import Path

import pytest

import podkit.bench.latency as latency
from podkit.bench.accuracy import is_artefact, open_detector
from podkit.export import BACKENDS, backend_of, export_checkpoint
from podkit.export.backend import Backend


def test_each_artefact_suffix_names_one_backend():
    suffixes = [b.suffix for b in BACKENDS.values()]
    assert len(set(suffixes)) == len(suffixes)  # two backends writing .so would collide
    for backend in BACKENDS.values():
        assert backend_of(Path("model" + backend.suffix)) is backend
    with pytest.raises(ValueError, match="unknown artefact"):
        backend_of("model.pt")


def copy_backend() -> tuple[Backend, list]:
    """onnxruntime behind another name and suffix: its build copies the ONNX file, its load
    counts the artefacts it opened."""
    onnx = BACKENDS["onnx"]
    opened = []

    def build(onnx_path, out, opts, log):
        shutil.copyfile(onnx_path, out)
        return {"copied_from": str(onnx_path), "batch": opts.batch}

    def load(path, device, threads):
        opened.append(path)
        return onnx.load(path, device, threads)

    backend = replace(onnx, name="copy", runtime="copyrt", suffix=".copy", precisions=("fp32",),
                      build=build, load=load)  # fmt: skip
    return backend, opened


def test_a_backend_added_to_the_table_works_everywhere(checkpoints, tmp_path, monkeypatch):
    backend, opened = copy_backend()
    monkeypatch.setitem(BACKENDS, "copy", backend)  # the one table, nothing else
    ckpt = checkpoints("retinanet", "baseline")
    out = tmp_path / "m.copy"
    report = export_checkpoint(ckpt, "copy", out, (128, 160), log=str)
    assert report["copy"]["batch"] == 1 and report["parity"][0]["ok"]
    assert opened == [out]  # the parity check ran the artefact through its backend
    with pytest.raises(
        ValueError, match="--target copy exports FP32 only; INT8 is for onnx and tensorrt"
    ):
        export_checkpoint(ckpt, "copy", tmp_path / "q.copy", (128, 160), precision="int8")
    assert is_artefact(out)
    detector, cfg, _, _ = open_detector(out)
    assert detector.record["input_size"] == [128, 160] and cfg.model.arch == "retinanet"
    opts = latency.LatencyOptions(input_size=(128, 160), warmup=1, iters=2,
                                  cache_dir=tmp_path / "cache")  # fmt: skip
    timed = latency.run_latency([ckpt], ["copyrt"], opts, log=str)
    (row,) = timed["results"]
    assert row["backend"] == "copyrt" and row["artefact"].endswith(".copy")
    cached = Path(row["artefact"])
    assert cached.parent.parent == tmp_path / "cache" and cached.suffix == ".copy"
    # export's check, open_detector, then the latency cache's export check and its timing
    assert opened == [out, out, cached, cached]


def test_an_audit_that_finds_problems_stops_the_build(checkpoints, tmp_path, monkeypatch):
    """A backend's audit runs on the ONNX graph before its build: `check_only` reports it,
    an export refuses to build and writes nothing."""
    built = []
    strict = replace(BACKENDS["onnx"], name="strict", suffix=".strict", precisions=("fp32",),
                     audit=lambda path: ["Foo: not supported (x2)"],
                     build=lambda *args: built.append(args) or {})  # fmt: skip
    monkeypatch.setitem(BACKENDS, "strict", strict)
    ckpt, graph = checkpoints("retinanet", "baseline"), tmp_path / "graph" / "m.onnx"
    graph.parent.mkdir()
    report = export_checkpoint(ckpt, "strict", None, (128, 160), check_only=True, log=str,
                               onnx_path=graph)  # fmt: skip
    assert report["audit"] == ["Foo: not supported (x2)"]
    said = []
    with pytest.raises(ValueError, match="strict would reject its ONNX graph: Foo"):
        export_checkpoint(ckpt, "strict", tmp_path / "m.strict", (128, 160), log=said.append,
                          onnx_path=graph)  # the graph exported once, reused  # fmt: skip
    assert any("reusing" in line for line in said)
    assert built == [] and not (tmp_path / "m.strict").exists()
