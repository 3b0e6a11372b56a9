"""Detectors in plain PyTorch: ResNet (+FPN) backbones, Faster R-CNN (FPN, C4), RetinaNet."""

from podkit.config import ARCHS, ModelConfig, tiny_model_config
from podkit.models.build import build_detector
from podkit.models.output import DetectorOutput
from podkit.ops.image_batch import ImageBatch

__all__ = [
    "ARCHS",
    "DetectorOutput",
    "ImageBatch",
    "ModelConfig",
    "build_detector",
    "tiny_model_config",
]
