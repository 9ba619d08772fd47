"""raysegment checkpoints: the public face of :mod:`raysegment.plugin.checkpoint`.

Checkpoints are always read with ``torch.load(weights_only=True)``.
"""

from raysegment.plugin.checkpoint import (
    FORMAT,
    Checkpoint,
    CheckpointError,
    load_checkpoint,
    load_weights,
    save_checkpoint,
)

__all__ = ["FORMAT", "Checkpoint", "CheckpointError", "load_checkpoint", "save_checkpoint", "load_weights"]
