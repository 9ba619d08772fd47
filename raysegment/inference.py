"""Batch inference from Python: the public face of :mod:`raysegment.infer.pipeline`.

``run_inference(InferenceConfig(...))`` is what ``raysegment infer`` calls.
"""

from raysegment.infer.pipeline import InferenceConfig, RunSummary, run_inference

__all__ = ["InferenceConfig", "RunSummary", "run_inference"]
