import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_two_cpu_processes_stay_in_sync(synth_set, tmp_path):
    """torchrun, gloo, 2 processes: every parameter equal on both ranks after the steps."""
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(ROOT / "tests/train/ddp_worker.py"),
        str(synth_set),
        str(out),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r0, r1 = (json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["world"] == r1["world"] == 2 and r0["iteration"] == r1["iteration"] == 3
    assert r0["sums"].keys() == r1["sums"].keys()
    for key, value in r0["sums"].items():
        assert abs(value - r1["sums"][key]) <= 1e-5 * max(1.0, abs(value)), key
    # rank 0 alone writes the run folder
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["iter"] for x in lines] == [1, 2, 3]
    assert (out / "last.pt").exists()
