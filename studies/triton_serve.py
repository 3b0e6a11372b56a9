"""Serve a podkit Triton repository with a real Triton server and compare what it answers with
`podkit predict` on the same images.

    python3 -m venv ~/tritonvenv && ~/tritonvenv/bin/pip install nvidia-pytriton onnxruntime \
        'tritonclient[http]' pillow
    .venv/bin/python -m studies.triton_serve CKPT --images data/scale/val --count 16 \
        --triton-python ~/tritonvenv/bin/python --out runs/triton_serve

The server is the `tritonserver` binary shipped inside `nvidia-pytriton` (it has Triton's
Python backend only; pytriton pins numpy < 2, hence its own venv). Its missing ONNX Runtime
backend is stood in for by studies/triton_onnxruntime_standin.py, a Python-based backend that
runs `model.onnx` with onnxruntime: the repository podkit writes is served unchanged, and the
server parses its config.pbtxt, checks each request against it and batches requests.

1. The images are rescaled so that their short side is the checkpoint's test size: podkit's
   own resize is then the identity and the client sends the very pixels podkit feeds.
2. `podkit export CKPT --target triton --dynamic --dynamic-batch` writes the repository.
3. `podkit predict REPO` detects on the images, one per call (podkit's answer).
4. In the Triton venv (`--serve`, no podkit, no torch): start the server, send each image as a
   client does (divide by 255, zero-pad to multiples of 32, FP32 N x 3 x H x W), all requests
   at once so the server may batch them, clip the boxes to the image, write them.
5. Compare per image: the same number of detections, labels, boxes and scores within the
   export parity tolerances.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SIZE_MULTIPLE = 32  # the client's own padding rule (this half runs without podkit)
STANDIN = Path(__file__).with_name("triton_onnxruntime_standin.py")


# ----- the client and the server (Triton venv: numpy, PIL, tritonclient, pytriton) -----


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(repo: Path, work: Path, log_path: Path) -> tuple[subprocess.Popen, int]:
    """pytriton's tritonserver with the Python backend, the ONNX Runtime stand-in beside it."""
    import pytriton

    dist = Path(pytriton.__file__).parent / "tritonserver"
    libs = Path(pytriton.__file__).parent.parent / "nvidia_pytriton.libs"
    server = work / "tritonserver"
    shutil.copytree(dist, server, ignore=shutil.ignore_patterns("python_backend_stubs"))
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    stub = dist / "python_backend_stubs" / version / "triton_python_backend_stub"
    shutil.copy(stub, server / "backends" / "python" / "triton_python_backend_stub")
    (server / "backends" / "onnxruntime").mkdir()
    shutil.copy(STANDIN, server / "backends" / "onnxruntime" / "model.py")
    http, grpc, metrics = free_port(), free_port(), free_port()
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = f"{libs}:{env.get('LD_LIBRARY_PATH', '')}"
    # the backend stub embeds Python and finds its environment (onnxruntime) through PATH
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    command = [
        str(server / "bin" / "tritonserver"),
        f"--model-repository={repo}",
        f"--backend-directory={server / 'backends'}",
        f"--http-port={http}", f"--grpc-port={grpc}", f"--metrics-port={metrics}",
        "--strict-readiness=true", "--exit-on-error=true",
    ]  # fmt: skip
    with open(log_path, "w") as log:  # the server keeps its own copy of the descriptor
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    return process, http


