"""raysegment-unet: U-Net-family models as raysegment plugins.

``unet`` (Ronneberger et al. 2015), ``resunet`` (Zhang et al. 2018) and ``denseunet``
(Guan et al. 2019); :mod:`raysegment_unet.unet3d` holds the 3D U-Net (Çiçek et al. 2016),
not yet registered (the pipeline has no volume support).
"""

from raysegment_unet.denseunet import DenseBlock, DenseLayer, DenseUNet2d
from raysegment_unet.plugin import DenseUNet, ResUNet, UNet
from raysegment_unet.resunet import ResidualUnit, ResUNet2d
from raysegment_unet.unet2d import DoubleConv, UNet2d
from raysegment_unet.unet3d import UNet3d

__version__ = "0.1.0"

__all__ = [
    "UNet", "UNet2d", "DoubleConv",
    "ResUNet", "ResUNet2d", "ResidualUnit",
    "DenseUNet", "DenseUNet2d", "DenseBlock", "DenseLayer",
    "UNet3d",
    "__version__",
]
