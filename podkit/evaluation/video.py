"""`podkit predict MODEL VIDEO --out DIR`: a checkpoint or an artefact on a video's frames.

Frames are decoded with PyAV (`pip install 'podkit[video]'`), every `every`-th one kept, and
fed in chunks through the path `predict` feeds images on (the config's test size, or tiles
with `eval.tile`), so a frame is detected as the same picture saved as an image would be.
Writes, under OUT: `detections.json` (COCO results, the frame index as image_id),
`images.json` (the frames as COCO images, `file_name` VIDEO#FRAME) and, unless `draw` is
off, `drawn.mp4` (the kept frames with their boxes, at the video's rate / every).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from podkit.data.images import image_records
from podkit.evaluation.artefacts import open_detector
from podkit.evaluation.evaluate import predict_records, to_coco_results
from podkit.evaluation.predict import draw_detections
from podkit.outputs import same_file

VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v"}
CHUNK = 16  # frames decoded, detected and drawn at a time


def is_video(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_SUFFIXES


def open_video(path: Path):
    """The PyAV container and its video stream; one line when the package or the file fails."""
    try:
        import av
    except ImportError:
        raise ValueError(
            f"{path}: video needs PyAV (pip install 'podkit[video]'), or pass a folder of frames"
        ) from None
    if not path.is_file():
        raise FileNotFoundError(f"{path}: video not found")
    try:
        container = av.open(str(path))
        return container, container.streams.video[0]
    except (av.FFmpegError, IndexError, UnicodeDecodeError) as exc:
        raise ValueError(
            f"{path}: cannot decode this video ({type(exc).__name__}: {exc})"
        ) from None


def frames(path: Path, every: int) -> Iterator[tuple[int, Image.Image]]:
    """(index, RGB frame) of every `every`-th decoded frame."""
    import av

    container, stream = open_video(path)
    with container:
        try:
            for index, frame in enumerate(container.decode(stream)):
                if index % every == 0:
                    yield index, frame.to_image().convert("RGB")
        except av.FFmpegError as exc:
            raise ValueError(f"{path}: decoding stopped at a broken frame ({exc})") from None


def predict_video(
    model_path: str | Path,
    video: Path,
    out: Path,
    every: int = 1,
    score_threshold: float = 0.3,
    draw: bool = True,
    overrides: list[str] | tuple[str, ...] = (),
    progress: Callable[[int, int | None], None] | None = None,
    overwrite: bool = False,
) -> dict:
    """Detections on every `every`-th frame of `video` (module docstring); `progress(done,
    total)` after each chunk (total None when the container does not say)."""
    if every < 1:
        raise ValueError(f"--every must be >= 1, got {every}")
    written = [out / "detections.json", out / "images.json"] + ([out / "drawn.mp4"] if draw else [])
    if any(same_file(video, w) for w in written):
        raise ValueError(f"{video}: the video is one of the files predict writes in {out}")
    existing = [w for w in written if w.exists()]
    if existing and not overwrite:
        raise ValueError(f"{existing[0]}: exists; choose another --out, or pass --overwrite")
    container, stream = open_video(video)  # fails here, before the model is built
    total = -(-stream.frames // every) if stream.frames else None
    rate = float(stream.average_rate or 25) / every
    container.close()
    detector, cfg, classes, device = open_detector(model_path, overrides)
    classes = classes or [f"class{i}" for i in range(cfg.model.num_classes)]
    category_ids = cfg.model.category_ids or list(range(1, len(classes) + 1))
    out.mkdir(parents=True, exist_ok=True)
    results, images, done = [], [], 0
    writer = VideoWriter(out / "drawn.mp4.tmp", rate) if draw else None
    with tempfile.TemporaryDirectory(prefix="podkit-frames-") as scratch:
        chunk: list[tuple[int, Image.Image]] = []
        for item in frames(video, every):
            chunk.append(item)
            if len(chunk) == CHUNK:
                done += run_chunk(detector, cfg, device, chunk, Path(scratch), results, images,
                                  writer, classes, category_ids, score_threshold, video)  # fmt: skip
                chunk = []
                if progress is not None:
                    progress(done, total)
        if chunk:
            done += run_chunk(detector, cfg, device, chunk, Path(scratch), results, images,
                              writer, classes, category_ids, score_threshold, video)  # fmt: skip
            if progress is not None:
                progress(done, total)
    if writer is not None:
        writer.close()
        (out / "drawn.mp4.tmp").replace(out / "drawn.mp4")
    (out / "detections.json").write_text(json.dumps(results))
    categories = [{"id": i, "name": n} for i, n in zip(category_ids, classes, strict=True)]
    (out / "images.json").write_text(
        json.dumps({"images": images, "categories": categories, "annotations": []}, indent=1)
    )
    return {"frames": done, "detections": len(results), "out": str(out)}


def run_chunk(detector, cfg, device, chunk, scratch, results, images, writer, classes,
              category_ids, score_threshold, video) -> int:  # fmt: skip
    """Detect one chunk of frames (saved as PNGs: the path images take), draw and record it."""
    files = []
    for index, image in chunk:
        files.append(scratch / f"{index:08d}.png")
        image.save(files[-1])
    records = image_records(files, cfg.data.max_image_pixels, str(video))
    for record, (index, _) in zip(records, chunk, strict=True):
        record.image_id = index
    detections, ids = predict_records(detector, records, cfg, device)
    results += to_coco_results(detections, ids, category_ids)
    for (index, image), det in zip(chunk, detections, strict=True):
        images.append({"id": index, "file_name": f"{video.name}#{index}",
                       "width": image.width, "height": image.height})  # fmt: skip
        if writer is not None:
            keep = det["scores"] >= score_threshold
            writer.write(draw_detections(image, det["boxes"][keep].tolist(),
                                         det["scores"][keep].tolist(),
                                         det["labels"][keep].tolist(), classes))  # fmt: skip
    for f in files:
        f.unlink()
    return len(chunk)


class VideoWriter:
    """H.264 MP4 of RGB frames (sides rounded down to even, as yuv420p needs)."""

    def __init__(self, path: Path, rate: float) -> None:
        from fractions import Fraction

        import av

        self.container = av.open(str(path), "w", format="mp4")
        self.stream = None
        self.rate = Fraction(rate).limit_denominator(1000)
        self.av = av

    def write(self, image: Image.Image) -> None:
        width, height = image.width // 2 * 2, image.height // 2 * 2
        if self.stream is None:
            self.stream = self.container.add_stream("libx264", rate=self.rate)
            self.stream.width, self.stream.height, self.stream.pix_fmt = width, height, "yuv420p"
        pixels = np.asarray(image)[:height, :width]
        frame = self.av.VideoFrame.from_ndarray(np.ascontiguousarray(pixels), format="rgb24")
        for packet in self.stream.encode(frame):
            self.container.mux(packet)

    def close(self) -> None:
        if self.stream is not None:
            for packet in self.stream.encode():
                self.container.mux(packet)
        self.container.close()
