"""raysegment-classic: FCN-32s/16s/8s (Long et al. 2015) and SegNet (Badrinarayanan et al. 2017) plugins."""

from raysegment_classic.fcn import FCN
from raysegment_classic.plugin import FCN8s, FCN16s, FCN32s, SegNet
from raysegment_classic.segnet import SegNet as SegNetModule

__version__ = "0.1.0"

__all__ = ["FCN", "FCN8s", "FCN16s", "FCN32s", "SegNet", "SegNetModule", "__version__"]
