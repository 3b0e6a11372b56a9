"""Reduced-precision ONNX: INT8 (static, QDQ, calibrated on training images) and FP16.

INT8. onnxruntime's static quantisation writes QuantizeLinear/DequantizeLinear pairs around
the convolutions and fully connected layers (`QUANTIZED_OPS`): weights per output channel,
activations per tensor from the ranges the calibration images produce. The layers whose
outputs leave the network (the heads' class and box predictors, `head_outputs`) stay float,
as does everything after them, the anchor decoding, TopK, RoiAlign, NMS and the score
arithmetic: post-processing does little arithmetic, and 8-bit box deltas or logits would move
detections by whole pixels and reorder their scores.
QDQ is the form onnxruntime fuses into integer kernels on the CPU and the form TensorRT 10/11
builds INT8 engines from; for TensorRT the activations are symmetric int8 (zero point 0),
which its importer requires; for onnxruntime unsigned activations with signed weights (the
U8S8 kernels of x86 VNNI).

Calibration images come from the training set, drawn at random (seeded), resized as the
artefact's own inputs are (`common.artefact_input`), so the ranges are those it will see.

FP16. Every float initialiser and op in half precision except the ops kept in float
(`FP16_KEEP_FLOAT`: NMS, RoiAlign, TopK, Resize, GridSample; Casts at their borders), with
float32 inputs and outputs, so a runner feeds the same arrays. It is for GPU targets:
onnxruntime's CPU provider has few half-precision kernels (it runs, slowly).
"""

from __future__ import annotations

import random
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

QUANTIZED_OPS = ["Conv", "Gemm", "MatMul"]
# what a layer's output feeds inside the network; anything else is post-processing
NETWORK_OPS = {
    *QUANTIZED_OPS,
    "Relu",
    "Add",
    "MaxPool",
    "Resize",
    "RoiAlign",
    "Flatten",
    "BatchNormalization",
}
FP16_KEEP_FLOAT = ["NonMaxSuppression", "RoiAlign", "TopK", "Resize", "GridSample"]


def calibration_images(
    config: dict,
    input_size: tuple[int, int] | None,
    count: int,
    seed: int = 0,
    batch: int = 1,
    records: list | None = None,
) -> Iterator[np.ndarray]:
    """`count` of `records` (default: calibration_records of the checkpoint's `config`) drawn
    at random, as an artefact of `input_size` (None: dynamic) taking `batch` images is fed:
    resized, fitted and padded as at inference, in (batch, 3, H, W) groups (the last filled
    with blanks)."""
    from podkit.config import config_from_dict
    from podkit.data.loader import DetectionDataset, eval_batches, make_loader
    from podkit.export.feed import artefact_input, stack_inputs

    if count < 1:
        raise ValueError(f"--calib {count}: at least one calibration image is needed")
    cfg = config_from_dict(config)
    records = records if records is not None else calibration_records(cfg, None)
    picked = random.Random(seed).sample(records, min(count, len(records)))
    batches = eval_batches(len(picked), 1, cfg.data.test_min_size)
    loader = make_loader(
        DetectionDataset(picked, cfg.data.max_size), batches, 0, cfg.data.size_divisible
    )
    arrays = [
        artefact_input(item.images.tensor[0, :, :h, :w], input_size)[0]
        for item in loader
        for h, w in item.images.sizes
    ]
    for first in range(0, len(arrays), batch):
        yield stack_inputs(arrays[first : first + batch], batch)


def calibration_records(cfg, calib_data: list[str] | None) -> list:
    """The calibration images: `calib_data` (image files, folders or globs; or a COCO json
    followed by its image folder), else the checkpoint's recorded training set, which a
    checkpoint from another machine or another framework may not have (one line says so)."""
    from podkit.data import load_dataset
    from podkit.data.coco import load_coco
    from podkit.data.images import find_images, image_records

    limit = cfg.data.max_image_pixels
    if calib_data and calib_data[0].endswith(".json"):
        if len(calib_data) != 2:
            raise ValueError(
                f"--calib-data {calib_data[0]}: give the COCO json and its image folder"
            )
        return load_coco(calib_data[0], calib_data[1], limit)[0]
    if calib_data:
        return image_records(find_images(calib_data), limit, "--calib-data")
    train = cfg.data.train
    if not train.ann or not Path(train.ann).exists():
        where = f"{train.ann} is not on this machine" if train.ann else "it records no training set"
        raise ValueError(
            f"--int8 calibrates on the checkpoint's training images, but {where}: give "
            "--calib-data (an image folder, or a COCO json and its image folder)"
        )
    return load_dataset(train, limit).records


