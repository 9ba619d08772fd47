"""Pretrained weights for plugins: the public face of :mod:`raysegment.plugin.weights`.

Plugins import these names from here; the implementation may move inside the core.
"""

from raysegment.plugin.weights import (
    WeightsError,
    expand_input_bands,
    load_pretrained,
    read_state_dict,
    torchvision_weights_file,
)

__all__ = ["WeightsError", "read_state_dict", "torchvision_weights_file", "expand_input_bands", "load_pretrained"]
