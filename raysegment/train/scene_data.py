"""Training straight from scenes: pairing scenes with labels, surveying them, and reading windows.

A scene is a large image or volume (GeoTIFF / COG, NIfTI, anything
:func:`~raysegment.io.scenes.base.open_scene` opens) with a label raster of the
same grid, or with vector labels (GeoJSON, GeoParquet, shapefile, GeoPackage) in
any CRS, reprojected to the scene's and burnt per window. No worker ever holds a
scene whole: the survey streams each label in strips, and training reads one
window at a time by range, exactly as tiled inference reads.

* :func:`list_scenes`: a scene file with one label file pairs directly; one vector
  file labels every scene; otherwise labels pair by stem as for image training.
* :func:`survey_scene` (one Ray task per scene): header checks, class pixels
  outside the hold-out (for ``balanced`` weights and the report), pixels at
  ``ignore_index``, and the positive cells the sampler aims at.
* :func:`load_windows`: the Ray Data batch function that reads the windows of
  :mod:`raysegment.train.sampler` into the same packed payload as
  :func:`~raysegment.train.data.load_pairs`, so the training loop is one loop.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from raysegment.errors import describe_error
from raysegment.io.decoders import DecodeLimits
from raysegment.io.payload import pack
from raysegment.io.regions import Box, Region
from raysegment.io.scenes.base import STRIP_PIXELS, SceneInfo, SceneReader, open_scene, strip_windows
from raysegment.io.sources import list_inputs
from raysegment.io.vector_labels import cached_vector_labels, is_vector_labels, rasterize_window
from raysegment.plugin.contract import InputError, Modality, Sample
from raysegment.plugin.spec import ModelSpec
from raysegment.tasks.spec import task_spec
from raysegment.tiling.plan import Window
from raysegment.train.data import TrainPair, apply_value_map, list_pairs
from raysegment.train.sampler import positive_cells_in

__all__ = ["Scene", "SceneLabels", "list_scenes", "survey_scene", "load_windows", "STRIP_PIXELS"]



@dataclasses.dataclass(frozen=True)
class Scene:
    """One scene and its labels, by URI; ``vector``: the labels are polygons, not a raster."""

    image: str
    label: str
    vector: bool


def list_scenes(images: str, labels: str | None, *, pair: str = "{stem}",
                storage_options: dict | None = None) -> tuple[list[Scene], list[tuple[str, str]]]:
    """Scenes in a stable order, plus ``(uri, reason)`` for scenes that found no labels."""
    if labels is not None and is_vector_labels(labels):  # one vector file (GeoJSON, GeoParquet, ...) labels all
        return [Scene(uri, labels, True) for uri in list_inputs(images, storage_options)], []
    if labels is not None:
        found, found_labels = list_inputs(images, storage_options), list_inputs(labels, storage_options)
        if len(found) == 1 and len(found_labels) == 1:  # one scene, one label raster: no naming rule needed
            return [Scene(found[0], found_labels[0], False)], []
    pairs, unpaired = list_pairs(images, labels, pair=pair, storage_options=storage_options)
    return [Scene(p.image, p.mask, is_vector_labels(p.mask)) for p in pairs], unpaired


def scenes_as_pairs(scenes: Sequence[Scene]) -> list[TrainPair]:
    """The scenes as pairs, for the seeded split of :func:`~raysegment.train.data.split_pairs`."""
    return [TrainPair(s.image, s.label) for s in scenes]


class SceneLabels:
    """The labels of one scene on its pixel grid, read by window: a label raster, or burnt polygons."""

    def __init__(self, scene: Scene, info: SceneInfo, modality: Modality, label_field: str | None,
                 storage_options: dict | None, limits: DecodeLimits = DecodeLimits()) -> None:
        self.scene, self.info, self.label_field = scene, info, label_field
        self.reader: SceneReader | None = None
        self.polygons: Any = None
        if scene.vector:
            if info.georef is None or len(info.shape) != 2:
                raise InputError("vector labels need a georeferenced 2D scene (GeoTIFF / COG); this one has no CRS")
            self.polygons = cached_vector_labels(scene.label, info.georef.crs, label_field, storage_options)
        else:
            self.reader = open_scene(scene.label, storage_options, modality, limits)
            shape = self.reader.info.shape
            if shape != info.shape:
                self.close()
                raise InputError(f"label raster is {'x'.join(map(str, shape[::-1]))} but its scene is "
                                 f"{'x'.join(map(str, info.shape[::-1]))}")
            if self.reader.info.bands != 1:
                self.close()
                raise InputError(f"label raster has {self.reader.info.bands} bands; labels need one")

    def read(self, window: Window) -> np.ndarray:
        """Raw label values of ``window`` (before the value map)."""
        if self.reader is not None:
            return self.reader.read(window)[..., 0]
        assert self.info.georef is not None
        (row0, col0), (height, width) = window.start, window.size
        return rasterize_window(self.polygons, self.info.georef.transform, (row0, col0, height, width), self.label_field)

    def close(self) -> None:
        if self.reader is not None:
            self.reader.close()

    def __enter__(self) -> SceneLabels:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _outside(window: Window, boxes: Sequence[Box]) -> np.ndarray:
    """True at the window's pixels that lie outside every hold-out box."""
    keep = np.ones(window.size, dtype=bool)
    for box in boxes:
        inner = tuple(slice(max(s, w0) - w0, min(e, w0 + n) - w0) for (s, e), w0, n in zip(box, window.start, window.size))
        if all(sl.stop > sl.start for sl in inner):
            keep[inner] = False
    return keep


