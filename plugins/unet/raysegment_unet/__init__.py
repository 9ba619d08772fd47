"""raysegment-unet: the 2D U-Net of Ronneberger et al. (2015) as a raysegment plugin."""

from raysegment_unet.plugin import UNet
from raysegment_unet.unet2d import DoubleConv, UNet2d

__version__ = "0.1.0"

__all__ = ["UNet", "UNet2d", "DoubleConv", "__version__"]
