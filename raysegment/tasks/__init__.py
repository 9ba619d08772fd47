"""The task seam: one :class:`~raysegment.tasks.spec.TaskSpec` per :class:`~raysegment.plugin.Task`.

A task spec says everything the pipeline must know about what a model's masks
mean: the prediction type and its checks, how a prediction becomes a row's
``segments``, how ground truth becomes a training target, the default loss, the
metric (a mergeable accumulator) and how tiled windows merge. The encode stage,
the tiled path, evaluation, the training loop and the conformance kit ask
:func:`~raysegment.tasks.spec.task_spec` instead of testing the task themselves.
"""
