"""Fan-in of tiled inference: window logits -> one output row per scene, as a Ray Data actor.

Windows of many scenes arrive in any order, mixed in batches. For each scene the
merger keeps a :class:`~raysegment.tiling.merge.StripMerger` (the blend of the
windows' logits) and hands every finished strip to the plugin's ``reduce`` (the
same arg-max/confidence rule as whole images), then to the segment builders
(:mod:`raysegment.masks.scene_segments`) and the optional georeferenced outputs
(:mod:`raysegment.output.geo`), and forgets it. A scene's row leaves once each of
its windows arrived, was skipped (nodata) or failed; memory is the strips of the
scenes in flight, never a whole scene. The merger comes from the model's task spec
(``tiled_merge``): the semantic task's blends logits.

One merger actor serves the run (a window must meet the other windows of its
scene); it only adds, divides and encodes: about 40 to 90 windows of 512² per second on one
CPU core (``benchmarks/bench_tiled.py``), far above a CPU predictor, but the limit for a
fast GPU predictor running a small model (not measured: no GPU was available).
"""

from __future__ import annotations

import json
import logging
from typing import Any

import numpy as np
import pyarrow as pa

from raysegment.infer.tiled_stages import Tiling, scene_plan
from raysegment.io.payload import unpack
from raysegment.masks.scene_segments import PlaneSegments, VolumeSegments
from raysegment.output.lease import Fence
from raysegment.output.root import MASKS_FOLDER, POLYGONS_FOLDER
from raysegment.output.schema import OUTPUT_SCHEMA
from raysegment.plugin.spec import ModelSpec
from raysegment.tasks.spec import TiledMerger, task_spec
from raysegment.tiling.merge import Strip
from raysegment.uri import join_inside, redact, safe_stem

__all__ = ["SceneMerger", "GeoOutputOptions"]

log = logging.getLogger("raysegment")

Batch = dict[str, np.ndarray]

#: Pixels reduced at once when a strip is turned into labels (columns x height, or slices x plane).
CHUNK_PIXELS = 1 << 20


class GeoOutputOptions:
    """Which per-scene files to write beside the Parquet output (2D scenes only)."""

    def __init__(self, root: str, mask_raster: bool = False, polygons: bool = False,
                 storage_options: dict[str, Any] | None = None, fence: Fence | None = None) -> None:
        self.root = root
        self.fence = fence  # each file is put in place only while the run holds the output
        self.mask_raster = mask_raster
        self.polygons = polygons
        self.storage_options = dict(storage_options or {})

    @property
    def any(self) -> bool:
        return self.mask_raster or self.polygons


