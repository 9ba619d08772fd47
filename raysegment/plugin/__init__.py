"""The model-plugin contract: the public face that plugin authors import.

A plugin subclasses :class:`SegmentationModel`, declares its :class:`Param` s and
registers the class under the ``raysegment.models`` entry-point group. The
contract itself lives in :mod:`raysegment.plugin.contract`; this package also
holds the registry, model specs and cards, checkpoints and pretrained weights,
whose plugin-facing parts are :mod:`raysegment.weights` and :mod:`raysegment.checkpoint`.
"""

from raysegment.plugin.contract import (
    InputError,
    InstancePrediction,
    Modality,
    Param,
    ParamError,
    Prediction,
    Sample,
    SegmentationModel,
    SemanticPrediction,
    Task,
    class_names_from,
    with_aux_losses,
)

__all__ = [  # the contract's own __all__, re-exported whole
    "Task", "Modality", "Param", "ParamError", "InputError", "Sample", "SemanticPrediction",
    "InstancePrediction", "Prediction", "SegmentationModel", "with_aux_losses", "class_names_from",
]
