"""The three per-batch stages of the inference pipeline, as Ray Data UDFs.

1. :func:`decode_batch` (CPU task): read bytes, decode, plugin ``preprocess``.
2. :class:`Predictor` (actor, GPU where there is one): ``forward`` + ``reduce``.
3. :func:`encode_batch` (CPU task): plugin ``postprocess`` + COCO RLE, each batch staged
   durably. On a cluster too small to reserve a CPU for this stage beside the others, the
   predictor calls it on its own output instead (``Predictor(stager=...)``).

Every row carries ``status``/``error``; a stage that fails on one item turns
that row into an error row and passes the rest on, so no input is ever lost.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from contextlib import nullcontext
from typing import Any

import numpy as np
import pyarrow as pa

from raysegment.errors import describe_error, stage_failed
from raysegment.io.decoders import DecodeLimits, decode
from raysegment.io.entries import read_item
from raysegment.io.payload import pack, unpack
from raysegment.output.schema import OUTPUT_SCHEMA, SCENE_COLUMNS
from raysegment.plugin.padding import pad_to_multiple
from raysegment.plugin.spec import ModelSpec
from raysegment.tasks.spec import task_spec
from raysegment.uri import redact

__all__ = ["PredictOptions", "decode_batch", "Predictor", "encode_batch"]

log = logging.getLogger("raysegment")

Batch = dict[str, np.ndarray]


def decode_batch(
    batch: Batch,
    *,
    spec: ModelSpec,
    limits: DecodeLimits,
    storage_options: dict[str, Any] | None = None,
) -> Batch:
    """Read, decode and preprocess each item on the CPU."""
    plugin = spec.plugin()
    n = len(batch["uri"])
    status = np.empty(n, dtype=object)
    error = np.empty(n, dtype=object)
    height = np.zeros(n, dtype=np.int32)
    width = np.zeros(n, dtype=np.int32)
    payload = np.empty(n, dtype=object)
    meta = np.empty(n, dtype=object)
    inline = batch["inline"] if "inline" in batch else np.zeros(n, dtype=bool)
    for i, uri in enumerate(batch["uri"]):
        try:
            data = batch["data"][i] if inline[i] else read_item(uri, storage_options)  # a bad link: its own line
            sample = decode(uri, data, plugin.modality, limits)
            image = spec.preprocess(sample)  # the run's normalisation, then the plugin's preprocess
            h, w = int(sample.meta.get("height", image.shape[-2])), int(sample.meta.get("width", image.shape[-1]))
            height[i], width[i] = h, w
            payload[i] = pack({"image": image})
            meta[i] = json.dumps(sample.meta, default=str, sort_keys=True)
            status[i], error[i] = "ok", ""
        except Exception as exc:
            status[i], error[i], payload[i], meta[i] = "error", describe_error(exc), b"", ""
    return {
        "uri": batch["uri"],
        "index": batch["index"],
        "shard": batch["shard"],
        "status": status,
        "error": error,
        "height": height,
        "width": width,
        "payload": payload,
        "meta": meta,
    }


@dataclasses.dataclass(frozen=True)
class PredictOptions:
    """How the predictor runs the model on its device."""

    precision: str = "fp32"  # fp32 | bf16 | fp16 (autocast)
    channels_last: bool = False
    threads: int | None = None  # torch intra-op threads on CPU; None = leave as is
    #: Tiled windows: return each item's float32 ``logits`` cropped to its window, for the
    #: fan-in to blend, instead of ``reduce``'s labels.
    tiled: bool = False


class Predictor:
    """Stateful actor UDF: loads the model once, then runs batches on its device.

    With a ``stager`` (the run's sink) it returns encoded rows, staged as it goes, like
    :func:`encode_batch`: what a killed run has predicted is then durable even where Ray Data
    could not schedule a separate encode stage until the end.
    """

    def __init__(self, spec: ModelSpec, options: PredictOptions, storage_options: dict[str, Any] | None = None,
                 stager: Any = None):
        import torch

        from raysegment.plugin.checkpoint import load_checkpoint, load_weights

        self.torch = torch
        self.spec = spec
        self.stager = stager  # encode and stage each batch here (no CPU for an encode stage)
        self.options = options
        self.plugin = spec.plugin()
        if options.threads:
            torch.set_num_threads(int(options.threads))
        self.device = torch.device("cuda" if torch.cuda.is_available() and _has_gpu_assigned() else "cpu")
        module = self.plugin.build()
        if spec.checkpoint:
            load_weights(module, load_checkpoint(spec.checkpoint, storage_options).state_dict)
        module.eval().to(self.device)
        if options.channels_last:
            module = module.to(memory_format=torch.channels_last)
        self.module = module
        self.divisor = int(self.plugin.size_divisor)

    def _autocast(self) -> Any:
        torch = self.torch
        if self.options.precision == "fp32":
            return nullcontext()
        dtype = torch.bfloat16 if self.options.precision == "bf16" else torch.float16
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def _run(self, images: list[np.ndarray], sizes: list[tuple[int, ...]]) -> list[dict[str, np.ndarray]]:
        torch = self.torch
        host = torch.from_numpy(np.stack(images))
        if self.device.type == "cuda":
            host = host.pin_memory()
        x = host.to(self.device, non_blocking=True)
        if self.options.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), self._autocast():
            output = self.plugin.forward(self.module, x)
            if self.options.tiled:
                logits = self.plugin.logits(output).float().cpu().numpy()
                crops = [(slice(None), *(slice(0, n) for n in size)) for size in sizes]
                return [{"logits": np.ascontiguousarray(logits[i][crop])} for i, crop in enumerate(crops)]
            reduced = self.plugin.reduce(output)
        arrays = {k: v.cpu().numpy() for k, v in reduced.items()}
        return [{k: v[i] for k, v in arrays.items()} for i in range(len(images))]

    def __call__(self, batch: Batch) -> Batch:
        status = batch["status"].copy()
        error = batch["error"].copy()
        payload = batch["payload"].copy()
        groups: dict[tuple[int, ...], list[int]] = {}
        images: dict[int, np.ndarray] = {}
        sizes: dict[int, tuple[int, ...]] = {}
        for i in np.flatnonzero(status == "ok"):
            try:
                image = unpack(payload[i])["image"]
                sizes[i] = tuple(image.shape[1:])
                images[i] = pad_to_multiple(image, self.divisor)
                groups.setdefault(images[i].shape, []).append(i)
            except Exception as exc:
                status[i], error[i], payload[i] = "error", describe_error(exc), b""
        for members in groups.values():
            try:
                results = self._run([images[i] for i in members], [sizes[i] for i in members])
            except Exception:
                results = None  # isolate the bad item by running one at a time
            for j, i in enumerate(members):
                try:
                    out = results[j] if results is not None else self._run([images[i]], [sizes[i]])[0]
                    payload[i] = pack(out)
                except Exception as exc:
                    status[i], error[i], payload[i] = "error", stage_failed("inference", exc), b""
        out = {**batch, "status": status, "error": error, "payload": payload}
        if self.stager is not None:
            return encode_batch(out, spec=self.spec, stager=self.stager)
        return out


def _has_gpu_assigned() -> bool:
    try:
        import ray

        return bool(ray.get_gpu_ids())
    except Exception:
        return bool(os.environ.get("CUDA_VISIBLE_DEVICES"))


def _size_of(pred: Any) -> tuple[int, int]:
    array = pred.labels if hasattr(pred, "confidence") else pred.masks
    return tuple(int(v) for v in np.asarray(array).shape[-2:])  # type: ignore[return-value]


def _text(value: Any) -> str | None:
    """Ray may turn an all-null object column into floats; text or None, nothing else."""
    return value if isinstance(value, str) and value else None


def encode_batch(batch: Batch, *, spec: ModelSpec, stager: Any = None) -> pa.Table:
    """Postprocess each prediction and encode its masks as COCO RLE rows.

    With a ``stager`` (the run's sink), the rows are also staged as durable fragments right
    here, batch by batch, so a killed run keeps them (item-level resume).
    """
    plugin = spec.plugin()
    task = task_spec(plugin.task)
    model = spec.info()
    rows: dict[str, list[Any]] = {name: [] for name in OUTPUT_SCHEMA.names}
    for i in range(len(batch["uri"])):
        st, err = batch["status"][i], _text(batch["error"][i])
        segments = None
        meta_text = _text(batch["meta"][i])
        if st == "ok":
            try:
                meta = json.loads(meta_text) if meta_text else {}
                meta.setdefault("height", int(batch["height"][i]))
                meta.setdefault("width", int(batch["width"][i]))
                pred = plugin.postprocess(unpack(batch["payload"][i]), meta)
                segments = task.segments(pred, spec.label_names)
                if segments and _size_of(pred) != (int(batch["height"][i]), int(batch["width"][i])):
                    raise ValueError(
                        f"postprocess returned masks of {_size_of(pred)}, expected {(int(batch['height'][i]), int(batch['width'][i]))}"
                    )
            except Exception as exc:
                st, err, segments = "error", stage_failed("postprocess", exc), None
        ok = st == "ok"
        rows["uri"].append(redact(str(batch["uri"][i])))
        rows["index"].append(int(batch["index"][i]))
        rows["shard"].append(int(batch["shard"][i]))
        rows["status"].append(st)
        rows["error"].append(None if ok else (err or "unknown error"))
        rows["height"].append(int(batch["height"][i]) if ok else None)
        rows["width"].append(int(batch["width"][i]) if ok else None)
        rows["model"].append(model)
        rows["segments"].append(segments)
        rows["meta"].append(meta_text if meta_text else None)
        for name in (*SCENE_COLUMNS, "run_id"):  # run_id: stamped by the sink
            rows[name].append(None)
    table = pa.Table.from_pydict(rows, schema=OUTPUT_SCHEMA)
    if stager is not None:
        stager.stage(table)
    return table
