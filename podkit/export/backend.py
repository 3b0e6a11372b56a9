"""The interface every export target implements, so that export, load, the latency benchmark
and the CLI read one table (`podkit.export.BACKENDS`) instead of each keeping its own.

A backend turns the ONNX file of `wrap.ExportWrapper` into its artefact (`build`) and runs
that artefact behind the common `Runner` (`load`). Adding one: a module with its
`build`/`load`/`require` functions and its row in the table BACKENDS (export/__init__.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from podkit.export.common import Runner


@dataclass(frozen=True)
class BuildOptions:
    """What a build may need beyond the ONNX file (each backend reads what it uses)."""

    input_size: tuple[int, int]
    dynamic: bool = False
    precision: str = "fp32"
    batch: int | None = 1  # None: any number
    device: str = "cpu"
    tune_trials: int = 0
    tune_db: Path | None = None


@dataclass(frozen=True)
class Backend:
    """One deployment target."""

    name: str  # `podkit export --target NAME`
    runtime: str  # its column in `podkit bench latency --backend`
    suffix: str  # the artefact's file suffix (unique in the table)
    precisions: tuple[str, ...]  # fp32, and fp16 / int8 (built from that precision's ONNX file)
    dynamic: bool  # builds artefacts that take any input size
    any_batch: bool  # builds artefacts that take any number of images per call
    device: str | None  # the only device its artefacts run on, if there is one (TensorRT)
    tuned: bool  # its artefacts depend on a tuning budget (kept apart per budget in caches)
    require: Callable[[], None]  # fast; raises BackendUnavailable with the line to install it
    build: Callable[[Path, Path, BuildOptions, Callable[[str], None]], dict]
    load: Callable[[Path, str, int | None], Runner]  # (artefact, device, threads)
    audit: Callable[[Path], list[str]] | None = None  # ops it would reject, before building
