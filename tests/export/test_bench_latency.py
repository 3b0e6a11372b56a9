"""`podkit bench latency` on tiny checkpoints: a well-formed report, honest about backends."""

import json
from pathlib import Path

from podkit.evaluation.artefacts import evaluate_path
from tests.conftest import invoke


def test_bench_latency_report(checkpoints, tmp_path, monkeypatch):
    base = checkpoints("retinanet", "baseline")
    fd = checkpoints("retinanet", "fd")
    code, out = invoke(
        "bench", "latency", base, fd,
        "--backend", "torch,onnxruntime,tensorrt",
        "--input-size", "128x160", "--warmup", 1, "--iters", 3,
        "--labels", "base,fd", "--cache-dir", tmp_path / "cache",
        "--out", tmp_path / "r.json", "--md", tmp_path / "r.md", "--plot", tmp_path / "r.png",
        "--data", "--precision", "fp32,int8", "--calib", 4,
    )  # fmt: skip
    assert code == 0, out
    report = json.loads((tmp_path / "r.json").read_text())
    results = report["results"]
    # INT8 for onnxruntime only (PyTorch runs FP32), compared with the baseline's INT8
    int8 = {r["model"]: r for r in results if r["precision"] == "int8"}
    assert {(r["model"], r["backend"]) for r in int8.values()} == {
        ("base", "onnxruntime"),
        ("fd", "onnxruntime"),
    }
    assert int8["fd"]["ratio_vs_baseline"] == int8["fd"]["median_ms"] / int8["base"]["median_ms"]
    assert int8["base"]["size_mb"] < 0.5 * next(
        r["size_mb"]
        for r in results
        if r["model"] == "base" and r["backend"] == "onnxruntime" and r["precision"] == "fp32"
    )
    assert "| base | onnxruntime | int8 |" in (tmp_path / "r.md").read_text()
    pairs = {(r["model"], r["backend"]): r for r in results if r["precision"] == "fp32"}
    assert set(pairs) == {(m, b) for m in ("base", "fd") for b in ("torch", "onnxruntime")}
    for (model, _), r in pairs.items():
        assert r["input"] == [128, 160]
        assert 0 < r["min_ms"] <= r["median_ms"] <= r["p90_ms"]
        assert r["gflops"] > 0 and r["params_m"] > 0 and r.get("parity") in ("ok", None)
        if model == "base":
            assert r["ratio_vs_baseline"] == 1.0
    fd_ort = pairs["fd", "onnxruntime"]
    base_ort = pairs["base", "onnxruntime"]
    assert abs(fd_ort["ratio_vs_baseline"] - fd_ort["median_ms"] / base_ort["median_ms"]) < 1e-9
    # TensorRT is in no image here: listed with the reason, never silently dropped
    missing = {(u["model"], u["backend"]) for u in report["unavailable"]}
    assert ("base", "tensorrt") in missing or ("base", "tensorrt") in pairs
    assert report["device"] and report["versions"]["torch"]
    assert "| fd | onnxruntime | fp32 | 128x160 |" in (tmp_path / "r.md").read_text()
    assert (tmp_path / "r.png").stat().st_size > 0
    # --data: each pair scored through `podkit eval`'s path, its size, the difference
    checkpoint_ap = evaluate_path(base, ["eval.batch_size=1"])  # fed as the artefact is
    artefact_ap = evaluate_path(base_ort["artefact"])
    assert pairs["base", "torch"]["AP"] == checkpoint_ap["AP"]
    assert base_ort["AP"] == artefact_ap["AP"] and base_ort["AP50"] == artefact_ap["AP50"]
    assert base_ort["ap_delta"] == artefact_ap["AP"] - checkpoint_ap["AP"]
    assert base_ort["size_mb"] == Path(base_ort["artefact"]).stat().st_size / 1e6
    assert "| AP vs ckpt |" in (tmp_path / "r.md").read_text()

    # an artefact losing more than --max-ap-drop is flagged and fails the command
    scored = []

    def scripted(path, overrides=()):
        scored.append((str(path), list(overrides)))
        return {"AP": 40.0 if str(path).endswith(".pt") else 39.2, "AP50": 60.0}

    monkeypatch.setattr("podkit.evaluation.artefacts.evaluate_path", scripted)
    for limit, code_wanted in (("1.0", 0), ("0.5", 1)):
        code, out = invoke(
            "bench", "latency", base, "--backend", "torch,onnxruntime", "--input-size", "128x160",
            "--iters", 1, "--cache-dir", tmp_path / "cache", "--out", tmp_path / "r3.json",
            "--data", "--max-ap-drop", limit, "--overwrite",
        )  # fmt: skip
        assert code == code_wanted, out
    assert "onnxruntime: AP -0.8 against its checkpoint" in out
    flagged = json.loads((tmp_path / "r3.json").read_text())["results"]
    assert [r["ap_flag"] for r in flagged] == [False, True]
    assert {tuple(o) for p, o in scored if p.endswith(".pt")} == {("eval.batch_size=1",)}
    # a second run times the cached exports without exporting again
    code, out = invoke(
        "bench", "latency", base, "--backend", "onnxruntime", "--input-size", "128x160",
        "--iters", 1, "--cache-dir", tmp_path / "cache", "--out", tmp_path / "r2.json",
    )  # fmt: skip
    assert code == 0 and "cached" in out and "exporting" not in out


def test_bench_latency_rejects_unknown_backend(checkpoints, tmp_path):
    code, out = invoke(
        "bench", "latency", checkpoints(), "--backend", "mxnet", "--out", tmp_path / "r.json"
    )
    assert code == 2 and "unknown backend 'mxnet'" in out


def test_export_cache_key_follows_the_code_that_writes_the_graph(tmp_path):
    """A podkit that exports another graph must not time an old cached export."""
    from podkit.bench.latency import export_code_hash

    for part in ("models", "ops", "export", "train"):
        (tmp_path / part).mkdir()
        (tmp_path / part / "a.py").write_text("x = 1\n")
    first = export_code_hash(tmp_path)
    (tmp_path / "train" / "a.py").write_text("x = 2\n")  # training code: same graph
    assert export_code_hash(tmp_path) == first
    (tmp_path / "ops" / "a.py").write_text("x = 2\n")
    assert export_code_hash(tmp_path) != first
