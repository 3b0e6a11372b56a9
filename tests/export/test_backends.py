"""The Backend interface: a backend added to the one table is exported to, loaded, scored
and timed by every caller without any other edit."""

import json
from dataclasses import replace
from pathlib import Path

import pytest

from podkit.evaluation.artefacts import is_artefact
from podkit.export import BACKENDS, ExportOptions, backend_of, export_checkpoint, read_record
from tests.conftest import invoke
from tests.export import copy_backend


def test_each_artefact_suffix_names_one_backend():
    suffixes = [b.suffix for b in BACKENDS.values()]
    assert len(set(suffixes)) == len(suffixes)  # two backends writing .so would collide
    for backend in BACKENDS.values():
        if backend.suffix:  # a folder artefact (Triton) is known by its files
            assert backend_of(Path("model" + backend.suffix)) is backend
    with pytest.raises(ValueError, match="unknown artefact"):
        backend_of("model.pt")


def test_a_backend_from_one_file_reaches_export_eval_predict_and_bench(
    checkpoints, synth_set, tmp_path, monkeypatch
):
    """tests/export/copy_backend.py and its row in the table: nothing else."""
    monkeypatch.setitem(BACKENDS, "copy", copy_backend.BACKEND)
    copy_backend.OPENED.clear()
    ckpt, out = checkpoints("retinanet", "baseline"), tmp_path / "m.copy"
    code, text = invoke("export", ckpt, "--target", "copy", "--out", out, "--input-size", "128x160")
    assert code == 0, text
    assert "parity vs PyTorch at 128x160" in text and (tmp_path / "m.copy.json").is_file()
    assert [out] == copy_backend.OPENED  # the parity check ran the artefact through its backend
    assert is_artefact(out) and read_record(out)["input_size"] == [128, 160]
    code, text = invoke("export", ckpt, "--target", "copy", "--int8", "--out", tmp_path / "q.copy")
    assert code == 2 and "--target copy exports FP32 only; INT8 is for onnx, openvino" in text
    code, text = invoke("eval", out, "--out", tmp_path / "eval.json")
    assert code == 0, text
    assert "AP" in json.loads((tmp_path / "eval.json").read_text())
    images = sorted((synth_set / "val").glob("*.png"))[:2]
    code, text = invoke("predict", out, *images, "--out", tmp_path / "pred")
    assert code == 0, text
    assert len(json.loads((tmp_path / "pred" / "images.json").read_text())["images"]) == 2
    code, text = invoke("bench", "latency", ckpt, "--backend", "torch,copyrt", "--iters", 2,
                        "--warmup", 1, "--input-size", "128x160", "--cache-dir",
                        tmp_path / "cache", "--out", tmp_path / "latency.json")  # fmt: skip
    assert code == 0, text
    rows = json.loads((tmp_path / "latency.json").read_text())["results"]
    (row,) = [r for r in rows if r["backend"] == "copyrt"]
    cached = Path(row["artefact"])
    assert cached.parent.parent == tmp_path / "cache" and cached.suffix == ".copy"
    # export's check, eval, predict, then the latency cache's export check and its timing
    assert [out, out, out, cached, cached] == copy_backend.OPENED


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
    report = export_checkpoint(ckpt, "strict", None, ExportOptions((128, 160), check_only=True), log=str,
                               onnx_path=graph)  # fmt: skip
    assert report["audit"] == ["Foo: not supported (x2)"]
    said = []
    with pytest.raises(ValueError, match="strict would reject its ONNX graph: Foo"):
        export_checkpoint(ckpt, "strict", tmp_path / "m.strict", ExportOptions((128, 160)),
                          log=said.append,
                          onnx_path=graph)  # the graph exported once, reused  # fmt: skip
    assert any("reusing" in line for line in said)
    assert built == [] and not (tmp_path / "m.strict").exists()
