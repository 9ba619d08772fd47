"""raysegment-unet: U-Net-family models as raysegment plugins.

``unet`` (Ronneberger et al. 2015), ``resunet`` (Zhang et al. 2018), ``denseunet``
(Guan et al. 2019) and ``unet3d`` (Çiçek et al. 2016, a volume model run on 3D windows).
"""

from raysegment_unet.denseunet import DenseBlock, DenseLayer, DenseUNet2d
from raysegment_unet.plugin import DenseUNet, ResUNet, UNet, UNet3D
from raysegment_unet.resunet import ResidualUnit, ResUNet2d
from raysegment_unet.unet2d import DoubleConv, UNet2d
from raysegment_unet.unet3d import UNet3d

__version__ = "0.1.0"

__all__ = [
    "UNet", "UNet2d", "DoubleConv",
    "ResUNet", "ResUNet2d", "ResidualUnit",
    "DenseUNet", "DenseUNet2d", "DenseBlock", "DenseLayer",
    "UNet3D", "UNet3d",
    "__version__",
]
