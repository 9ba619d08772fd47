"""Training data: (input, mask) pairs, their checks, and the CPU stage that loads them.

Pairs come from an image folder plus a mask folder matched by file stem (with a
pairing rule such as ``"{stem}_mask"``), or from a manifest with ``image_uri``
and ``mask_uri`` columns. Every pair goes through :func:`load_pairs` on a Ray
Data CPU task: decode both by the model's modality (images, or volumes with label
volumes, through the decoder table inference uses), map raw mask values to class ids, check sizes and
label range, and (for the U-Net loss) compute the border weight map. A pair that
fails becomes a row of the training-data report, never a crash.
"""

from __future__ import annotations

import dataclasses
import io
import random
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from raysegment.errors import InputSpecError, describe_error
from raysegment.io.coco import CocoSemantic, coco_ref, load_mask
from raysegment.io.decoders import DecodeLimits, decode
from raysegment.io.payload import pack
from raysegment.io.sources import list_inputs, read_manifest
from raysegment.plugin.contract import InputError, Modality
from raysegment.plugin.spec import ModelSpec
from raysegment.tasks.spec import task_spec
from raysegment.uri import read_bytes, stem

__all__ = ["DataCheck", "report_table", "report_bytes", "TrainPair", "list_pairs", "split_pairs", "fill_to_workers", "parse_value_map", "WeightMapOptions",
           "load_pairs"]

Batch = dict[str, np.ndarray]


@dataclasses.dataclass
class DataCheck:
    """What the data-check pass learned: the good pairs and the label counts of the training ones."""

    good: set[int]
    class_pixels: np.ndarray  # (K,) labelled pixels per class over the good training pairs
    ignored: int  # target pixels at ignore_index over all good pairs


def report_table(rows: Sequence[Mapping[str, Any]]) -> Any:
    """Rows of the training-data report -> a pyarrow Table (columns in the first row's order)."""
    import pyarrow as pa

    return pa.Table.from_pylist(list(rows))


def report_bytes(table: Any) -> bytes:
    """The report as Parquet bytes, for :meth:`~raysegment.train.run_folder.RunFolder.write`."""
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


@dataclasses.dataclass(frozen=True)
class TrainPair:
    image: str
    mask: str


def list_pairs(
    images: str, masks: str | None = None, *, pair: str = "{stem}", storage_options: dict | None = None
) -> tuple[list[TrainPair], list[tuple[str, str]]]:
    """Pairs in a stable order, plus ``(uri, reason)`` for images that found no mask.

    ``masks`` is a mask folder/prefix, or a COCO annotation ``.json`` (polygons or
    RLE, rendered to semantic masks: 0 = background, categories 1..N); ``None``
    means ``images`` is a manifest with ``image_uri``/``mask_uri``.
    """
    if masks is None:
        if not images.lower().endswith((".csv", ".parquet")):
            raise InputSpecError("training data needs a mask folder (--masks) or a manifest with image_uri, mask_uri")
        cols = read_manifest(images, ["image_uri", "mask_uri"], storage_options)
        pairs = [TrainPair(i, m) for i, m in zip(cols["image_uri"], cols["mask_uri"])]
        if not pairs:
            raise InputSpecError(f"training set is empty: {images} lists no pairs")
        return pairs, []
    if masks.lower().endswith(".json"):
        return _coco_pairs(images, masks, storage_options)
    if "{stem}" not in pair:
        raise ValueError(f"--pair must contain {{stem}}, got {pair!r}")
    by_stem: dict[str, str] = {}
    for uri in list_inputs(masks, storage_options):
        by_stem.setdefault(stem(uri), uri)
    pairs, unpaired = [], []
    for uri in list_inputs(images, storage_options):
        want = pair.format(stem=stem(uri))
        if want in by_stem:
            pairs.append(TrainPair(uri, by_stem[want]))
        else:
            unpaired.append((uri, f"no mask named {want}.* under the mask folder"))
    if not pairs:
        raise InputSpecError(f"training set is empty: no image under {images} has a mask under {masks}")
    return pairs, unpaired


def _coco_pairs(images: str, annotations: str, storage_options: dict | None) -> tuple[list[TrainPair], list[tuple[str, str]]]:
    """Images matched by file name to a COCO file; masks are references rendered by pycocotools."""
    coco = CocoSemantic.load(annotations, storage_options)
    matched, unmatched = coco.pairs(images)
    if not matched:
        raise InputSpecError(f"training set is empty: no image under {images} is in {annotations}")
    pairs = [TrainPair(uri, coco_ref(annotations, image_id)) for uri, image_id in matched]
    return pairs, [(uri, f"not in COCO file {annotations}") for uri in unmatched]