class _Scene:
    """The state of one scene whose windows are still arriving."""

    def __init__(self, row: Batch, i: int, spec: ModelSpec, outputs: GeoOutputOptions | None) -> None:
        scene = json.loads(row["scene"][i])
        self.uri = str(row["uri"][i])
        self.index, self.shard = int(row["index"][i]), int(row["shard"][i])
        self.info = scene["info"]
        self.shape = tuple(self.info["shape"])
        self.tiling = Tiling.from_json(scene["tiling"])
        self.plan = scene_plan(self.shape, self.tiling)
        self.plugin = spec.plugin()
        self.spec = spec
        margin = self.tiling.margin[::-1] if len(self.shape) == 2 else self.tiling.margin
        merge = task_spec(self.plugin.task).require("tiled_merge", "tiled inference")
        self.merger: TiledMerger | None = merge(self.plan, self.plugin, self.tiling.blend, margin)
        self.segments = VolumeSegments(*self.shape) if len(self.shape) == 3 else PlaneSegments(*self.shape)
        self.seen = np.zeros(len(self.plan), dtype=bool)
        self.skipped = 0
        self.error: str | None = None
        self.files: dict[str, str] = {}
        self.writers: list[Any] = []
        if outputs is not None and outputs.any and len(self.shape) == 2:
            self._open_writers(outputs)

    def _open_writers(self, outputs: GeoOutputOptions) -> None:
        from raysegment.io.scenes.base import Georef
        from raysegment.output.geo import MaskRasterWriter, PolygonWriter

        georef = Georef.from_json(self.info["georef"]) if self.info.get("georef") else None
        stem = f"{self.index:08d}-{safe_stem(self.uri)}"
        if outputs.mask_raster:
            self.files["mask_raster"] = f"{MASKS_FOLDER}/{stem}.tif"
            self.writers.append(MaskRasterWriter(join_inside(outputs.root, self.files["mask_raster"]),
                                                 self.shape, georef, outputs.storage_options,
                                                 fence=outputs.fence))
        if outputs.polygons:
            self.files["polygons"] = f"{POLYGONS_FOLDER}/{stem}.parquet"
            self.writers.append(PolygonWriter(join_inside(outputs.root, self.files["polygons"]), georef,
                                              self.spec.label_names, outputs.storage_options,
                                              source_uri=redact(self.uri), skip_labels=(0,), fence=outputs.fence))

    @property
    def done(self) -> bool:
        return bool(self.seen.all())

    def fail(self, message: str) -> None:
        if self.error is None:
            self.error = message
            self.merger = None  # free the buffers; later windows are only counted
            for writer in self.writers:
                writer.abort()
            self.writers = []

    def arrive(self, window: int, status: str, error: str, payload: bytes, valid: bytes) -> None:
        if self.seen[window]:
            log.warning("window %d of %s arrived twice; the copy is ignored", window, redact(self.uri))
            return
        self.seen[window] = True
        if self.error is not None or self.merger is None:
            return
        w = self.plan.windows[window]
        try:
            if status == "skip":
                self.skipped += 1
                strips = self.merger.skip(w)
            elif status == "ok":
                logits = unpack(payload)["logits"]
                mask = unpack(valid)["valid"] if valid else None
                if len(self.shape) == 2:  # the plan runs on (W, H)
                    logits = logits.transpose(0, 2, 1)
                    mask = None if mask is None else mask.T
                strips = self.merger.aggregate(w, logits, mask)
            else:
                self.fail(f"window {window} ({self._where(w)}): {error or 'failed'}")
                return
            for strip in strips:
                self._emit(strip)
        except Exception as exc:
            from raysegment.errors import describe_error

            self.fail(f"merging window {window} failed: {describe_error(exc)}")

    def _where(self, w: Any) -> str:
        start = w.start[::-1] if len(self.shape) == 2 else w.start
        size = w.size[::-1] if len(self.shape) == 2 else w.size
        return "at " + ",".join(str(s) for s in start) + " size " + "x".join(str(s) for s in size)

    def _emit(self, strip: Strip) -> None:
        """Labels of a finished strip, a few columns (slices) at a time to keep ``reduce``'s
        temporaries small, handed to the segments and the files in order."""
        import torch

        step = max(1, CHUNK_PIXELS // max(1, int(np.prod(strip.values.shape[2:]))))
        for lo in range(0, strip.stop - strip.start, step):
            values = np.ascontiguousarray(strip.values[:, lo : lo + step])
            covered = strip.covered[lo : lo + step]
            reduced = self.plugin.reduce(torch.from_numpy(values[None]))
            labels = reduced["labels"][0].numpy()
            conf = reduced.get("confidence")
            conf = None if conf is None else conf[0].float().numpy()
            covered = None if covered.all() else covered
            if len(self.shape) == 3:
                self.segments.add(strip.start + lo, labels, conf, covered)
                continue
            self.segments.add(labels, conf, covered)
            for writer in self.writers:  # writers take scene orientation (rows, columns)
                writer.add(0, strip.start + lo, labels.T, None if covered is None else covered.T)

    def row(self) -> dict[str, Any]:
        """The scene's output row; closes (or aborts) its files."""
        segments = None
        if self.error is None:
            try:
                self.merger.finalize()  # type: ignore[union-attr]
                segments = self.segments.segments(self.spec.label_names)
                for writer in self.writers:
                    writer.close()
            except Exception as exc:
                from raysegment.errors import describe_error

                self.fail(f"finishing the scene failed: {describe_error(exc)}")
                segments = None
        ok = self.error is None
        info = self.info
        georef, volume = info.get("georef") or {}, info.get("volume") or {}
        meta = {**_scene_meta(info), "tiling": {**self.tiling.to_json(), "windows": len(self.plan),
                                                "windows_skipped": self.skipped},
                **({"files": self.files} if ok and self.files else {})}
        return {
            "uri": redact(self.uri), "index": self.index, "shard": self.shard,
            "status": "ok" if ok else "error", "error": self.error,
            "height": self.shape[-2] if ok else None, "width": self.shape[-1] if ok else None,
            "depth": self.shape[0] if ok and len(self.shape) == 3 else None,
            "model": self.spec.info(), "segments": segments, "meta": json.dumps(meta, sort_keys=True),
            "crs": georef.get("crs"), "transform": georef.get("transform"), "bounds": georef.get("bounds"),
            "nodata": georef.get("nodata"), "affine": volume.get("affine"), "spacing": volume.get("spacing"),
        }


def _scene_meta(info: dict[str, Any]) -> dict[str, Any]:
    shape = info["shape"]
    names = ("depth", "height", "width")[-len(shape):]
    return {**dict(zip(names, shape)), "bands": info["bands"], "dtype": info["dtype"], "format": info["format"]}


def _error_row(batch: Batch, i: int, spec: ModelSpec) -> dict[str, Any]:
    return {"uri": redact(str(batch["uri"][i])), "index": int(batch["index"][i]), "shard": int(batch["shard"][i]),
            "status": "error", "error": str(batch["error"][i]) or "unknown error", "model": spec.info()}


class SceneMerger:
    """Stateful fan-in UDF: window rows in, a row per finished scene out (often none per batch)."""

    def __init__(self, spec: ModelSpec, outputs: GeoOutputOptions | None = None, threads: int | None = 1) -> None:
        import torch

        if threads:
            torch.set_num_threads(int(threads))
        self.spec = spec
        self.outputs = outputs
        self.scenes: dict[int, _Scene] = {}

    def __call__(self, batch: Batch) -> pa.Table:
        rows: list[dict[str, Any]] = []
        for i in range(len(batch["uri"])):
            index, window = int(batch["index"][i]), int(batch["window"][i])
            if window < 0:  # the scene never opened
                rows.append(_error_row(batch, i, self.spec))
                continue
            scene = self.scenes.get(index)
            if scene is None:
                scene = self.scenes[index] = _Scene(batch, i, self.spec, self.outputs)
            valid = batch["valid"][i] if "valid" in batch else b""
            scene.arrive(window, str(batch["status"][i]), str(batch["error"][i] or ""), batch["payload"][i],
                         valid if isinstance(valid, bytes) else b"")
            if scene.done:
                rows.append(scene.row())
                del self.scenes[index]
        return pa.Table.from_pylist(rows, schema=OUTPUT_SCHEMA)
