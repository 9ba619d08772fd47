"""Fan-out of tiled inference: scenes -> window rows -> window pixels, as Ray Data UDFs.

1. :func:`plan_scene_windows` (CPU task): open each scene's header, plan its
   windows, emit one row per window (or one error row for a scene that cannot
   be opened or that the model cannot take);
2. :func:`read_windows` (CPU task): read each window by range, drop all-nodata
   windows (``status == "skip"``), run the plugin's ``preprocess``.

The windows then go through the same :class:`~raysegment.infer.stages.Predictor` as
whole images, and :class:`~raysegment.infer.scene_merger.SceneMerger` fans them in.

2D scenes are planned transposed, on (width, height): the plan's raster order
then walks columns, :class:`~raysegment.tiling.merge.StripMerger` finishes bands of
columns, and each band's masks extend the scene's column-major COCO RLE.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from raysegment.errors import describe_error
from raysegment.io.decoders import DecodeLimits
from raysegment.io.payload import pack
from raysegment.io.scenes.base import SceneInfo, SceneReader, open_scene
from raysegment.plugin.contract import Modality, Sample, SegmentationModel
from raysegment.plugin.spec import ModelSpec
from raysegment.tiling.plan import BLEND_MODES, TilePlan, Window, validate_tiling

__all__ = ["Tiling", "plan_scene_windows", "read_windows", "scene_plan", "scene_window", "scene_json", "WINDOW_COLUMNS"]

Batch = dict[str, np.ndarray]

#: Columns of a window row, besides the payload.
WINDOW_COLUMNS = ("uri", "index", "shard", "status", "error", "window", "windows", "start", "size", "scene")


@dataclasses.dataclass(frozen=True)
class Tiling:
    """How scenes are cut: ``tile`` and ``overlap`` per spatial axis of the scene, blend profile."""

    tile: tuple[int, ...]
    overlap: tuple[int, ...]
    blend: str = "gaussian"
    align: tuple[int, ...] = ()  # window starts are multiples of the model's size divisor
    margin: tuple[int, ...] = ()  # predictions this close to an inner window border are dropped

    def __post_init__(self) -> None:
        if not self.align:
            object.__setattr__(self, "align", (1,) * len(self.tile))
        if not self.margin:
            object.__setattr__(self, "margin", tuple(o // 4 for o in self.overlap))

    def to_json(self) -> dict[str, Any]:
        """Plain JSON (tuples as lists): what the run manifest, the window rows and ``meta`` store."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Tiling:
        """The inverse of :meth:`to_json`: ``Tiling.from_json(t.to_json()) == t``."""
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})

    @classmethod
    def resolve(
        cls, plugin: SegmentationModel, tile: Sequence[int] | int | None, overlap: Sequence[int] | int | None,
        blend: str = "gaussian",
    ) -> Tiling | None:
        """CLI values over the plugin's defaults; None when the run is untiled.

        Volume models always tile. An overlap left out is the plugin's, else a
        quarter of the tile. Bad values raise one-line ``ValueError``s.
        """
        ndim = 3 if plugin.modality is Modality.VOLUME else 2
        if tile is None:
            tile = plugin.default_tile
        if tile is None:
            if ndim == 3:
                raise ValueError(f"volume model {type(plugin).__name__} declares no default_tile; pass --tile")
            return None
        tiles = _per_axis(tile, ndim, "--tile")
        if overlap is None:
            overlap = plugin.default_overlap if plugin.default_overlap is not None else tuple(t // 4 for t in tiles)
        overlaps = _per_axis(overlap, ndim, "--overlap")
        validate_tiling(tiles, overlaps)
        if blend not in BLEND_MODES:
            raise ValueError(f"--blend must be one of {', '.join(BLEND_MODES)}, got {blend!r}")
        divisor = int(plugin.size_divisor)
        bad = [t for t in tiles if t % divisor]
        if bad:
            raise ValueError(f"--tile {bad[0]} must be a multiple of the model's size divisor {divisor}")
        return cls(tiles, overlaps, blend, (divisor,) * ndim)


def _per_axis(value: Sequence[int] | int, ndim: int, name: str) -> tuple[int, ...]:
    if isinstance(value, int):
        return (value,) * ndim
    values = tuple(int(v) for v in value)
    if len(values) == 1:
        return values * ndim
    if len(values) != ndim:
        raise ValueError(f"{name} has {len(values)} values but the model's inputs have {ndim} spatial axes")
    return values


def scene_plan(shape: Sequence[int], tiling: Tiling) -> TilePlan:
    """The plan of a scene; 2D scenes are planned on (width, height) so strips are column bands."""
    shape = tuple(int(n) for n in shape)
    if len(shape) == 2:
        return TilePlan.for_shape(shape[::-1], tiling.tile[::-1], tiling.overlap[::-1], tiling.align[::-1])
    return TilePlan.for_shape(shape, tiling.tile, tiling.overlap, tiling.align)


def scene_window(window: Window, ndim: int) -> Window:
    """A plan window in scene axes ((H, W) for 2D, where the plan runs on (W, H))."""
    if ndim == 2:
        return Window(window.index, window.start[::-1], window.size[::-1])
    return window


def scene_json(info: SceneInfo, tiling: Tiling) -> str:
    return json.dumps({"info": dataclasses.asdict(info), "tiling": tiling.to_json()}, sort_keys=True)


def plan_scene_windows(
    batch: Batch, *, spec: ModelSpec, tiling: Tiling, limits: DecodeLimits, storage_options: dict[str, Any] | None = None
) -> Batch:
    """Scenes in, one row per window out (an unreadable scene: one row with ``window == -1``)."""
    plugin = spec.plugin()
    rows: dict[str, list[Any]] = {name: [] for name in WINDOW_COLUMNS}

    def emit(i: int, status: str, error: str, window: int, windows: int, start: Any, size: Any, scene: str) -> None:
        for name, value in (("uri", batch["uri"][i]), ("index", batch["index"][i]), ("shard", batch["shard"][i]),
                            ("status", status), ("error", error), ("window", window), ("windows", windows),
                            ("start", json.dumps(start)), ("size", json.dumps(size)), ("scene", scene)):
            rows[name].append(value)

    for i, uri in enumerate(batch["uri"]):
        try:
            with open_scene(str(uri), storage_options, plugin.modality, limits) as reader:
                info = reader.info
            spec.check_takes(len(info.shape), info.bands, info.dtype, f"{info.format} input")
            plan = scene_plan(info.shape, tiling)
            text = scene_json(info, tiling)
        except Exception as exc:
            emit(i, "error", describe_error(exc), -1, 0, [], [], "")
            continue
        for window in plan.windows:
            w = scene_window(window, plan.ndim)
            emit(i, "ok", "", window.index, len(plan), w.start, w.size, text)
    out: Batch = {name: np.array(values, dtype=object) for name, values in rows.items()}
    for name, dtype in (("index", np.int64), ("shard", np.int32), ("window", np.int32), ("windows", np.int32)):
        out[name] = np.array(rows[name], dtype=dtype)
    return out


def read_windows(
    batch: Batch, *, spec: ModelSpec, limits: DecodeLimits, storage_options: dict[str, Any] | None = None
) -> Batch:
    """Read and preprocess each window; an all-nodata window becomes ``status == "skip"``."""
    plugin = spec.plugin()
    n = len(batch["uri"])
    status, error = batch["status"].copy(), batch["error"].copy()
    payload = np.empty(n, dtype=object)
    valid_col = np.empty(n, dtype=object)
    readers: dict[str, SceneReader] = {}
    try:
        for i in range(n):
            payload[i], valid_col[i] = b"", b""
            if status[i] != "ok":
                continue
            uri = str(batch["uri"][i])
            try:
                if uri not in readers:
                    readers[uri] = open_scene(uri, storage_options, plugin.modality, limits)
                reader = readers[uri]
                window = Window(int(batch["window"][i]), tuple(json.loads(batch["start"][i])),
                                tuple(json.loads(batch["size"][i])))
                data = reader.read(window)
                valid = reader.valid_mask(window, data)
                if valid is not None and not valid.any():
                    status[i] = "skip"
                    continue
                meta = dict(zip(("depth", "height", "width")[-len(window.size):], window.size))
                payload[i] = pack({"image": spec.preprocess(Sample(data, uri, meta))})
                if valid is not None and not valid.all():
                    valid_col[i] = pack({"valid": valid})
            except Exception as exc:
                status[i], error[i] = "error", describe_error(exc)
    finally:
        for reader in readers.values():
            reader.close()
    return {**batch, "status": status, "error": error, "payload": payload, "valid": valid_col}