def head_outputs(model) -> list[str]:
    """Names of the Conv/Gemm/MatMul nodes whose outputs feed only the post-processing.

    A Concat passes its inputs on: the FD network's split convs meet in a Concat that feeds
    the next layer, so they are network layers (read through, not as post-processing: they
    were once kept float, and INT8 FD ran 1.13x slower than INT8 baseline)."""
    consumers: dict[str, list] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    graph_outputs = {o.name for o in model.graph.output}

    def feeds_network(tensor: str) -> bool:
        return any(
            node.op_type in NETWORK_OPS
            or (node.op_type == "Concat" and feeds_network(node.output[0]))
            for node in consumers.get(tensor, [])
        )

    return [
        node.name
        for node in model.graph.node
        if node.op_type in QUANTIZED_OPS
        and node.output[0] not in graph_outputs
        and not feeds_network(node.output[0])
    ]


def quantize_int8(
    source: str | Path,
    out: str | Path,
    images: list[np.ndarray],
    for_tensorrt: bool = False,
) -> dict:
    """Write the INT8 QDQ form of the FP32 ONNX file `source` to `out`, calibrated on
    `images` (MinMax ranges). Returns what was quantised."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    name = onnx.load(str(source), load_external_data=False).graph.input[0].name

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter(images)

        def get_next(self):
            image = next(self.items, None)
            return None if image is None else {name: image}

    with tempfile.TemporaryDirectory(prefix="podkit-int8-") as scratch:
        prepared = Path(scratch) / "prepared.onnx"
        # shape inference and constant folding first, as onnxruntime recommends
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        kept_float = head_outputs(onnx.load(str(prepared)))
        quantize_static(
            str(prepared),
            str(out),
            Reader(),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=QUANTIZED_OPS,
            nodes_to_exclude=kept_float,
            per_channel=True,
            reduce_range=not for_tensorrt,
            activation_type=QuantType.QInt8 if for_tensorrt else QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            extra_options={"ActivationSymmetric": for_tensorrt, "WeightSymmetric": True},
        )
    model = onnx.load(str(out), load_external_data=False)
    quantized = {n.input[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    return {
        "precision": "int8",
        "calibration_images": len(images),
        "quantized_ops": QUANTIZED_OPS,
        "float_head_outputs": len(kept_float),
        "activations": "int8 symmetric" if for_tensorrt else "uint8",
        "dequantized_tensors": len(quantized),
    }


def reduced_onnx(
    source: str | Path,
    out: str | Path,
    precision: str,
    calibration: list[np.ndarray] | None = None,
    for_tensorrt: bool = False,
) -> dict:
    """The FP32 ONNX file `source` at `precision` in `out`: INT8 QDQ (calibrated on
    `calibration`), FP16, or a copy. What onnxruntime ships and TensorRT builds from."""
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    if precision == "int8":
        return quantize_int8(source, out, calibration, for_tensorrt)
    if precision == "fp16":
        return convert_fp16(source, out)
    if Path(source).resolve() != Path(out).resolve():
        shutil.copyfile(source, out)
    return {"path": str(out)}


def convert_fp16(source: str | Path, out: str | Path) -> dict:
    """Write the FP16 form of the FP32 ONNX file `source` to `out` (float32 inputs/outputs)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(source))
    half = convert_float_to_float16(
        model, keep_io_types=True, op_block_list=FP16_KEEP_FLOAT, disable_shape_infer=False
    )
    _repair_node_list(half.graph)
    onnx.checker.check_model(half)
    onnx.save(half, str(out))
    return {"precision": "fp16", "kept_float": FP16_KEEP_FLOAT}


def _repair_node_list(graph) -> None:
    """What the FP16 converter leaves invalid: it inserts one Cast per reader of a
    float-kept tensor, all of one name and output (identical nodes: keep the first), and
    appends the input Casts after their readers (order each node after its inputs'
    producers)."""
    available = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    seen, pending, ordered = set(), [], []
    for node in graph.node:
        key = node.SerializeToString()
        if key not in seen:
            seen.add(key)
            pending.append(type(node).FromString(key))  # a copy that outlives the old list
    while pending:
        rest = []
        for node in pending:
            if all(i in available for i in node.input):
                ordered.append(node)
                available.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):
            raise ValueError("the FP16 graph has an input that no node produces")
        pending = rest
    del graph.node[:]
    graph.node.extend(ordered)