def split_pairs(pairs: Sequence[TrainPair], val_fraction: float, seed: int) -> tuple[list[TrainPair], list[TrainPair]]:
    """A seeded, reproducible train/validation split (validation keeps listing order)."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    n_val = int(round(len(pairs) * val_fraction))
    order = list(range(len(pairs)))
    random.Random(seed).shuffle(order)
    val = set(order[:n_val])
    return [p for i, p in enumerate(pairs) if i not in val], [p for i, p in enumerate(pairs) if i in val]


def fill_to_workers(rows: Sequence[dict[str, Any]], workers: int) -> list[dict[str, Any]]:
    """``rows`` plus repeats of its first rows, up to a multiple of ``workers``.

    Ray Train splits the training set equally between workers and drops the rest:
    without this, up to ``workers - 1`` items would never be trained on. A repeat keeps
    its item's index, so it also keeps that item's augmentation for the epoch.
    """
    short = (-len(rows)) % max(int(workers), 1)
    return [*rows, *(rows[i % len(rows)] for i in range(short))] if rows else []


def parse_value_map(text: str | Mapping[int, int] | None) -> dict[int, int]:
    """``"0:1,255:0"`` -> {0: 1, 255: 0}: raw mask pixel value -> class id (others unchanged)."""
    if text is None or text == "":
        return {}
    if isinstance(text, Mapping):
        return {int(k): int(v) for k, v in text.items()}
    out: dict[int, int] = {}
    for part in str(text).split(","):
        raw, sep, cls = part.partition(":")
        try:
            out[int(raw)] = int(cls)
        except ValueError:
            raise ValueError(f"--mask-values expects RAW:CLASS pairs like 0:1,255:0, got {part!r}") from None
        if not sep:
            raise ValueError(f"--mask-values expects RAW:CLASS pairs like 0:1,255:0, got {part!r}")
    return out


def apply_value_map(mask: np.ndarray, mapping: Mapping[int, int]) -> np.ndarray:
    """Raw mask values -> class ids (values not in the map are kept).

    Without a map the mask comes back as decoded, so ``encode_target`` sees the stored dtype
    (a float label volume is checked for whole numbers there, not truncated here).
    """
    if not mapping:
        return mask
    out = mask.astype(np.int64)
    for raw, cls in mapping.items():
        out[mask == raw] = cls
    return out


@dataclasses.dataclass(frozen=True)
class WeightMapOptions:
    """The U-Net border weight map; computed per pair on the CPU data stage."""

    cell_label: int = 0
    w0: float = 10.0
    sigma: float = 5.0
    class_weights: tuple[float, ...] | None = None  # None: balanced per image


def _load_one(pair_image: str, pair_mask: str, spec: ModelSpec, value_map: Mapping[int, int],
              weights: WeightMapOptions | None, limits: DecodeLimits, storage_options: dict | None) -> dict[str, Any]:
    plugin = spec.plugin()
    # Inputs and labels are decoded by the model's modality, through the same decoder table as inference.
    sample = decode(pair_image, read_bytes(pair_image, storage_options), plugin.modality, limits)
    raw = load_mask(pair_mask, storage_options, plugin.modality)
    spatial = tuple(sample.data.shape[: raw.ndim])
    if raw.shape != spatial:
        what = "volume" if plugin.modality is Modality.VOLUME else "image"
        raise InputError(f"mask is {'x'.join(map(str, raw.shape[::-1]))} but its {what} is "
                         f"{'x'.join(map(str, spatial[::-1]))}")
    target = task_spec(plugin.task).require("target", "training")(plugin, apply_value_map(raw, value_map))
    image = spec.preprocess(sample)  # normalised first; the augmentations then act on that scale
    arrays = {"image": image, "target": target}
    if weights is not None:
        from raysegment.criteria.weightmap import unet_weight_map

        if target.ndim != 2:
            raise InputError("the U-Net border weight map is defined for 2D masks only")
        arrays["weight"] = unet_weight_map(target, cell_label=weights.cell_label, w0=weights.w0, sigma=weights.sigma,
                                           class_weights=weights.class_weights, ignore_index=plugin.ignore_index)
    labelled = target[target != plugin.ignore_index]
    counts = np.bincount(labelled.ravel().astype(np.int64), minlength=max(plugin.num_classes, 2)) if labelled.size \
        else np.zeros(max(plugin.num_classes, 2), dtype=np.int64)
    return {"arrays": arrays, "height": target.shape[0], "width": target.shape[1], "class_pixels": counts,
            "ignored": int(target.size - labelled.size)}


def load_pairs(
    batch: Batch,
    *,
    spec: ModelSpec,
    value_map: Mapping[int, int],
    weights: WeightMapOptions | None = None,
    limits: DecodeLimits = DecodeLimits(),
    storage_options: dict | None = None,
    keep_arrays: bool = True,
) -> Batch:
    """Decode and check each pair; bad pairs keep their row with status ``error``."""
    n = len(batch["image_uri"])
    status = np.empty(n, dtype=object)
    error = np.empty(n, dtype=object)
    payload = np.empty(n, dtype=object)
    height = np.zeros(n, dtype=np.int32)
    width = np.zeros(n, dtype=np.int32)
    classes = max(spec.plugin().num_classes, 2)
    class_pixels = np.zeros((n, classes), dtype=np.int64)  # labelled pixels per class (the data check's counts)
    ignored = np.zeros(n, dtype=np.int64)  # target pixels at ignore_index
    for i in range(n):
        try:
            out = _load_one(batch["image_uri"][i], batch["mask_uri"][i], spec, value_map, weights, limits,
                            storage_options)
            payload[i] = pack(out["arrays"]) if keep_arrays else b""
            status[i], error[i] = "ok", ""
            height[i], width[i] = out["height"], out["width"]
            class_pixels[i], ignored[i] = out["class_pixels"], out["ignored"]
        except Exception as exc:
            status[i], error[i], payload[i] = "error", describe_error(exc), b""
    return {"index": batch["index"], "image_uri": batch["image_uri"], "mask_uri": batch["mask_uri"],
            "status": status, "error": error, "height": height, "width": width,
            "class_pixels": class_pixels, "ignored": ignored, "payload": payload}
