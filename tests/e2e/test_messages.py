"""Bad input names its file (and line or key) in one line with exit code 2, and the cause it
gives is the real one."""

import json

from PIL import Image

from tests.conftest import invoke, one_line_error


def test_a_config_that_is_no_yaml_text_says_what_it_is(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "photo.png")
    code, out = invoke("train", tmp_path / "photo.png", "--out", tmp_path / "run")
    one_line_error(code, out, "photo.png: not a config")
    code, out = invoke("train", tmp_path, "--out", tmp_path / "run")
    one_line_error(code, out, f"{tmp_path}: is a folder")
    (tmp_path / "bad.yaml").write_text("model:\n  arch: [unclosed\ntrain: {}\n")
    code, out = invoke("train", tmp_path / "bad.yaml", "--out", tmp_path / "run")
    one_line_error(code, out, "bad.yaml: malformed YAML", "line")
    assert len(out.strip().splitlines()) == 1


def write_metrics(run, *rows):
    run.mkdir(exist_ok=True)
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")


def test_plot_names_the_line_and_key_of_a_bad_metrics_line(tmp_path):
    good = {"iter": 1, "loss": 1.0, "loss_cls": 0.5, "lr": 0.01}
    run = tmp_path / "run"
    for bad, words in (
        ([1, 2], "line 2 is a JSON list"),
        ({"iter": 2, "loss": 1.0}, "line 2 has no 'lr'"),
        ({**good, "iter": 2, "loss_cls": "high"}, "line 2: 'loss_cls' is 'high'"),
    ):
        write_metrics(run, good, bad)
        code, out = invoke("plot", run)
        one_line_error(code, out, "metrics.jsonl", words)
    write_metrics(run, good, {**good, "iter": 2})
    assert invoke("plot", run)[0] == 0


def test_bench_latency_refuses_what_it_cannot_time_before_building(tiny_run, tmp_path):
    code, out = invoke("bench", "latency", tiny_run / "last.pt", "--backend", "torch",
                       "--iters", 0, "--out", tmp_path / "r.json")  # fmt: skip
    one_line_error(code, out, "--iters must be >= 1")
    code, out = invoke("bench", "latency", tiny_run / "last.pt", "--backend", "torch",
                       "--input-size", "100x100", "--out", tmp_path / "r.json")  # fmt: skip
    one_line_error(code, out, "100x100", "multiple of 32")
    assert list(tmp_path.iterdir()) == []


def test_info_on_an_artefact_and_on_a_broken_one(tmp_path):
    (tmp_path / "x.onnx").write_bytes(b"not a graph")
    code, out = invoke("info", tmp_path / "x.onnx")
    one_line_error(code, out, "x.onnx: not a readable ONNX file")
    assert "untrusted" not in out


def test_eval_refuses_a_set_whose_class_names_differ(tiny_run, synth_set, tmp_path):
    """(The mapping of reordered names is checked on scores in tests/train/test_evaluate.)"""
    val = json.loads((synth_set / "annotations/val.json").read_text())
    renamed = {**val, "categories": [{**c, "name": f"x{c['id']}"} for c in val["categories"]]}
    (tmp_path / "renamed.json").write_text(json.dumps(renamed))
    sets = ["--set", f"data.val.ann={tmp_path / 'renamed.json'}"]
    code, out = invoke("eval", tiny_run / "last.pt", "--out", tmp_path / "rn.json", *sets)
    one_line_error(code, out, "renamed.json: classes", "differ from the ones")
    assert not (tmp_path / "rn.json").exists()
    swapped = {**val, "categories": [{**c, "id": 100 - c["id"]} for c in val["categories"]]}
    swapped["annotations"] = [
        {**a, "category_id": 100 - a["category_id"]} for a in val["annotations"]
    ]
    (tmp_path / "swapped.json").write_text(json.dumps(swapped))
    sets = ["--set", f"data.val.ann={tmp_path / 'swapped.json'}"]
    code, out = invoke("eval", tiny_run / "last.pt", "--out", tmp_path / "sw.json", *sets)
    assert code == 0 and "matched to them by name" in " ".join(out.split()), out