def survey_scene(scene: Scene, *, spec: ModelSpec, value_map: Mapping[int, int], region: Region | None,
                 cell: Sequence[int], label_field: str | None = None, storage_options: dict | None = None,
                 limits: DecodeLimits = DecodeLimits()) -> dict[str, Any]:
    """Check one scene and count its labels outside the hold-out ``region``; a bad scene is a report row.

    The region's boxes on this scene come back as ``exclude``. ``cell`` is the
    sampler's positive-cell grid; strips are cut on it so the cells of every strip
    merge exactly. Foreground is any class but 0 and ``ignore_index``.
    """
    plugin = spec.plugin()
    classes = max(plugin.num_classes, 2)
    out: dict[str, Any] = {"image_uri": scene.image, "mask_uri": scene.label, "status": "ok", "error": None,
                           "shape": [], "crs": None, "transform": None, "ignored": 0, "exclude": [],
                           "class_pixels": np.zeros(classes, dtype=np.int64),
                           "positive": np.zeros((0, len(cell)), dtype=np.int64)}
    try:
        with open_scene(scene.image, storage_options, plugin.modality, limits) as reader:
            info = reader.info
        spec.check_takes(len(info.shape), info.bands, info.dtype, f"{info.format} scene")
        out["shape"] = list(info.shape)
        if info.georef is not None:
            out["crs"], out["transform"] = info.georef.crs, list(info.georef.transform)
        exclude = [] if region is None else region.pixel_boxes(
            info.shape, info.georef.transform if info.georef else None, info.georef.crs if info.georef else None,
            storage_options)
        out["exclude"] = exclude
        cells = []
        with SceneLabels(scene, info, plugin.modality, label_field, storage_options, limits) as labels:
            for strip in strip_windows(info.shape, int(cell[0])):
                raw = apply_value_map(labels.read(strip), value_map)
                keep = _outside(strip, exclude)
                ignored = raw == plugin.ignore_index
                out["ignored"] += int((ignored & keep).sum())
                values = raw[keep & ~ignored].astype(np.int64)
                if values.size and (values.min() < 0 or values.max() >= classes):
                    bad = int(values.max() if values.max() >= classes else values.min())
                    raise InputError(f"label value {bad} is outside the classes 0..{classes - 1} "
                                     f"(map raw values with --mask-values)")
                out["class_pixels"] += np.bincount(values.ravel(), minlength=classes)[:classes]
                cells.append(positive_cells_in(keep & ~ignored & (raw != 0), strip.start, cell))
        out["positive"] = np.concatenate(cells) if cells else out["positive"]
    except Exception as exc:
        out["status"], out["error"] = "error", describe_error(exc)
    return out


def _read_window(image: SceneReader, labels: SceneLabels, window: Window, spec: ModelSpec,
                 value_map: Mapping[int, int]) -> dict[str, np.ndarray]:
    plugin = spec.plugin()
    data = image.read(window)
    valid = image.valid_mask(window, data)
    meta = dict(zip(("depth", "height", "width")[-len(window.size):], window.size))
    target = task_spec(plugin.task).require("target", "training")(plugin, apply_value_map(labels.read(window), value_map))
    if valid is not None and not valid.all():
        target = np.where(valid, target, plugin.ignore_index).astype(target.dtype)  # nodata pixels teach nothing
    return {"image": spec.preprocess(Sample(data, image.info.format, meta)), "target": target}


def load_windows(batch: dict[str, np.ndarray], *, spec: ModelSpec, scenes: Sequence[Scene],
                 value_map: Mapping[int, int], label_field: str | None = None, storage_options: dict | None = None,
                 limits: DecodeLimits = DecodeLimits()) -> dict[str, np.ndarray]:
    """Read each window row (``index``, ``scene``, ``start``, ``size``) of its scene and labels.

    Scenes were checked by the survey, so a failure here is a fault (storage gone,
    a file changed), raised for Ray Train's retry from the last checkpoint.
    """
    plugin = spec.plugin()
    n = len(batch["index"])
    payload = np.empty(n, dtype=object)
    opened: dict[int, tuple[SceneReader, SceneLabels]] = {}
    try:
        for i in range(n):
            s = int(batch["scene"][i])
            if s not in opened:
                image = open_scene(scenes[s].image, storage_options, plugin.modality, limits)
                opened[s] = (image, SceneLabels(scenes[s], image.info, plugin.modality, label_field,
                                                storage_options, limits))
            window = Window(int(batch["index"][i]), tuple(int(v) for v in batch["start"][i]),
                            tuple(int(v) for v in batch["size"][i]))
            payload[i] = pack(_read_window(*opened[s], window, spec, value_map))
    finally:
        for image, labels in opened.values():
            image.close()
            labels.close()
    return {"index": np.asarray(batch["index"], dtype=np.int64), "payload": payload}
