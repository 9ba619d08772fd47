"""raysegment: plugin-based distributed batch segmentation on Ray.

The notebook-facing API lives here; the CLI is a thin layer over it. Names are
loaded on first use (PEP 562), so ``import raysegment`` stays cheap: it imports
neither torch nor Ray until one of them is asked for.

>>> import raysegment
>>> sorted(raysegment.__all__)[:3]
['InferenceConfig', 'TrainConfig', '__version__']
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_LAZY = {
    "run_inference": "raysegment.infer.pipeline",
    "InferenceConfig": "raysegment.infer.pipeline",
    "run_training": "raysegment.train.training",
    "TrainConfig": "raysegment.train.training",
    "evaluate": "raysegment.eval.evaluation",
    "read_output": "raysegment.output.root",
    "row_label_map": "raysegment.masks.rle",
}

__all__ = ["__version__", *_LAZY]

if TYPE_CHECKING:  # for type checkers and IDEs; at run time the names load lazily
    # ruff: noqa: F401
    from raysegment.eval.evaluation import evaluate
    from raysegment.infer.pipeline import InferenceConfig, run_inference
    from raysegment.masks.rle import row_label_map
    from raysegment.output.root import read_output
    from raysegment.train.training import TrainConfig, run_training


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'raysegment' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
