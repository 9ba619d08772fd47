"""raysegment-deeplab: DeepLab v1, v2, v3 and v3+ (Chen et al. 2015-2018) as raysegment model plugins."""

from raysegment_deeplab.plugin import DeepLabV1, DeepLabV2, DeepLabV3, DeepLabV3Plus

__all__ = ["DeepLabV1", "DeepLabV2", "DeepLabV3", "DeepLabV3Plus"]
