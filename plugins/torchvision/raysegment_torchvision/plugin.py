"""torchvision's six segmentation models as raysegment plugins, under torchvision's own names.

One small builder per model, as in ``torchvision/models/segmentation/*.py``,
always with ``weights=None, weights_backbone=None``; the shared behaviour
(bands, weights, aux loss, normalisation) is in :mod:`raysegment_torchvision.adapter`.

Papers and the mechanism each model keeps, with torchvision's deviations:

- **FCN** (Long, Shelhamer, Darrell, CVPR 2015, arXiv:1411.4038): a classification
  network made fully convolutional, a per-pixel classifier on its last features,
  logits upsampled to the input. torchvision deviates: a ResNet whose last two
  stages are dilated instead of strided (output stride 8) replaces VGG-16 and the
  skip layers (FCN-8s), the head is 3x3 conv-BN-ReLU-dropout-1x1 (``FCNHead``), and
  the upsampling is fixed bilinear, not a learned deconvolution.
- **DeepLabV3** (Chen, Papandreou, Schroff, Adam 2017, arXiv:1706.05587): atrous
  spatial pyramid pooling, i.e. a 1x1 conv, three 3x3 atrous convs (rates 12, 24,
  36 at output stride 8) and image-level pooling, concatenated and projected, on a
  dilated backbone. torchvision deviates: no multi-grid in the last ResNet stage,
  rates 12/24/36 also on MobileNetV3 at output stride 16 (the paper uses 6/12/18
  there), dropout 0.5 after the projection.
- **LR-ASPP** (Howard et al., "Searching for MobileNetV3", ICCV 2019,
  arXiv:1905.02244): a 1x1 conv branch on the stride-16 features gated by a
  squeeze-excite-like sigmoid of their pooled context, upsampled to stride 8 and
  added to a 1x1 classifier of the stride-8 features. torchvision deviates: global
  average pooling instead of the paper's 49x49 pooling with stride (16, 20), and
  the full-width last stage (no "reduced tail").

The auxiliary heads (``aux_loss``) are torchvision's, from its reference recipe
(an FCN head on the stride-8 features, loss weight 0.5); the papers have none.
"""

from __future__ import annotations

from typing import Any, ClassVar

from torch import nn
from torchvision.models import segmentation as tv_seg

from raysegment_torchvision.adapter import TorchvisionSegmentation, common_params

__all__ = [
    "ResNetAdapter",
    "MobileNetV3Adapter",
    "FCNResNet50",
    "FCNResNet101",
    "DeepLabV3ResNet50",
    "DeepLabV3ResNet101",
    "DeepLabV3MobileNetV3Large",
    "LRASPPMobileNetV3Large",
]

_TORCHVISION = "Implementation: torchvision.models.segmentation (TorchVision maintainers and contributors, 2016-)."
_FCN = ("J. Long, E. Shelhamer, T. Darrell. Fully Convolutional Networks for Semantic Segmentation. "
        "CVPR 2015, pp. 3431-3440. arXiv:1411.4038. " + _TORCHVISION)
_DEEPLABV3 = ("L.-C. Chen, G. Papandreou, F. Schroff, H. Adam. Rethinking Atrous Convolution for Semantic Image "
              "Segmentation. arXiv:1706.05587, 2017. " + _TORCHVISION)
_MOBILENETV3 = ("A. Howard, M. Sandler, G. Chu, L.-C. Chen, B. Chen, M. Tan, W. Wang, Y. Zhu, R. Pang, "
                "V. Vasudevan, Q. V. Le, H. Adam. Searching for MobileNetV3. ICCV 2019, pp. 1314-1324. "
                "arXiv:1905.02244.")
_AUX_NOTE = ("torchvision's documented count for its COCO-with-VOC-labels weights (21 classes, aux_loss=True); "
             "the papers give none for this configuration. The default build has aux_loss=False, so it lacks the "
             "aux FCN head ({aux:,} parameters): {default:,} parameters, {full:,} with aux_loss=true.")


# One band (the replaced first conv) and the aux head: every part. 21 classes, not 2: the conformance
# kit's training check (6 sign-SGD steps of 1e-3 on every parameter) raises the loss of these 10-60M
# parameter networks when it starts near chance, as with 2 classes (1.07 -> 1.34 seen on fcn_resnet50,
# the first step overshoots); they train normally with Adam (tests/test_learns.py).
_SMOKE: dict[str, Any] = {"in_channels": 1, "num_classes": 21, "aux_loss": True}


# -- builders: (num_classes, aux_loss) -> torchvision module, no weights ---------------------------
def fcn_resnet50(num_classes: int, aux_loss: bool) -> nn.Module:
    return tv_seg.fcn_resnet50(weights=None, weights_backbone=None, num_classes=num_classes, aux_loss=aux_loss)


def fcn_resnet101(num_classes: int, aux_loss: bool) -> nn.Module:
    return tv_seg.fcn_resnet101(weights=None, weights_backbone=None, num_classes=num_classes, aux_loss=aux_loss)


def deeplabv3_resnet50(num_classes: int, aux_loss: bool) -> nn.Module:
    return tv_seg.deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=num_classes, aux_loss=aux_loss)


def deeplabv3_resnet101(num_classes: int, aux_loss: bool) -> nn.Module:
    return tv_seg.deeplabv3_resnet101(weights=None, weights_backbone=None, num_classes=num_classes,
                                      aux_loss=aux_loss)


def deeplabv3_mobilenet_v3_large(num_classes: int, aux_loss: bool) -> nn.Module:
    return tv_seg.deeplabv3_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=num_classes,
                                               aux_loss=aux_loss)


