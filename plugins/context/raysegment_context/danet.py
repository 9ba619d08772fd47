"""DANet: Fu, Liu, Tian, Li, Bao, Fang, Lu. Dual Attention Network for Scene Segmentation.
CVPR 2019, arXiv:1809.02983.

Mechanism: a dilated ResNet (output stride 8) feeds two parallel branches, each
opened by a 3x3 conv reducing C to C/4 (+ BN + ReLU):

- position attention module (PAM): query and key 1x1 convs to C/8, value 1x1 conv to
  C; ``A = softmax(Q^T K)`` over all N = H*W positions (each row sums to 1);
  ``out = gamma * (V A^T) + x``;
- channel attention module (CAM): channel affinity ``X X^T`` (C x C), turned into
  ``max(row) - affinity`` before the softmax as in the authors' code; the max is
  constant along a row, so ``A = softmax(-X X^T)``: a channel draws most on the
  channels least like it; ``out = gamma * (A X) + x``.

Both gammas start at 0, so each module starts as the identity and learns how much
context to add. Each branch ends with a 3x3 conv (+ BN + ReLU); the two are SUMMED
and classified by dropout 0.1 + 1x1 conv, then bilinearly upsampled to the input.
As in the authors' code (junfu1115/DANet, ``DANetHead`` and
``SegmentationMultiLosses``), training also classifies each branch on its own and
the loss is ``CE(sum) + CE(PAM) + CE(CAM)`` (weights 1, 1, 1); those two
classifiers do not run at inference.

Deviations: torchvision's ResNet stem instead of the authors' deep stem (so that
torchvision weights load); the branch widths follow C/4 of the backbone used
instead of the authors' hard-coded 512; the 1x1 classifiers start from N(0, 0.01)
weights (see ``common.init_classifier``).

Example:

>>> import torch
>>> net = DANetModule(in_channels=3, num_classes=2, depth=18).eval()
>>> net(torch.zeros(1, 3, 64, 48)).shape
torch.Size([1, 2, 64, 48])
>>> len(net.train()(torch.zeros(2, 3, 64, 48)))
3
"""

from __future__ import annotations

import torch
from torch import nn

from raysegment_backbones import resnet
from raysegment_context.common import conv_bn_relu, init_classifier, resize

__all__ = ["PositionAttention", "ChannelAttention", "DANetModule"]


class PositionAttention(nn.Module):
    """PAM: every position is a weighted sum of the values at all positions, weights from Q^T K."""

    def __init__(self, channels: int, key_reduction: int = 8) -> None:
        super().__init__()
        key_channels = max(1, channels // key_reduction)
        self.query = nn.Conv2d(channels, key_channels, kernel_size=1)
        self.key = nn.Conv2d(channels, key_channels, kernel_size=1)
        self.value = nn.Conv2d(channels, channels, kernel_size=1)
        self.gamma = nn.Parameter(torch.zeros(1))

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, N) with ``A[b, i, j]`` = how much position i attends to position j; rows sum to 1."""
        q = self.query(x).flatten(2).transpose(1, 2)  # (B, N, C')
        k = self.key(x).flatten(2)  # (B, C', N)
        return torch.softmax(torch.bmm(q, k), dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        v = self.value(x).flatten(2)  # (B, C, N)
        out = torch.bmm(v, self.attention(x).transpose(1, 2)).view(b, c, h, w)
        return self.gamma * out + x


class ChannelAttention(nn.Module):
    """CAM: every channel is a weighted sum of all channels, weights from the channel affinity X X^T."""

    def __init__(self) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1))

    @staticmethod
    def attention(x: torch.Tensor) -> torch.Tensor:
        """(B, C, C) softmax of ``max(row) - X X^T`` (the authors' code, = softmax(-X X^T)); rows sum to 1."""
        flat = x.flatten(2)
        energy = torch.bmm(flat, flat.transpose(1, 2))
        energy = energy.max(dim=-1, keepdim=True).values - energy
        return torch.softmax(energy, dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.bmm(self.attention(x), x.flatten(2)).view_as(x)
        return self.gamma * out + x


class DANetModule(nn.Module):
    """Dilated ResNet + PAM and CAM branches, summed; in training also each branch's own logits."""

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 21,
        depth: int = 101,
        dropout: float = 0.1,
        output_stride: int = 8,
        backbone_weights: str = "",
    ) -> None:
        super().__init__()
        self.backbone = resnet(depth, in_channels=in_channels, output_stride=output_stride, weights=backbone_weights)
        c = self.backbone.channels["layer4"]
        inter = c // 4
        self.pam_in, self.cam_in = conv_bn_relu(c, inter), conv_bn_relu(c, inter)
        self.pam, self.cam = PositionAttention(inter), ChannelAttention()
        self.pam_out, self.cam_out = conv_bn_relu(inter, inter), conv_bn_relu(inter, inter)

        def classifier() -> nn.Sequential:
            return nn.Sequential(nn.Dropout2d(dropout), init_classifier(nn.Conv2d(inter, num_classes, kernel_size=1)))

        self.classifier, self.pam_classifier, self.cam_classifier = classifier(), classifier(), classifier()
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, C, H, W) -> fused logits; in training (fused, PAM-only, CAM-only) logits, all (B, K, H, W)."""
        size = x.shape[-2:]
        feat = self.backbone(x)["layer4"]
        p = self.pam_out(self.pam(self.pam_in(feat)))
        c = self.cam_out(self.cam(self.cam_in(feat)))
        fused = resize(self.classifier(p + c), size, True)
        if not self.training:
            return fused
        return fused, resize(self.pam_classifier(p), size, True), resize(self.cam_classifier(c), size, True)
