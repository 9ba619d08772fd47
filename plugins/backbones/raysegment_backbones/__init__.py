"""Shared torchvision backbones for raysegment model plugins (a library: no entry points)."""

from raysegment_backbones.resnet import RESNET_DEPTHS, ResNetBackbone, resnet

__all__ = ["RESNET_DEPTHS", "ResNetBackbone", "resnet"]