def client_input(path: Path) -> tuple[np.ndarray, int, int]:
    """What a client sends for one image already at the model's test size: the image divided
    by 255, zero-padded to multiples of 32; and the image's height and width."""
    from PIL import Image

    with Image.open(path) as image:
        pixels = np.asarray(image.convert("RGB"), np.float32) / 255.0
    h, w = pixels.shape[:2]
    height = max(2, -(-h // SIZE_MULTIPLE)) * SIZE_MULTIPLE
    width = max(2, -(-w // SIZE_MULTIPLE)) * SIZE_MULTIPLE
    padded = np.zeros((1, 3, height, width), np.float32)
    padded[0, :, :h, :w] = pixels.transpose(2, 0, 1)
    return padded, h, w


def serve(repo: Path, images: Path, out: Path, timeout_s: float = 120.0) -> None:
    """Start the server on `repo`, send every image of `images`, write the detections."""
    import tritonclient.http as httpclient

    work = Path(tempfile.mkdtemp(prefix="triton_serve_"))
    process, port = start_server(repo, work, out.with_suffix(".server.log"))
    client = httpclient.InferenceServerClient(f"127.0.0.1:{port}", concurrency=8)
    try:
        deadline = time.time() + timeout_s
        while True:
            if process.poll() is not None:
                raise SystemExit(f"tritonserver exited ({process.returncode}): see the log")
            try:
                if client.is_server_ready():
                    break
            except Exception:  # noqa: BLE001 (not listening yet)
                pass
            if time.time() > deadline:
                raise SystemExit(f"tritonserver not ready in {timeout_s:.0f} s")
            time.sleep(0.5)
        (name,) = [m["name"] for m in client.get_model_repository_index()]
        config = client.get_model_config(name)
        outputs = [o["name"] for o in config["output"]]
        files = sorted(p for p in images.iterdir() if p.suffix.lower() in (".png", ".jpg"))
        pending = []
        for path in files:  # every request in flight at once: the server may batch them
            array, h, w = client_input(path)
            tensor = httpclient.InferInput(config["input"][0]["name"], list(array.shape), "FP32")
            tensor.set_data_from_numpy(array)
            wanted = [httpclient.InferRequestedOutput(o) for o in outputs]
            pending.append((path, h, w, client.async_infer(name, [tensor], outputs=wanted)))
        served = {}
        for path, h, w, request in pending:
            result = request.get_result()
            values = {o: result.as_numpy(o) for o in outputs}
            n = int(np.asarray(values["num_detections"]).reshape(-1)[0])
            # no scaling to undo (sent at the test size); boxes may reach into the padding
            boxes = values["boxes"][0, :n].clip(0, [w, h, w, h])
            served[path.name] = {
                "boxes": boxes.tolist(),
                "scores": values["scores"][0, :n].tolist(),
                "labels": values["labels"][0, :n].tolist(),
            }
        stats = client.get_inference_statistics(name)["model_stats"][0]
        report = {
            "model": name,
            "platform": config.get("platform"),
            "max_batch_size": config.get("max_batch_size"),
            "requests": len(files),
            "inference_count": int(stats["inference_count"]),
            "execution_count": int(stats["execution_count"]),
            "detections": served,
        }
        out.write_text(json.dumps(report))
    finally:
        client.close()  # the server waits for open connections before it stops
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
        shutil.rmtree(work, ignore_errors=True)


# ----- podkit's side (podkit's venv) -----


def prepare_images(source: Path, count: int, short_side: int, out: Path) -> list[Path]:
    """The first `count` images of `source`, rescaled to `short_side` (PNG, lossless)."""
    from PIL import Image

    out.mkdir(parents=True, exist_ok=True)
    files = sorted(p for p in source.iterdir() if p.suffix.lower() in (".png", ".jpg"))[:count]
    written = []
    for path in files:
        with Image.open(path) as image:
            image = image.convert("RGB")
            scale = short_side / min(image.size)
            size = (round(image.size[0] * scale), round(image.size[1] * scale))
            if min(size) != short_side:  # rounding: pin the short side exactly
                size = tuple(short_side if v == min(size) else v for v in size)
            target = out / f"{path.stem}.png"
            image.resize(size, Image.BILINEAR).save(target)
            written.append(target)
    return written


def as_outputs(d: dict, labels: list) -> dict:
    """Detections of one image as the (1, ...) outputs `compare_outputs` reads."""
    return {
        "boxes": np.asarray(d["boxes"], np.float32).reshape(1, -1, 4),
        "scores": np.asarray(d["scores"], np.float32)[None],
        "labels": np.asarray(labels, np.int64)[None],
        "num_detections": np.asarray([len(d["scores"])], np.int64),
    }


def compare(podkit_dir: Path, served: dict) -> dict:
    """Per image: podkit's detections (predict's detections.json) against the server's."""
    from podkit.export.parity import compare_outputs

    images = json.loads((podkit_dir / "images.json").read_text())
    names = {im["id"]: Path(im["file_name"]).name for im in images["images"]}
    category_of = {i: c["id"] for i, c in enumerate(images["categories"])}
    ours: dict[str, dict] = {
        name: {"boxes": [], "scores": [], "labels": []} for name in names.values()
    }
    for d in json.loads((podkit_dir / "detections.json").read_text()):
        x, y, w, h = d["bbox"]
        entry = ours[names[d["image_id"]]]
        entry["boxes"].append([x, y, x + w, y + h])
        entry["scores"].append(d["score"])
        entry["labels"].append(d["category_id"])
    rows, all_ok = [], True
    for name, want in ours.items():
        got = served["detections"][name]
        got_labels = [category_of[label] for label in got["labels"]]

        reference, outputs = as_outputs(want, want["labels"]), as_outputs(got, got_labels)
        result = compare_outputs(list(reference), list(reference.values()), list(outputs.values()))
        all_ok &= result["ok"]
        rows.append({"image": name, "detections": len(want["scores"]), **result})
    return {"ok": all_ok, "images": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", nargs="?")
    parser.add_argument("--images", type=Path, default=Path("data/scale/val"))
    parser.add_argument("--count", type=int, default=16)
    parser.add_argument("--triton-python", type=Path, help="the Triton venv's python")
    parser.add_argument("--out", type=Path, default=Path("runs/triton_serve"))
    parser.add_argument("--serve", type=Path, metavar="REPO", help="(the Triton venv's half)")
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.images, args.out)
        return
    if args.checkpoint is None or args.triton_python is None:
        parser.error("CHECKPOINT and --triton-python are required")

    from podkit.evaluation.predict import predict_images
    from podkit.export import ExportOptions, export_checkpoint
    from podkit.models.checkpoint import load_checkpoint

    if args.out.exists():
        parser.error(f"{args.out} exists: pass another --out")
    cfg = load_checkpoint(args.checkpoint)["config"]
    images = prepare_images(
        args.images, args.count, cfg["data"]["test_min_size"], args.out / "images"
    )
    repo = args.out / "repo"
    opts = ExportOptions(dynamic=True, batch=None, input_size=(cfg["data"]["test_min_size"],) * 2)
    export_checkpoint(args.checkpoint, "triton", repo, opts)
    # one image per call, as each client request: images batched together are padded to a
    # common size, which moves detections near the right and bottom borders a little
    predict_images(repo, [str(p) for p in images], args.out / "podkit", draw=False,
                   overrides=["eval.batch_size=1"])  # fmt: skip
    served_path = args.out / "served.json"
    subprocess.run(
        [str(args.triton_python), "-m", "studies.triton_serve", "--serve", str(repo.resolve()),
         "--images", str(args.out / "images"), "--out", str(served_path)],
        check=True, env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    )  # fmt: skip
    served = json.loads(served_path.read_text())
    result = compare(args.out / "podkit", served)
    report = {k: v for k, v in served.items() if k != "detections"} | result
    (args.out / "report.json").write_text(json.dumps(report, indent=1))
    detections = sum(r["detections"] for r in result["images"])
    print(f"served by Triton ({served['platform']}, max_batch_size {served['max_batch_size']}): "
          f"{served['requests']} requests in {served['execution_count']} executions; "
          f"{detections} detections on {len(result['images'])} images; "
          f"{'identical to' if result['ok'] else 'DIFFERENT from'} podkit predict")  # fmt: skip
    if not result["ok"]:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
