"""raysegment-context: context-aggregation segmentation models (PSPNet, RefineNet, DANet) as raysegment plugins."""

from raysegment_context.danet import ChannelAttention, DANetModule, PositionAttention
from raysegment_context.plugin import DANet, PSPNet, RefineNet
from raysegment_context.pspnet import PSPNetModule, PyramidPooling
from raysegment_context.refinenet import (
    ChainedResidualPooling,
    MultiResolutionFusion,
    RefineNetBlock,
    RefineNetModule,
    ResidualConvUnit,
)

__version__ = "0.1.0"

__all__ = [
    "PSPNet", "RefineNet", "DANet",
    "PSPNetModule", "PyramidPooling",
    "RefineNetModule", "RefineNetBlock", "ResidualConvUnit", "MultiResolutionFusion", "ChainedResidualPooling",
    "DANetModule", "PositionAttention", "ChannelAttention",
    "__version__",
]
