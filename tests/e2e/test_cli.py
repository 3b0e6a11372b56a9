import json
from pathlib import Path

from typer.testing import CliRunner

from podkit.cli import app
from tests.conftest import ROOT, tiny_overrides

runner = CliRunner()


def invoke(*args):
    result = runner.invoke(app, [str(a) for a in args])
    return result.exit_code, result.output


def test_synth_train_eval_info_through_the_cli(tmp_path):
    data = tmp_path / "data"
    code, out = invoke("data", "synth", data, "--train", 8, "--val", 4, "--size", 128, "--seed", 1)
    assert code == 0, out
    assert "% small" in out
    sets = [x for o in tiny_overrides(data, max_iter=3) for x in ("--set", o)]
    run = tmp_path / "run"
    code, out = invoke("train", ROOT / "configs/tiny/faster_rcnn_fpn.yaml", "--out", run, *sets)
    assert code == 0, out
    assert {"config.yaml", "last.pt", "metrics.jsonl", "eval.json"} <= {
        p.name for p in run.iterdir()
    }
    code, out = invoke("eval", run / "last.pt", "--out", tmp_path / "eval.json")
    assert code == 0, out
    again = json.loads((tmp_path / "eval.json").read_text())
    assert again == json.loads(
        (run / "eval.json").read_text()
    )  # same model, same data, same numbers
    assert set(again) == {"AP", "AP50", "AP75", "APs", "APm", "APl", "AP60", "AP70", "AP80", "AP90"}
    code, out = invoke("info", run / "last.pt")
    assert code == 0 and "faster_rcnn_fpn" in out and "3 of 3" in out
    code, out = invoke(
        "eval", run / "last.pt", "--snip", "--pyramid", "synthetic", "--out", tmp_path / "ms.json"
    )
    assert code == 0, out
    assert set(json.loads((tmp_path / "ms.json").read_text())) == set(again)
    code, out = invoke("eval", run / "last.pt", "--multiscale", "--merge", "wbf")
    assert code == 2 and "merge must be one of" in out


def test_user_errors_are_one_line_with_exit_code_2(tmp_path):
    code, out = invoke("train", tmp_path / "missing.yaml", "--out", tmp_path / "run")
    assert code == 2 and "missing.yaml: config file not found" in out and "Traceback" not in out
    code, out = invoke(
        "train",
        ROOT / "configs/tiny/faster_rcnn_fpn.yaml",
        "--out",
        tmp_path / "run",
        "--set",
        "train.lrr=1",
    )
    assert code == 2 and "did you mean 'lr'" in out
    code, out = invoke("eval", tmp_path / "nothing.pt")
    assert code == 2 and "nothing.pt: checkpoint not found" in out
    Path(tmp_path / "bad.pt").write_bytes(b"x")
    code, out = invoke("info", tmp_path / "bad.pt")
    assert code == 2 and "bad.pt: not a readable podkit checkpoint" in out


def test_help_everywhere():
    for args in ([], ["data", "synth"], ["train"], ["eval"], ["info"], ["demo"]):
        code, out = invoke(*args, "--help")
        assert code == 0 and "Usage" in out


def test_demo_in_a_reduced_mode(tmp_path):
    code, out = invoke(
        "demo",
        "--out",
        tmp_path / "demo",
        "--iters",
        3,
        "--train-images",
        8,
        "--val-images",
        2,
        "--size",
        96,
        "--backends",
        "torch,onnxruntime",
        "--bench-iters",
        2,
    )
    assert code == 0, out
    demo = tmp_path / "demo"
    report = (demo / "report.md").read_text()
    for row in ("| baseline |", "| GSL |", "| FD-WT |", "| FD-WT | onnxruntime | 96x96 |"):
        assert row in report
    assert (demo / "scales.png").is_file() and (demo / "latency.png").is_file()
    latency = json.loads((demo / "latency.json").read_text())
    assert {(r["model"], r["backend"]) for r in latency["results"]} == {
        (m, b) for m in ("baseline", "GSL", "FD-WT") for b in ("torch", "onnxruntime")
    }
