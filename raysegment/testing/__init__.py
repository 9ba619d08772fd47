"""The conformance kit for plugin authors (the public face).

``ModelConformance`` is the harness every model passes (subclass it in a pytest
file); ``ModelLearns`` checks that a model's loss falls on a small real dataset.
The checks live in :mod:`raysegment.testing.conformance`, running them in
:mod:`raysegment.testing.harness`, the learning checks and their small datasets
in :mod:`raysegment.testing.learning`.
"""

from raysegment.testing.conformance import CHECKS, NEEDS, CheckFailed, CheckResult
from raysegment.testing.harness import (
    ModelConformance,
    assert_conforms,
    check_model,
    create_model,
    format_results,
    installed_model,
)
from raysegment.testing.learning import ModelLearns, learning_curve, tiny_em_set

__all__ = ["CheckResult", "CheckFailed", "CHECKS", "NEEDS", "check_model", "assert_conforms", "format_results",
           "ModelConformance", "ModelLearns", "learning_curve", "tiny_em_set", "installed_model", "create_model"]
