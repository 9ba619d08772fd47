"""torchvision's segmentation models (FCN, DeepLabV3, LR-ASPP) as raysegment model plugins."""

from raysegment_torchvision.adapter import AUX_WEIGHT, TorchvisionSegmentation, band_statistics
from raysegment_torchvision.plugin import (
    DeepLabV3MobileNetV3Large,
    DeepLabV3ResNet50,
    DeepLabV3ResNet101,
    FCNResNet50,
    FCNResNet101,
    LRASPPMobileNetV3Large,
)

__all__ = [
    "AUX_WEIGHT",
    "TorchvisionSegmentation",
    "band_statistics",
    "FCNResNet50",
    "FCNResNet101",
    "DeepLabV3ResNet50",
    "DeepLabV3ResNet101",
    "DeepLabV3MobileNetV3Large",
    "LRASPPMobileNetV3Large",
]
