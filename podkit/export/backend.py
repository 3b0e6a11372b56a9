"""What an export target is: one `Backend` per file (ort.py, tvm.py, tensorrt.py, openvino.py,
triton.py), one row each in the table `podkit.export.BACKENDS`. Export, load, eval, predict,
the latency benchmark and the CLI read that table and nothing else, so a new target is its
file and its row.

A backend owns everything about its artefacts: the install line and the version of its
runtime, the files an artefact is made of, where the podkit record lives, the precisions it
builds (and how: its `build` gets the FP32 ONNX file, the IR every backend starts from, and
the calibration images for INT8), how to load an artefact behind the common `Runner`, and an
optional audit of the ONNX graph before a build.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from types import ModuleType

import numpy as np

from podkit.errors import BackendUnavailable

SIDECAR = ".json"  # the record of an artefact that cannot hold one: ARTEFACT.json beside it
RECORD_KEY = "podkit"


def _no_sync() -> None:
    pass


def runtime_threads(threads: int | None = None) -> int:
    """`threads`, else as many as PyTorch computes with in this process (its default: the
    physical cores; OMP_NUM_THREADS or torch.set_num_threads change it), so one setting
    governs PyTorch and every runtime, and processes sharing a machine can split it."""
    import torch

    return threads or torch.get_num_threads()


@dataclass
class Runner:
    """A loaded artefact or a PyTorch model behind one interface: (N, 3, H, W) float32 images
    in [0, 1] -> the wrapper's outputs, in order. `sync` waits for the device (timing on a
    GPU); `providers` are onnxruntime's, in order of preference; `info` what the backend
    recorded when it built the artefact."""

    run: Callable[[np.ndarray], list[np.ndarray]]
    sync: Callable[[], None] = _no_sync
    providers: list[str] = field(default_factory=list)
    info: dict = field(default_factory=dict)

    def __call__(self, images: np.ndarray) -> list[np.ndarray]:
        return self.run(images)


@dataclass(frozen=True)
class ExportOptions:
    """How to export: the one object `export_checkpoint` and every backend's build read."""

    input_size: tuple[int, int] = (512, 512)
    dynamic: bool = False  # free height and width (multiples of 32)
    batch: int | None = 1  # images per call; None: any number
    nms: bool = True  # post-processing in the graph (False: raw head outputs)
    precision: str = "fp32"  # one of the backend's `precisions`
    opset: int = 18
    check: bool = True  # run the artefact on sample images against PyTorch
    check_only: bool = False  # stop after the backend's audit (no artefact written)
    device: str = "cpu"  # where the artefact is built for and checked
    calib: int = 64  # INT8: calibration images
    calib_data: tuple[str, ...] = ()  # INT8: images instead of the training set
    tune_trials: int = 0  # TVM: tuning trials per task
    tune_db: Path | None = None  # TVM: tuning database folder
    name: str = "detector"  # Triton: the model's name in the repository
    inner: str = "onnx"  # Triton: the model file it serves (onnx, or a TensorRT plan)


Build = Callable[
    [Path, Path, ExportOptions, "list[np.ndarray] | None", Callable[[str], None]], dict
]


@dataclass(frozen=True)
class Backend:
    """One deployment target (see the module docstring)."""

    name: str  # `podkit export --target NAME`
    runtime: str  # its name in `podkit bench latency --backend`
    suffix: str  # the artefact's suffix ("" for a folder); unique in the table
    precisions: tuple[str, ...]  # what `build` makes, fp32 first
    dynamic: bool  # builds artefacts that take any input size
    any_batch: bool  # builds artefacts that take any number of images per call
    device: str | None  # the only device its artefacts run on, if there is one (TensorRT)
    tuned: bool  # its artefacts depend on a tuning budget (kept apart per budget in caches)
    install: str  # the one line that says how to get the runtime
    module: str  # the runtime's Python module: availability and version
    build: Build  # (FP32 ONNX, out, options, INT8 calibration images or None, log) -> report
    load: Callable[[Path, str, int | None], Runner]  # (artefact, device, threads)
    files: Callable[[Path], list[Path]] | None = None  # an artefact's files (default: it + sidecar)
    write_record: Callable[[Path, dict], None] | None = None  # default: the sidecar
    read_record: Callable[[Path], dict | None] | None = None  # default: the sidecar
    audit: Callable[[Path], list[str]] | None = None  # ops it would reject, before building
    require: Callable[[ExportOptions], None] | None = None  # more than the module (a GPU, ...)

    def runtime_module(self) -> ModuleType:
        """The runtime, imported; BackendUnavailable with the install line when it is not."""
        return import_runtime(self.module, self.install)

    def check_available(self, opts: ExportOptions = ExportOptions()) -> None:
        """Fast; raises BackendUnavailable saying what to install (or what is missing)."""
        self.runtime_module()
        if self.require is not None:
            self.require(opts)

    def version(self) -> str | None:
        """The runtime's version (None: not installed)."""
        try:
            module = self.runtime_module()
        except BackendUnavailable:
            return None
        try:
            return str(getattr(module, "__version__", None) or metadata.version(self.module))
        except metadata.PackageNotFoundError:
            return "?"

    def artefact_files(self, path: Path) -> list[Path]:
        return self.files(path) if self.files else [path, sidecar(path)]

    def owns(self, path: Path) -> bool:
        """Whether `path` is an artefact of this backend (by its suffix; a folder artefact
        by its own files)."""
        if self.suffix:
            return path.suffix == self.suffix
        return path.is_dir() and self.read_record is not None and self.read_record(path) is not None

    def save_record(self, path: Path, record: dict) -> None:
        (self.write_record or write_sidecar)(path, record)

    def load_record(self, path: Path) -> dict | None:
        return (self.read_record or read_sidecar)(path)


def import_runtime(module: str, install: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise BackendUnavailable(install) from exc


def sidecar(path: Path) -> Path:
    return Path(str(path) + SIDECAR)


def write_sidecar(path: Path, record: dict) -> None:
    """The record in ARTEFACT.json, beside what the backend itself wrote there."""
    side = sidecar(path)
    data = json.loads(side.read_text()) if side.is_file() else {}
    data[RECORD_KEY] = record
    side.write_text(json.dumps(data, indent=2))


def read_sidecar(path: Path) -> dict | None:
    side = sidecar(path)
    return json.loads(side.read_text()).get(RECORD_KEY) if side.is_file() else None