def lraspp_mobilenet_v3_large(num_classes: int, aux_loss: bool) -> nn.Module:
    # torchvision's LR-ASPP has no auxiliary head (it raises on aux_loss=True); the plugin has no such param.
    return tv_seg.lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=num_classes)


# -- backbone families ---------------------------------------------------------------------------
class ResNetAdapter(TorchvisionSegmentation):
    """A torchvision ResNet with ``replace_stride_with_dilation=[False, True, True]``: output stride 8."""

    params = common_params(aux=True)
    output_stride = 8  # layer3 and layer4 dilated instead of strided
    first_conv = "conv1"
    smoke_params: ClassVar[dict[str, Any]] = _SMOKE

    def backbone_key(self, key: str) -> str | None:
        """ImageNet ResNet keys are the backbone's, minus the classifier ``fc`` (cut by torchvision)."""
        return None if key.startswith("fc.") else key


class MobileNetV3Adapter(TorchvisionSegmentation):
    """torchvision's MobileNetV3-Large ``features`` with a dilated last stage (``dilated=True``): stride 16."""

    params = common_params(aux=True)
    output_stride = 16  # the last stage (C5) is dilated, not strided
    first_conv = "0.0"  # features[0] is Conv2dNormActivation; [0] its Conv2d
    backbone_enum = "MobileNet_V3_Large_Weights"
    smoke_params: ClassVar[dict[str, Any]] = _SMOKE

    def backbone_key(self, key: str) -> str | None:
        """ImageNet MobileNetV3 keys ``features.N...`` -> ``N...``; its ``classifier`` is dropped."""
        return key[len("features."):] if key.startswith("features.") else None


# -- the six models ------------------------------------------------------------------------------
class FCNResNet50(ResNetAdapter):
    """torchvision ``fcn_resnet50``."""

    summary = "FCN (Long et al. 2015) as torchvision builds it: dilated ResNet-50 (OS 8) and an FCN head."
    paper = _FCN
    builder = staticmethod(fcn_resnet50)
    weights_enum = "FCN_ResNet50_Weights"
    backbone_enum = "ResNet50_Weights"
    paper_parameters = 35.322218
    parameter_note = _AUX_NOTE.format(aux=2_365_205, default=32_957_013, full=35_322_218)


class FCNResNet101(ResNetAdapter):
    """torchvision ``fcn_resnet101``."""

    summary = "FCN (Long et al. 2015) as torchvision builds it: dilated ResNet-101 (OS 8) and an FCN head."
    paper = _FCN
    builder = staticmethod(fcn_resnet101)
    weights_enum = "FCN_ResNet101_Weights"
    backbone_enum = "ResNet101_Weights"
    paper_parameters = 54.314346
    parameter_note = _AUX_NOTE.format(aux=2_365_205, default=51_949_141, full=54_314_346)


class DeepLabV3ResNet50(ResNetAdapter):
    """torchvision ``deeplabv3_resnet50``."""

    summary = "DeepLabV3 (Chen et al. 2017) as torchvision builds it: ASPP on a dilated ResNet-50 (OS 8)."
    paper = _DEEPLABV3
    builder = staticmethod(deeplabv3_resnet50)
    weights_enum = "DeepLabV3_ResNet50_Weights"
    backbone_enum = "ResNet50_Weights"
    paper_parameters = 42.004074
    parameter_note = _AUX_NOTE.format(aux=2_365_205, default=39_638_869, full=42_004_074)


class DeepLabV3ResNet101(ResNetAdapter):
    """torchvision ``deeplabv3_resnet101``."""

    summary = "DeepLabV3 (Chen et al. 2017) as torchvision builds it: ASPP on a dilated ResNet-101 (OS 8)."
    paper = _DEEPLABV3
    builder = staticmethod(deeplabv3_resnet101)
    weights_enum = "DeepLabV3_ResNet101_Weights"
    backbone_enum = "ResNet101_Weights"
    paper_parameters = 60.996202
    parameter_note = _AUX_NOTE.format(aux=2_365_205, default=58_630_997, full=60_996_202)


class DeepLabV3MobileNetV3Large(MobileNetV3Adapter):
    """torchvision ``deeplabv3_mobilenet_v3_large``."""

    summary = "DeepLabV3 (Chen et al. 2017) as torchvision builds it: ASPP on a dilated MobileNetV3-Large (OS 16)."
    paper = _DEEPLABV3 + " Backbone: " + _MOBILENETV3
    builder = staticmethod(deeplabv3_mobilenet_v3_large)
    weights_enum = "DeepLabV3_MobileNet_V3_Large_Weights"
    paper_parameters = 11.029328
    parameter_note = _AUX_NOTE.format(aux=3_851, default=11_025_477, full=11_029_328)


class LRASPPMobileNetV3Large(MobileNetV3Adapter):
    """torchvision ``lraspp_mobilenet_v3_large``: no auxiliary head, so no ``aux_loss`` parameter."""

    summary = "LR-ASPP (Howard et al. 2019) as torchvision builds it: lite ASPP head on MobileNetV3-Large."
    paper = _MOBILENETV3 + " " + _TORCHVISION
    params = common_params(aux=False)
    builder = staticmethod(lraspp_mobilenet_v3_large)
    weights_enum = "LRASPP_MobileNet_V3_Large_Weights"
    output_stride = 16  # the classifier starts from the stride-16 "high" branch (plus stride-8 "low" features)
    smoke_params: ClassVar[dict[str, Any]] = {"in_channels": 1, "num_classes": 2}
    paper_parameters = 3.221538
    parameter_note = ("torchvision's documented count for its COCO-with-VOC-labels weights (21 classes), equal to "
                      "the default build (3,221,538). The paper evaluates LR-ASPP on Cityscapes (19 classes), partly "
                      "with a reduced-tail backbone that torchvision does not build, so its figures do not apply.")
