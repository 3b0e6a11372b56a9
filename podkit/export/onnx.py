"""The ONNX export of a detector (through the dynamo exporter): the IR every backend builds
its artefact from.

opset 18 by default: >= 17 for the exporters, <= 19 so GridSample keeps mode "bilinear"
(TensorRT's ONNX importer silently runs opset-20 "linear" as nearest, NVIDIA/TensorRT#4646).
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import torch
from torch import nn

from podkit.export.wrap import ONNX_TRANSLATIONS, SIZE_MULTIPLE, ExportWrapper, check_input_size

MAX_DYNAMIC_SIDE = 2048


def export(
    model: nn.Module,
    path: str | Path,
    input_size: tuple[int, int] = (512, 512),
    dynamic: bool = False,
    nms: bool = True,
    opset: int = 18,
    max_detections: int = 100,
    batch: int | None = 1,
) -> ExportWrapper:
    """Write `model` (wrapped: `batch` images in, flat tensors out; None: any number) to
    `path`; checked by onnx.checker. `dynamic` makes height and width free (multiples of 32,
    64 to 2048)."""
    import onnx

    if not 17 <= opset <= 19:
        raise ValueError(f"opset {opset}: podkit exports with opset 17-19 (see docs/backends.md)")
    check_input_size(*input_size)
    if batch is not None and batch < 1:
        raise ValueError(f"--batch {batch}: at least 1")
    if batch != 1 and not nms:
        option = "--dynamic-batch" if batch is None else f"--batch {batch}"
        raise ValueError(f"{option} with --no-nms: raw outputs are exported for batch 1 only")
    wrapper = ExportWrapper(model.cpu().eval(), nms, max_detections, any_batch=batch is None)
    # an any-batch graph is traced at 2 images: a size-1 dimension would be specialised
    example = torch.rand(batch or 2, 3, *input_size)
    free: dict[int, object] = {}
    if dynamic:
        # trace where every level (down to P7, stride 128) has > 1 row and column, likewise
        example = torch.rand(batch or 2, 3, max(input_size[0], 288), max(input_size[1], 320))
        blocks = MAX_DYNAMIC_SIDE // SIZE_MULTIPLE
        free[2] = SIZE_MULTIPLE * torch.export.Dim("height_blocks", min=2, max=blocks)
        free[3] = SIZE_MULTIPLE * torch.export.Dim("width_blocks", min=2, max=blocks)
    if batch is None:
        free[0] = torch.export.Dim("batch", min=1)
    dynamic_shapes = {"images": free} if free else None
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # the exporter logs that torchvision's ops are not registered (podkit has its own)
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = wrapper
        if batch is None:
            # torch 2.13's non-strict tracing fails inside `scan`, and the ONNX exporter
            # would try it before strict tracing: trace strictly here
            with torch.no_grad():
                program = torch.export.export(
                    wrapper, (example,), dynamic_shapes=dynamic_shapes, strict=True
                )
        torch.onnx.export(
            program,
            (example,),
            str(path),
            dynamo=True,
            opset_version=opset,
            input_names=["image"],
            output_names=wrapper.output_names,
            dynamic_shapes=None if batch is None else dynamic_shapes,
            custom_translation_table=ONNX_TRANSLATIONS,
            external_data=False,
            verbose=False,
        )
    onnx.checker.check_model(str(path))
    return wrapper
