"""raysegment-espnet: ESPNet (Mehta et al., ECCV 2018) and its ablation variants as raysegment plugins."""

from raysegment_espnet.esp import ESP, SpatialPyramid, StridedESP
from raysegment_espnet.espnet import ESPNetEncoder, ESPNetWithDecoder
from raysegment_espnet.plugin import ESPNet, ESPNetA, ESPNetB, ESPNetC

__version__ = "0.1.0"

__all__ = ["ESPNet", "ESPNetA", "ESPNetB", "ESPNetC", "ESPNetEncoder", "ESPNetWithDecoder", "ESP", "StridedESP",
           "SpatialPyramid", "__version__"]
